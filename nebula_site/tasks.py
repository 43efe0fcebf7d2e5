"""Sending background work: to a Celery worker, or to a local thread in standalone mode."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Task
from django.conf import settings
from django.db import transaction

from nebula_site.redis_client import REDIS_ERRORS

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


def send_task(task: Task[Any, Any], *args: Any) -> None:
    if settings.NEBULA_STANDALONE:
        local_executor().submit(task.apply, args=args)
        return
    try:
        task.apply_async(args=args)
    except REDIS_ERRORS:
        # The reconciler in every worker picks up work that was committed but never sent.
        logger.warning(
            "could not reach the broker to send %s%r; it will be retried", task.name, args
        )


def enqueue_on_commit(task: Task[Any, Any], *args: Any) -> None:
    """Send `task(*args)` once the current transaction commits (never for a rolled-back row)."""
    transaction.on_commit(lambda: send_task(task, *args))
