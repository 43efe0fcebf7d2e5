"""`/ws/fleet/`: the models page's deployments, pushed on every state change."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from dashboard.consumers import SnapshotConsumer
from infra.events import FLEET_GROUP
from models_registry.services import fleet_snapshot


class FleetConsumer(SnapshotConsumer):
    follow = (FLEET_GROUP,)

    async def push(self) -> None:
        # The event names one deployment, but what this user may see of the fleet is decided
        # here, from the database, so nobody is sent a deployment that is not theirs to see.
        models = await database_sync_to_async(fleet_snapshot)(self.actor)
        await self.send_json({"type": "fleet", "models": models})

    async def fleet_model(self, event: dict[str, Any]) -> None:
        self.refresh()
