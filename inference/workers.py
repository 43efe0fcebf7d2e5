"""The worker runtime: identity, heartbeat, slot lease renewal, and the background threads a
worker process runs next to Celery's (usage ledger, deployment reconciler).

The heartbeat goes to the registry in `inference.heartbeats`, which web processes, /health and
the dashboard read without importing any of this.
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
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from inference.batching import EngineLoop
from inference.heartbeats import WorkerInfo, heartbeat_send, heartbeat_withdraw
from inference.slots import slots_renew
from infra.redis_client import REDIS_ERRORS, get_redis
from models_registry.services import model_reconcile
from models_registry.upstreams import PROBE_LOCK_KEY, upstream_probe_round
from telemetry.ledger import LedgerConsumer

logger = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, concurrency: int) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.started_at = time.time()
        self._lock = threading.Lock()
        # run (JobRun.owner) → (model, request id, sequences). By run, not by request: a
        # request given up for dead and resent may run here again while its first run has yet
        # to stand down, and the first run ending must not drop the second one's lease renewal.
        self._running: dict[str, tuple[str, str, int]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ledger: Any = None
        # Every job of this process generates in one loop (inference.batching).
        self.engine = EngineLoop(get_redis)

    # --- jobs -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def holding_slot(
        self, model: str, request_id: str, run: str, *, sequences: int = 1
    ) -> Iterator[None]:
        """Register held slots, so the heartbeat keeps their leases alive while the job runs."""
        with self._lock:
            self._running[run] = (model, request_id, sequences)
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
        heartbeat_send(client, self.info())
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

    def _probe_loop(self) -> None:
        interval = settings.NEBULA_UPSTREAM_PROBE_INTERVAL
        while not self._stop.wait(interval):
            try:
                # One prober at a time fleet-wide; the lock lapses just before the next round.
                if get_redis().set(PROBE_LOCK_KEY, self.id, nx=True, px=int(interval * 900)):
                    close_old_connections()
                    upstream_probe_round()
            except REDIS_ERRORS:
                pass
            except Exception:
                logger.exception("upstream prober failed")

    def start(self, *, ledger: bool = True, reconcile: bool = True, probe: bool = True) -> None:
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
        if probe:
            loops.append(("upstream-prober", self._probe_loop))
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
            heartbeat_withdraw(get_redis(), self.id)
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
            ledger=settings.NEBULA_WORKER_LEDGER,
            reconcile=settings.NEBULA_WORKER_RECONCILER,
            probe=settings.NEBULA_WORKER_PROBER,
        )
    return runtime
