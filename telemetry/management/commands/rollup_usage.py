"""`manage.py rollup_usage`: what the beat task does, now (cron without beat, tests, operators)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from telemetry.retention import usage_rollup


class Command(BaseCommand):
    help = (
        "Roll usage records older than NEBULA_USAGE_RETENTION_DAYS up into daily aggregates "
        "and delete them."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = usage_rollup()
        if result.cutoff is None:
            self.stdout.write("Retention is off (NEBULA_USAGE_RETENTION_DAYS=0): nothing to do.")
            return
        self.stdout.write(
            f"Rolled up {result.records} usage records and {result.tallies} refusal tallies "
            f"from before {result.cutoff:%Y-%m-%d}."
        )
