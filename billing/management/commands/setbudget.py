from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.models import Period
from billing.services import budget_set
from infra.errors import NebulaError
from keys.access import SYSTEM
from keys.models import ApiKey, Team


class Command(BaseCommand):
    help = "Set the budget of a key, a user or a team."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--key", type=int, help="The key's id.")
        target.add_argument("--user", help="The user's name (every key they own).")
        target.add_argument("--team", type=int, help="The team's id (every key of the team).")
        parser.add_argument("amount", help="At most this much per period, e.g. 100.00.")
        parser.add_argument("--period", choices=Period.values, default=Period.MONTH)

    def handle(self, *args: Any, **options: Any) -> None:
        target: Any
        if options["key"] is not None:
            scope, target = "key", ApiKey.objects.filter(pk=options["key"]).first()
        elif options["team"] is not None:
            scope, target = "team", Team.objects.filter(pk=options["team"]).first()
        else:
            scope = "user"
            target = get_user_model().objects.filter(username=options["user"]).first()
        if target is None:
            raise CommandError(f"No such {scope}.")
        try:
            budget = budget_set(
                actor=SYSTEM,
                scope=scope,
                target=target,
                amount=options["amount"],
                period=options["period"],
            )
        except NebulaError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"Budget set: {budget}.")
