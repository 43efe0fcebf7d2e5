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
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.clients import ChatCall, jobs_in
from tests.support.faults import RedisServer, wait_until
from tests.support.stack import ROOT, free_port

PY = str(ROOT / ".venv" / "bin" / "python")


@dataclass
class Run:
    """One `bin/run` (or `make run`) started by a test, in a session of its own."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    env: dict[str, str]
    run_dir: Path
    workdir: Path
    pids_seen: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def supervisorctl(self, *args: str) -> str:
        config = self.run_dir / "supervisord.conf"
        argv = [str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(config), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()

    def pid(self, name: str) -> int:
        """What supervisord says is the pid of one of its processes (0 if it is not running)."""
        return int(self.supervisorctl("pid", name) or 0)

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [PY, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def session(self) -> list[str]:
        """Every process of the session the run started in (supervisord gives each of its
        processes a process group of its own, but they stay in the session)."""
        found = subprocess.run(
            ["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        return [pid for pid in found if int(pid) != self.process.pid or self.process.poll() is None]

    def records(self, request_ids: list[str]) -> dict[str, tuple[int, str]]:
        """request id → (status, error code) of their usage records, straight from the database
        file the run writes (its worker moves records there)."""
        with contextlib.closing(sqlite3.connect(self.workdir / "db.sqlite3", timeout=10)) as db:
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


def start(
    tmp_path: Path,
    redis_url: str,
    *,
    argv: tuple[str, ...] = ("bin/run",),
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Run:
    port = port or free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEBULA_", "DJANGO_", "DATABASE_URL", "SECRET_KEY"))
    }
    # A short path: the control socket lives there, and socket paths are limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="nebula-run-"))
    env.update(
        {
            "PORT": str(port),
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "NEBULA_ENV_FILE": str(tmp_path / ".env"),
            "NEBULA_RUN_DIR": str(run_dir),
            "NEBULA_SIM_TIME_SCALE": "0",
            "NEBULA_WORKER_CONCURRENCY": "8",
            **(extra_env or {}),
        }
    )
    log = tmp_path / f"run-{port}.log"
    # The child gets its own append-mode handle and we read through the path: a handle shared
    # with the child shares its file offset, so seeking it to read would make the child's next
    # line overwrite the start of the log.
    with log.open("a") as handle:
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Run(process, f"http://127.0.0.1:{port}", log, env, run_dir, tmp_path)


def wait_healthy(run: Run, workers: int) -> dict:
    for _ in range(400):
        if run.process.poll() is not None:
            break
        try:
            body = httpx.get(run.url + "/health", timeout=2).json()
            if body["status"] == "ok" and body["checks"]["workers"].get("live", 0) >= workers:
                return body
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail(f"bin/run did not become healthy:\n{run.output()}")


def stop(run: Run, *, sig: int = signal.SIGINT, group: bool = True) -> None:
    """Ctrl-C in the terminal (SIGINT to the foreground process group), or one signal to the
    one process (what systemd or `kill` does); then nothing of the run may be left."""
    if group:
        os.killpg(run.process.pid, sig)
    else:
        run.process.send_signal(sig)
    run.process.wait(timeout=30)
    wait_until(lambda: run.session() == [], timeout=5)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running(run: Run) -> Iterator[Run]:
    """Stop the run whatever the test did, so no test leaves processes behind."""
    try:
        yield run
    finally:
        if run.process.poll() is None or run.session():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            for pid in run.session():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        run.process.wait(timeout=10)


def test_run_starts_daphne_and_a_worker_and_ctrl_c_stops_both(tmp_path, redis_server):
    with running(start(tmp_path, redis_server.url)) as run:
        health = wait_healthy(run, workers=1)
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

        wait_until(both_running, timeout=10)
        stop(run)
    # A second start reuses the data and does not show the key again.
    with running(start(tmp_path, redis_server.url)) as run:
        wait_healthy(run, workers=1)
        text = run.output()
        assert "shown once" not in text and not re.search(r"nb_\w{38}", text)
        stop(run)


def test_run_without_redis_serves_everything_from_one_process(tmp_path):
    with running(start(tmp_path, "redis://127.0.0.1:1/0")) as run:
        health = wait_healthy(run, workers=1)
        assert health["mode"] == "standalone"
        lines = [line for line in run.output().splitlines() if "Redis is not answering" in line]
        assert len(lines) == 1 and "one process" in lines[0]
        # bin/run became daphne itself: no supervisor, no second process.
        assert len(run.session()) == 1
        stop(run)


def test_a_process_that_cannot_start_stops_the_run_with_an_error(tmp_path, redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running(start(tmp_path, redis_server.url, port=port)) as run:
            # supervisord retries the web process a few times, gives up, and stops the rest.
            run.process.wait(timeout=60)
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
        wait_healthy(run, workers=1)
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
        wait_healthy(run, workers=1)
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
            lambda: (found := run.records(ids)) and len(found) == 21 and found, timeout=45
        )
        for call in lost:
            assert records[call.request_id] == (503, "worker_lost")
        for call in completed:
            assert records[call.request_id] == (200, "")
        assert records[after_id] == (200, "")

        # SIGTERM to make alone (as `kill` or a service manager sends it): everything stops.
        stop(run, sig=signal.SIGTERM, group=False)
        assert "exited: worker (terminated by SIGKILL; not expected)" in run.output()
