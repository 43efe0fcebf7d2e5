"""Deployment lifecycle tasks. They take ids, re-read the row, and do nothing if it moved on."""

from __future__ import annotations

from celery import shared_task

from models_registry import services


@shared_task(name="models_registry.load_model", ignore_result=True)
def load_model(model_id: int) -> None:
    services.model_load(model_id=model_id)


@shared_task(name="models_registry.stop_model", ignore_result=True)
def stop_model(model_id: int) -> None:
    services.model_stop(model_id=model_id)
