from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from billing.services import price_set
from infra.errors import NebulaError
from keys.access import SYSTEM


class Command(BaseCommand):
    help = "Set a model's price per million prompt and completion tokens, from now (or --from) on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="The model's name.")
        parser.add_argument("prompt", help="Price per million prompt tokens, e.g. 0.15.")
        parser.add_argument("completion", help="Price per million completion tokens, e.g. 0.60.")
        parser.add_argument("--from", dest="start", help="ISO 8601 time it applies from.")

    def handle(self, *args: Any, **options: Any) -> None:
        start = parse_datetime(options["start"]) if options["start"] else None
        if options["start"] and start is None:
            raise CommandError("--from must be an ISO 8601 time, e.g. 2026-01-01T00:00:00Z.")
        try:
            price = price_set(
                actor=SYSTEM,
                model=options["model"],
                prompt_per_million=options["prompt"],
                completion_per_million=options["completion"],
                effective_from=start,
            )
        except NebulaError as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            f"{price.model_name}: {price.prompt_per_million.normalize():f} per million prompt "
            f"tokens, {price.completion_per_million.normalize():f} per million completion tokens, "
            f"from {price.effective_from.isoformat()}."
        )
