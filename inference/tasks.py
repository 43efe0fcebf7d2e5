"""The inference task, and the hooks that run a worker's background threads."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from inference.jobs import TASK_NAME, JobPayload
from inference.runner import completion_execute
from inference.workers import current_worker, start_worker_runtime
from infra.heap import freeze_startup_heap


# acks_late + reject_on_worker_lost: a job is taken off the queue only once it ran. The
# claim in Redis (inference.jobs) makes a second delivery of the same job a no-op.
@shared_task(name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_completion(job: JobPayload) -> None:
    completion_execute(job, current_worker())


@worker_ready.connect
def _start_runtime(**_: Any) -> None:
    start_worker_runtime()
    freeze_startup_heap()


@worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    current_worker().stop()
