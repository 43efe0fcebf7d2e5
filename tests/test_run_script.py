"""`make run`'s script from a newcomer's point of view: it seeds, serves, keeps serving when a
process crashes (supervisord restarts it), and Ctrl-C or SIGTERM stops everything.

Each test runs bin/run on a private `redis-server` and its own SQLite file, so killing its
processes touches nothing any other test (or person) uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.clients import ChatCall, jobs_in
from tests.support.faults import RedisServer, wait_until
from tests.support.run import Run, run_env, running, start_run
from tests.support.stack import free_port


def start(
    tmp_path: Path,
    redis_url: str,
    *,
    argv: tuple[str, ...] = ("bin/run",),
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Run:
    """bin/run as a newcomer starts it: their environment, a fresh SQLite file."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEBULA_", "DJANGO_", "DATABASE_URL", "SECRET_KEY"))
    }
    settings = {
        "PORT": str(port or free_port()),
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "NEBULA_SIM_TIME_SCALE": "0",
        "NEBULA_WORKER_CONCURRENCY": "8",
        **(extra_env or {}),
    }
    env = run_env(tmp_path, base, **settings)
    return start_run(tmp_path, env, argv=argv)


def usage_records(run: Run, request_ids: list[str]) -> dict[str, tuple[int, str]]:
    """request id → (status, error code) of their usage records, straight from the database
    file the run writes (its worker moves records there)."""
    path = run.env["DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        marks = ",".join("?" * len(request_ids))
        rows = db.execute(
            f"SELECT request_id, status, error_code FROM telemetry_usagerecord "  # noqa: S608
            f"WHERE request_id IN ({marks})",
            request_ids,
        ).fetchall()
    found: dict[str, tuple[int, str]] = {}
    for request_id, status, code in rows:
        assert request_id not in found, f"two records for {request_id}"
        found[request_id] = (status, code)
    return found


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_run_starts_daphne_and_a_worker_and_ctrl_c_stops_both(tmp_path, redis_server):
    with running(start(tmp_path, redis_server.url)) as run:
        health = run.wait_healthy(workers=1)
        assert health["mode"] == "distributed"
        text = run.output()
        assert f"Nebula is starting at {run.url}/" in text
        assert re.search(r"Operator login:\s+operator / \S+", text)
        secret = re.search(r"Demo API key \(shown once.*\): (nb_\w+)", text).group(1)
        reply = openai.OpenAI(base_url=run.url + "/v1", api_key=secret, max_retries=0)
        completion = reply.chat.completions.create(
            model="nebula-7b", messages=[{"role": "user", "content": "Hello GPU"}]
        )
        assert completion.choices[0].message.content

        # Both run under supervisord, which `supervisorctl` reaches through the run directory.
        def both_running() -> bool:
            status = run.supervisorctl("status")
            return all(re.search(rf"^{name}\s+RUNNING", status, re.M) for name in ("web", "worker"))

        wait_until(both_running, timeout=30)  # RUNNING once up for START_SECONDS
        run.stop()
    # A second start reuses the data and does not show the key again.
    with running(start(tmp_path, redis_server.url)) as run:
        run.wait_healthy(workers=1)
        text = run.output()
        assert "shown once" not in text and not re.search(r"nb_\w{38}", text)
        run.stop()


def test_run_without_redis_serves_everything_from_one_process(tmp_path):
    with running(start(tmp_path, "redis://127.0.0.1:1/0")) as run:
        health = run.wait_healthy(workers=1)
        assert health["mode"] == "standalone"
        lines = [line for line in run.output().splitlines() if "Redis is not answering" in line]
        assert len(lines) == 1 and "one process" in lines[0]
        # bin/run became daphne itself: no supervisor, no second process.
        assert len(run.session()) == 1
        run.stop()


@pytest.mark.timeout(240)
def test_a_process_that_cannot_start_stops_the_run_with_an_error(tmp_path, redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running(start(tmp_path, redis_server.url, port=port)) as run:
            # supervisord retries the web process a few times, gives up, and stops the rest
            # (a fresh database is migrated first: a minute or more on a busy machine).
            run.process.wait(timeout=180)
            assert run.process.returncode != 0
            text = run.output()
            assert "Address already in use" in text
            assert "web could not be started" in text
            wait_until(lambda: run.session() == [], timeout=5)


@pytest.mark.timeout(240)
def test_a_killed_worker_is_restarted_while_the_web_process_serves_on(tmp_path, redis_server):
    """The issue's scenario under `make run`: 20 streams in flight, kill -9 of the worker.
    Streams under way end with a `worker_lost` error chunk and [DONE]; jobs still waiting for
    a GPU slot are resent to the restarted worker and complete; every request leaves exactly
    one usage record; the web process never stops answering; SIGTERM to make stops it all."""
    extra = {
        # ~30 ms a token for nebula-7b: a 400-token stream lasts ~12 s.
        "NEBULA_SIM_TIME_SCALE": "5",
        "NEBULA_WORKER_CONCURRENCY": "32",
        "NEBULA_WORKER_TTL": "2",
        "NEBULA_HEARTBEAT_INTERVAL": "0.5",
    }
    argv = ("make", "--no-print-directory", "run")
    with running(start(tmp_path, redis_server.url, argv=argv, extra_env=extra)) as run:
        run.wait_healthy(workers=1)
        secret = run.manage("createapikey", "--user", "demo", "--name", "fast", "--rpm", "6000")
        secret = secret.split()[-1]
        admin = run.manage("createapikey", "--user", "operator", "--name", "ops", "--admin")
        admin = admin.split()[-1]
        # One replica: 16 sequences at once, so 4 of the 20 streams wait for a slot.
        scaled = httpx.patch(
            run.url + "/models/nebula-7b",
            json={"replicas": 1},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert scaled.status_code == 200, scaled.text
        body = {
            "model": "nebula-7b",
            "messages": [{"role": "user", "content": "Tell me about GPUs."}],
            "stream": True,
            "max_tokens": 400,
            "ignore_eos": True,
        }
        worker, web = run.pid("worker"), run.pid("web")
        calls = [ChatCall(run.url, secret, {**body, "seed": n}, timeout=90).go() for n in range(20)]
        redis = redis_server.client()

        def sixteen_running_four_waiting() -> dict[str, dict[str, str]] | None:
            jobs = jobs_in(redis)
            states = sorted(job.get("state", "") for job in jobs.values())
            under_way = sum(call.content_chunks >= 2 for call in calls)
            return jobs if states == ["running"] * 16 + ["waiting"] * 4 and under_way else None

        jobs = wait_until(sixteen_running_four_waiting, timeout=60)
        waiting = {rid for rid, job in jobs.items() if job["state"] == "waiting"}
        wait_until(lambda: sum(call.content_chunks >= 2 for call in calls) == 16, timeout=20)

        # The web process answers throughout (200, or 503 naming the workers if the new one
        # is not up before the old one's heartbeat has lapsed).
        answers = []  # status codes, or the error of a request that got no answer
        watching = threading.Event()

        def watch_health() -> None:
            while not watching.is_set():
                try:
                    answers.append(httpx.get(run.url + "/health", timeout=5).status_code)
                except httpx.HTTPError as error:
                    answers.append(repr(error))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_health, daemon=True)
        watcher.start()
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)

        for call in calls:
            call.result(timeout=90)
        restarted = wait_until(
            lambda: run.pid("worker") not in (0, worker) and run.pid("worker"), timeout=30
        )
        run.wait_healthy(workers=1)
        watching.set()
        watcher.join(10)
        assert run.pid("web") == web, "the web process was restarted"
        assert answers and all(isinstance(answer, int) for answer in answers), answers
        assert restarted != worker

        lost = [call for call in calls if call.errors]
        completed = [call for call in calls if not call.errors]
        for call in calls:
            call.assert_well_formed()
            assert call.events[-1] == "[DONE]"
        for call in lost:
            assert [error["code"] for error in call.errors] == ["worker_lost"]
            assert call.finished_at - killed_at < 10
        # The four that were waiting for a slot had sent nothing: resent, and whole.
        assert {call.request_id for call in completed} == waiting
        for call in completed:
            assert call.events[-2]["choices"][0]["finish_reason"] == "length"
        assert len(lost) == 16

        # And the restarted worker serves new requests.
        after = openai.OpenAI(base_url=run.url + "/v1", api_key=secret, max_retries=0)
        reply = after.chat.completions.with_raw_response.create(
            model="nebula-7b", messages=[{"role": "user", "content": "Still there?"}], max_tokens=5
        )
        assert reply.parse().choices[0].message.content
        after_id = reply.headers["x-request-id"]

        # Exactly one usage record per request, saying what its client saw.
        ids = [call.request_id for call in calls] + [after_id]
        records = wait_until(
            lambda: (found := usage_records(run, ids)) and len(found) == 21 and found, timeout=45
        )
        for call in lost:
            assert records[call.request_id] == (503, "worker_lost")
        for call in completed:
            assert records[call.request_id] == (200, "")
        assert records[after_id] == (200, "")

        # SIGTERM to make alone (as `kill` or a service manager sends it): everything stops.
        run.stop(sig=signal.SIGTERM, group=False)
        assert "exited: worker (terminated by SIGKILL; not expected)" in run.output()
