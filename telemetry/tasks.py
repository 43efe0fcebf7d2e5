"""Celery tasks of telemetry: the usage rollup, sent by Celery beat (the Procfile's `beat`)."""

from __future__ import annotations

from celery import shared_task

from telemetry import retention


# No retries: the next beat tick does the same work, and a rollup left half done is consistent
# (each batch is its own transaction).
@shared_task(name=retention.ROLLUP_TASK, ignore_result=True)
def usage_rollup() -> None:
    retention.usage_rollup()
