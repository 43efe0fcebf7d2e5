"""`/ws/overview/`: the overview page's numbers, pushed as they change."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from dashboard.consumers import SnapshotConsumer
from infra.events import FLEET_GROUP, OVERVIEW_GROUP
from telemetry.services import overview_report


class OverviewConsumer(SnapshotConsumer):
    follow = (OVERVIEW_GROUP, FLEET_GROUP)
    # New usage arrives in batches; a second between recomputations is live enough and keeps
    # a busy ledger from turning every open overview into a query loop.
    min_gap = 1.0
    # Workers' busy slots and health change without an event.
    interval = 5.0

    async def push(self) -> None:
        report = await database_sync_to_async(overview_report)(actor=self.actor)
        await self.send_json({"type": "overview", "report": report})

    async def overview_changed(self, event: dict[str, Any]) -> None:
        self.refresh()

    async def fleet_model(self, event: dict[str, Any]) -> None:
        self.refresh()
