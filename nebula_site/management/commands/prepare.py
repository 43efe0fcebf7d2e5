from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Get a checkout ready to serve: migrate, collect static files, seed the demo data."

    def handle(self, *args: Any, **options: Any) -> None:
        # One process instead of three: Django's start-up is most of each command's time.
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("seed_demo", stdout=self.stdout)
