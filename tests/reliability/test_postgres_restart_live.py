"""PostgreSQL restarts under a private stack (its own cluster, Redis, web process and worker).

While the database is down, /health says so, the management API answers 503 in JSON, and the
/v1 hot path keeps serving keys it already knows (their usage waits in Redis). Once it is back,
connections recover by themselves (CONN_HEALTH_CHECKS) and every accepted request has its usage
record: nothing is lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.conftest import LIVE_TIME_SCALE
from tests.support.clients import ChatCall
from tests.support.faults import PostgresCluster, RedisServer, wait_until
from tests.support.stack import ROOT, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _postgres_binaries() -> None:
    # A machine without them must fail this test, not quietly leave the restart unproven.
    if not PostgresCluster.available():
        pytest.fail("PostgreSQL 15's initdb/pg_ctl are needed (Debian: postgresql-15)")


CHAT = {"model": "nebula-7b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
SEED = """
from django.contrib.auth import get_user_model
from keys.access import SYSTEM
from keys.services import key_create
from models_registry.services import model_seed_ready
users = get_user_model().objects
olivia = users.create_user("olivia", is_staff=True)
alice = users.create_user("alice")
model_seed_ready(owner=olivia, name="nebula-7b", params_billions=7, gpu_type="H100-80GB")
for owner, name, admin in ((olivia, "admin", True), (alice, "warm", False), (alice, "cold", False)):
    print(key_create(actor=SYSTEM, owner=owner, name=name, rpm_limit=1000, is_admin=admin).secret)
"""


@dataclass
class PgStack:
    stack: Stack
    cluster: PostgresCluster
    admin: str
    warm: str  # used before the outage: its web process knows it
    cold: str  # never used before the outage

    def records(self) -> dict[str, tuple[int, str]]:
        with psycopg.connect(self.cluster.url()) as db:
            rows = db.execute("SELECT request_id, status, error_code FROM telemetry_usagerecord")
            return {request_id: (status, code) for request_id, status, code in rows}


@pytest.fixture(scope="module")
def pg_stack() -> Iterator[PgStack]:
    cluster = PostgresCluster()
    redis_server = RedisServer()
    stack: Stack | None = None
    try:
        cluster.init()
        redis_server.start()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "NEBULA_TESTING": "1",
            "NEBULA_LIVE_SERVER": "1",
            "DATABASE_URL": cluster.url(),
            "NEBULA_TEST_REDIS_URL": redis_server.url,
            "NEBULA_SIM_TIME_SCALE": LIVE_TIME_SCALE,
            "NEBULA_WORKER_TTL": "2",
            "NEBULA_HEARTBEAT_INTERVAL": "0.5",
            "NEBULA_QUEUE_TIMEOUT": "10",
            # The worker moves usage into the database itself, as in production.
            "NEBULA_WORKER_LEDGER": "true",
            "NEBULA_WORKER_RECONCILER": "false",
            "NEBULA_DB_POOL_TIMEOUT": "1",
            "PYTHONUNBUFFERED": "1",
        }
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        seeded = subprocess.run(
            [*manage, "shell", "-c", SEED], env=env, cwd=ROOT, check=True, capture_output=True
        )
        admin, warm, cold = seeded.stdout.decode().split()[-3:]
        stack = Stack(env=env)
        stack.start_worker(concurrency=16)
        stack.start_web()
        stack.wait_workers(1)
        yield PgStack(stack=stack, cluster=cluster, admin=admin, warm=warm, cold=cold)
    finally:
        if stack is not None:
            stack.stop()
        redis_server.stop()
        cluster.destroy()


def test_postgres_restarting_loses_nothing_and_needs_no_process_restart(pg_stack):
    url = pg_stack.stack.url
    pids = {p.popen.pid for p in pg_stack.stack.webs + pg_stack.stack.workers}
    admin = {"Authorization": f"Bearer {pg_stack.admin}"}
    before = ChatCall(url, pg_stack.warm, CHAT).go().result()
    assert before.status == 200
    assert httpx.get(url + "/apikeys", headers=admin).status_code == 200

    pg_stack.cluster.stop("fast")  # terminates every connection
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 503 and health.json()["failing"] == ["database"]
    for path in ("/apikeys", "/models", "/metrics"):
        response = httpx.get(url + path, headers=admin, timeout=10)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "database_unavailable"
    # The hot path needs no database for a key it knows; a key it has never seen gets a 503.
    during = [ChatCall(url, pg_stack.warm, CHAT).go().result() for _ in range(3)]
    assert [call.status for call in during] == [200, 200, 200]
    cold = ChatCall(url, pg_stack.cold, CHAT).go().result()
    cold.assert_well_formed()
    assert cold.status == 503 and cold.json["error"]["code"] == "database_unavailable"
    time.sleep(1.5)  # the worker's ledger tries (and fails) to write meanwhile

    pg_stack.cluster.start()
    wait_until(
        lambda: httpx.get(url + "/apikeys", headers=admin, timeout=10).status_code == 200,
        timeout=15,
        interval=0.5,
    )
    assert httpx.get(url + "/health").status_code == 200
    after = ChatCall(url, pg_stack.cold, CHAT).go().result()
    assert after.status == 200

    # Every request has its record, those served while the database was down included.
    calls = [before, *during, cold, after]
    expected = {call.request_id: call.status for call in calls}
    records = wait_until(
        lambda: (found := pg_stack.records()) and set(expected) <= set(found) and found,
        timeout=20,
        interval=0.5,
    )
    assert {rid: records[rid][0] for rid in expected} == expected
    assert records[cold.request_id] == (503, "database_unavailable")
    alive = {p.popen.pid for p in pg_stack.stack.webs + pg_stack.stack.workers if p.alive()}
    assert alive == pids
