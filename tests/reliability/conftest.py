"""A private Nebula for fault tests: its own Redis server, two daphne web processes and two
Celery workers, which tests may kill, hang and restart without touching the shared session
stack or the shared Redis other tests (and other people) use.

Fault detection is tuned short (workers silent for 1.5 s are dead, Redis silent for 1 s is
down) so the tests stay quick.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import live_env
from tests.support.faults import RedisServer, wait_until
from tests.support.run import Run, run_env, running, start_run
from tests.support.stack import Proc, Stack

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise

FAULT_ENV = {
    "NEBULA_WORKER_TTL": "1.5",
    "NEBULA_HEARTBEAT_INTERVAL": "0.3",
    "NEBULA_QUEUE_TIMEOUT": "12",
    "NEBULA_REDIS_TIMEOUT": "1",
}
WORKERS = 2
WEBS = 2
# A 20B model on two L4s decodes a token in ~95 ms; at the stack's 0.1 time scale, ~10 ms.
SLOW = {"params_billions": 20, "gpu_type": "L4", "gpus_per_replica": 2}


@dataclass
class FaultStack:
    stack: Stack
    redis: RedisServer

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def urls(self) -> list[str]:
        return self.stack.urls

    @property
    def workers(self) -> list[Proc]:
        return self.stack.workers

    def pids(self) -> set[int]:
        return {proc.popen.pid for proc in [*self.stack.webs, *self.stack.workers]}

    def live_workers(self) -> int:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            health = httpx.get(self.url + "/health", timeout=5).json()
            return int(health["checks"]["workers"].get("live", 0))
        return 0

    def start_worker(self) -> Proc:
        return self.stack.start_worker(concurrency=16)

    def worker_by_pid(self, pid: int) -> Proc:
        return next(proc for proc in self.stack.workers if proc.popen.pid == pid)

    def revive(self) -> None:
        """Back to full strength after a test broke things: Redis up, every process running."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        else:
            self.redis.resume()
        for index, proc in enumerate(list(self.stack.webs)):
            if not proc.alive():
                port = self.stack.ports[index]
                self.stack.webs.remove(proc)
                self.stack.ports.remove(port)
                self.stack.start_web(port)
        self.stack.workers[:] = [proc for proc in self.stack.workers if proc.alive()]
        while len(self.stack.workers) < WORKERS:
            self.start_worker()
        wait_until(lambda: self.live_workers() == WORKERS, timeout=30)


@contextlib.contextmanager
def running_fault_stack(redis_server: RedisServer, django_db_blocker: Any) -> Iterator[FaultStack]:
    """Start `redis_server` and a stack on it; stop both afterwards."""
    redis_server.start()
    with django_db_blocker.unblock():
        env = live_env({"NEBULA_TEST_REDIS_URL": redis_server.url, **FAULT_ENV})
    stack = Stack(env=env)
    try:
        for _ in range(WORKERS):
            stack.start_worker(concurrency=16)
        for _ in range(WEBS):
            stack.start_web()
        stack.wait_workers(WORKERS)
        yield FaultStack(stack=stack, redis=redis_server)
    finally:
        stack.stop()
        redis_server.stop()


@pytest.fixture(scope="module")
def fault_stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[FaultStack]:
    """The private stack, on a Redis without persistence (a crash loses all it held)."""
    with running_fault_stack(RedisServer(), django_db_blocker) as stack:
        yield stack


@contextlib.contextmanager
def pointed_at(redis_server: RedisServer, revive: Callable[[], None]) -> Iterator[None]:
    """This test process pointed at a private stack's Redis (keys and models created in the
    test reach its web processes; ledger_flush reads its usage stream). Afterwards the stack is
    revived, the test's records are moved into the database and nothing of its jobs, limits or
    records survives into the next test."""
    from django.conf import settings

    from infra import redis_client
    from infra.epoch import epoch_bump, observe_epoch
    from telemetry.ledger import ledger_flush

    shared_url = settings.REDIS_URL
    settings.REDIS_URL = redis_server.url
    redis_client.reset_clients()
    observe_epoch(f"test-{uuid.uuid4().hex}")
    try:
        yield
        revive()
        ledger_flush()
        epoch_bump()
    finally:
        with contextlib.suppress(Exception):
            redis_server.client().flushall()
        settings.REDIS_URL = shared_url
        redis_client.reset_clients()


@pytest.fixture
def faults(fault_stack: FaultStack, transactional_db: Any) -> Iterator[FaultStack]:
    """The private stack, with this test process pointed at its Redis."""
    fault_stack.revive()
    with pointed_at(fault_stack.redis, fault_stack.revive):
        yield fault_stack


@dataclass
class Supervised:
    """The default layout (bin/run: supervisord running the Procfile's web process and worker)
    on the test database and a private Redis."""

    run: Run
    redis: RedisServer

    def live_workers(self) -> int:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            return int(self.run.health()["checks"]["workers"].get("live", 0))
        return 0

    def revive(self) -> None:
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        wait_until(lambda: self.live_workers() == 1, timeout=30)


@contextlib.contextmanager
def running_supervised(
    redis_server: RedisServer, django_db_blocker: Any, workdir: Path, settings: dict[str, str]
) -> Iterator[Supervised]:
    """Start `redis_server` and bin/run on it with `settings` over the live stack's (so the
    test process moves usage records into the database itself); stop both afterwards."""
    redis_server.start()
    with django_db_blocker.unblock():
        base = live_env({"NEBULA_TEST_REDIS_URL": redis_server.url, **settings})
    try:
        with running(start_run(workdir, run_env(workdir, base))) as run:
            run.wait_healthy(workers=1)
            yield Supervised(run=run, redis=redis_server)
            run.stop()
    finally:
        redis_server.stop()


@contextlib.contextmanager
def supervised_test(stack: Supervised) -> Iterator[None]:
    """One test on a supervised stack, as `faults` is for the fault stack."""
    stack.revive()
    with pointed_at(stack.redis, stack.revive):
        yield
