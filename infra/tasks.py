"""Sending background work: to a Celery worker, or to a local thread in standalone mode."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction

from infra.redis_client import REDIS_ERRORS

logger = logging.getLogger(__name__)

_local_executor: ThreadPoolExecutor | None = None


def local_executor() -> ThreadPoolExecutor:
    """The standalone layout's "worker": threads in the web process."""
    global _local_executor
    if _local_executor is None:
        _local_executor = ThreadPoolExecutor(
            max_workers=settings.NEBULA_WORKER_CONCURRENCY, thread_name_prefix="nebula-task"
        )
    return _local_executor


def send_task(name: str, *args: Any) -> None:
    """Send the task registered as `name`. By name, so that a service need not import the
    module of the task that calls it back (a task calls its app's services)."""
    if name not in current_app.tasks:
        # Outside a worker nothing has imported the apps' task modules yet (Celery's
        # autodiscovery runs when a worker starts): do it once.
        current_app.loader.import_default_modules()
    task = current_app.tasks[name]
    if settings.NEBULA_STANDALONE:
        local_executor().submit(task.apply, args=args)
        return
    try:
        task.apply_async(args=args)
    except REDIS_ERRORS:
        # The reconciler in every worker picks up work that was committed but never sent.
        logger.warning("could not reach the broker to send %s%r; it will be retried", name, args)


def enqueue_on_commit(name: str, *args: Any) -> None:
    """Send task `name(*args)` once the current transaction commits (never for a rolled-back
    row)."""
    transaction.on_commit(lambda: send_task(name, *args))
