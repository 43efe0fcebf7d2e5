"""Live events for the dashboard, sent over the channel layer to groups of websocket consumers.

Payloads are TypedDicts defined here, next to the one helper that sends them, so the sender (a
service in a web process or a worker) and the receiver (a consumer) agree on the shape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

FLEET_GROUP = "fleet"
OVERVIEW_GROUP = "overview"


class ModelEventPayload(TypedDict):
    type: Literal["fleet.model"]
    model: dict[str, Any]


class OverviewEventPayload(TypedDict):
    type: Literal["overview.changed"]


Event = ModelEventPayload | OverviewEventPayload

# In standalone mode the in-memory channel layer lives on the web process's event loop; threads
# (our in-process "workers") must hand their sends to that loop.
_main_loop: asyncio.AbstractEventLoop | None = None


def remember_main_loop() -> None:
    global _main_loop
    _main_loop = asyncio.get_running_loop()


def broadcast(group: str, event: Event) -> None:
    """Send `event` to every consumer in `group`. Best effort: a dashboard may miss an update."""
    layer = get_channel_layer()
    if layer is None:
        return

    async def send() -> None:
        # Best effort, and never long: a hung Redis must not hold up the caller (the usage
        # ledger, a deployment) for more than the Redis timeout.
        await asyncio.wait_for(
            layer.group_send(group, dict(event)), timeout=settings.NEBULA_REDIS_TIMEOUT
        )

    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    try:
        if settings.NEBULA_STANDALONE and _main_loop is not None and _main_loop.is_running():
            if running is _main_loop:
                _main_loop.create_task(send())
            else:
                asyncio.run_coroutine_threadsafe(send(), _main_loop)
        elif running is None:
            async_to_sync(send)()  # the usual caller: a worker thread or a sync view's thread
        else:
            # Sync code running on an event loop's thread (Playwright's sync API keeps one on
            # the browser tests' main thread): async_to_sync refuses to run there, so a
            # short-lived thread of its own sends instead.
            threading.Thread(target=async_to_sync(send), name="nebula-broadcast").start()
    except Exception:
        logger.warning("could not broadcast %s to %s", event["type"], group, exc_info=True)


def broadcast_on_commit(group: str, event: Event) -> None:
    transaction.on_commit(lambda: broadcast(group, event))
