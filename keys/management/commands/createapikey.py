from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from infra.errors import NebulaError
from keys.access import SYSTEM
from keys.services import key_create


class Command(BaseCommand):
    help = "Create an API key and print its secret as the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username of the key's owner.")
        parser.add_argument("--name", required=True, help="A name for the key.")
        parser.add_argument("--rpm", type=int, help="Requests per minute (default: the default).")
        parser.add_argument("--tpm", type=int, help="Tokens per minute (default: no limit).")
        parser.add_argument(
            "--model", action="append", default=[], help="Allowed model (repeatable)."
        )
        parser.add_argument("--team", type=int, help="Id of the team that owns the key.")
        parser.add_argument("--admin", action="store_true", help="Create an admin key.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            # Whoever runs manage.py runs the service: the command acts as the system.
            created = key_create(
                actor=SYSTEM,
                owner=options["user"],
                team=options["team"],
                name=options["name"],
                rpm_limit=options["rpm"],
                tpm_limit=options["tpm"],
                allowed_models=options["model"],
                is_admin=options["admin"],
            )
        except NebulaError as error:
            raise CommandError(error.message) from None
        key = created.key
        self.stdout.write(
            f"Created key '{key.name}' (id {key.pk}, prefix {key.prefix}) for {key.owner}"
            f" with {key.rpm_limit} requests/minute. The secret is shown only now:"
        )
        self.stdout.write(created.secret)
