"""The worker runtime: identity, heartbeat, slot lease renewal, and the background threads a
worker process runs next to Celery's (usage ledger, deployment reconciler).

Heartbeats go to `nebula:workers` (a sorted set scored by Redis' clock) plus a small JSON record
per worker; /health, the dashboard and web processes (to tell a dead worker from a slow one)
read them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import orjson
from django.conf import settings
from django.db import close_old_connections

from inference.slots import slots_renew
from nebula_site.lua import NOW_MS, LuaScript
from nebula_site.redis_client import REDIS_ERRORS, get_redis

logger = logging.getLogger(__name__)

WORKERS_KEY = "nebula:workers"


def worker_info_key(worker_id: str) -> str:
    return f"nebula:worker:{worker_id}"


class WorkerInfo(TypedDict):
    id: str
    host: str
    pid: int
    concurrency: int
    busy: int
    started_at: float
    version: str


# KEYS: workers zset, info key. ARGV: worker id, info json, info ttl seconds, forget-after ms.
_BEAT = LuaScript(
    NOW_MS
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
return now
"""
)

_LIVE = LuaScript(
    NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
)


class WorkerRuntime:
    def __init__(self, concurrency: int) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.started_at = time.time()
        self._lock = threading.Lock()
        # run (JobRun.owner) → (model, request id). By run, not by request: a request given up
        # for dead and resent may run here again while its first run has yet to stand down, and
        # the first run ending must not drop the second one's lease renewal.
        self._running: dict[str, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ledger: Any = None

    # --- jobs -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def holding_slot(self, model: str, request_id: str, run: str) -> Iterator[None]:
        """Register a held slot, so the heartbeat keeps its lease alive while the job runs."""
        with self._lock:
            self._running[run] = (model, request_id)
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(run, None)

    @property
    def busy(self) -> int:
        return len(self._running)

    # --- heartbeat --------------------------------------------------------------------------
    def info(self) -> WorkerInfo:
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "busy": self.busy,
            "started_at": self.started_at,
            "version": settings.NEBULA_VERSION,
        }

    def beat(self) -> None:
        client = get_redis()
        ttl = settings.NEBULA_WORKER_TTL
        _BEAT(
            client,
            [WORKERS_KEY, worker_info_key(self.id)],
            [self.id, orjson.dumps(self.info()), max(int(ttl * 3), 3), 3_600_000],
        )
        with self._lock:
            held = sorted(set(self._running.values()))
        slots_renew(client, held)

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except REDIS_ERRORS:
                logger.warning("heartbeat could not reach Redis")
            except Exception:
                logger.exception("heartbeat failed")
            self._stop.wait(settings.NEBULA_HEARTBEAT_INTERVAL)

    def _reconcile_loop(self) -> None:
        from models_registry.services import model_reconcile

        while not self._stop.wait(10.0):
            try:
                # One worker at a time does it; the others skip this round.
                if get_redis().set("nebula:reconcile-lock", self.id, nx=True, ex=9):
                    close_old_connections()
                    model_reconcile()
            except REDIS_ERRORS:
                pass
            except Exception:
                logger.exception("deployment reconciler failed")

    def start(self, *, ledger: bool = True, reconcile: bool = True) -> None:
        from telemetry.ledger import LedgerConsumer

        try:
            self.beat()
        except REDIS_ERRORS:
            logger.warning("first heartbeat could not reach Redis; will keep trying")
        loops: list[tuple[str, Any]] = [("heartbeat", self._heartbeat_loop)]
        if ledger:
            self._ledger = LedgerConsumer(self.id)
            loops.append(("usage-ledger", self._ledger.run))
        if reconcile:
            loops.append(("reconciler", self._reconcile_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"nebula-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("worker %s started (%d threads)", self.id, self.concurrency)

    def stop(self) -> None:
        self._stop.set()
        if self._ledger is not None:
            self._ledger.stop.set()
        with contextlib.suppress(*REDIS_ERRORS):
            client = get_redis()
            client.zrem(WORKERS_KEY, self.id)
            client.delete(worker_info_key(self.id))
        for thread in self._threads:
            thread.join(timeout=3)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def current_worker() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = WorkerRuntime(settings.NEBULA_WORKER_CONCURRENCY)
    return _runtime


def start_worker_runtime() -> WorkerRuntime:
    runtime = current_worker()
    if not runtime._threads:
        runtime.start(
            ledger=settings.NEBULA_WORKER_LEDGER, reconcile=settings.NEBULA_WORKER_RECONCILER
        )
    return runtime


def live_workers() -> list[WorkerInfo]:
    """Workers that reported within NEBULA_WORKER_TTL, with what they last said."""
    client = get_redis()
    ids = _LIVE(client, [WORKERS_KEY], [int(settings.NEBULA_WORKER_TTL * 1000)])
    if not ids:
        return []
    raw = client.mget([worker_info_key(wid.decode()) for wid in ids])
    workers: list[WorkerInfo] = []
    for wid, blob in zip(ids, raw, strict=True):
        if blob:
            workers.append(orjson.loads(blob))
        else:
            workers.append(
                {
                    "id": wid.decode(),
                    "host": "?",
                    "pid": 0,
                    "concurrency": 0,
                    "busy": 0,
                    "started_at": 0.0,
                    "version": "?",
                }
            )
    return workers


class LocalQueueConsumer:
    """Standalone mode's stand-in for Celery workers: takes jobs off the in-process queue that
    the admission script pushed them to, and runs them on local threads."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="nebula-local-queue", daemon=True).start()

    def _run(self) -> None:
        import base64

        from inference.jobs import QUEUE
        from inference.runner import completion_execute
        from nebula_site.tasks import local_executor

        client = get_redis()
        runtime = current_worker()
        while not self._stop.is_set():
            item = client.brpop([QUEUE], timeout=1)
            if not item:
                continue
            envelope = orjson.loads(item[1])
            _args, kwargs, _embed = orjson.loads(base64.b64decode(envelope["body"]))
            local_executor().submit(completion_execute, kwargs["job"], runtime)
