"""Deployment lifecycle tasks. They take ids, re-read the row, and do nothing if it moved on."""

from __future__ import annotations

from celery import shared_task

from models_registry import services


@shared_task(name=services.LOAD_MODEL_TASK, ignore_result=True)
def load_model(model_id: int) -> None:
    services.model_load(model_id=model_id)


@shared_task(name=services.STOP_MODEL_TASK, ignore_result=True)
def stop_model(model_id: int) -> None:
    services.model_stop(model_id=model_id)


@shared_task(name=services.SCALE_MODEL_TASK, ignore_result=True)
def scale_model(model_id: int, started: str) -> None:
    services.model_scale_load(model_id=model_id, started=started)
