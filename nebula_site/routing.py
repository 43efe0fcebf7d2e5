"""Websocket routes of the dashboard (wired in asgi.py behind session authentication)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from inference.consumers import PlaygroundConsumer
from models_registry.consumers import FleetConsumer
from telemetry.consumers import OverviewConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/overview/", OverviewConsumer.as_asgi()),
    path("ws/fleet/", FleetConsumer.as_asgi()),
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
]
