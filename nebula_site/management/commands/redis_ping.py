from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Exit 0 if Redis answers at REDIS_URL, 1 if not (used by bin/run to pick a layout)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()
        except (redis.exceptions.RedisError, OSError) as error:
            raise CommandError(f"Redis does not answer at {settings.REDIS_URL}: {error}") from None
