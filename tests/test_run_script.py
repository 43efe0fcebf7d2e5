"""`make run`'s script from a newcomer's point of view: it seeds, serves, and Ctrl-C stops it."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.stack import ROOT, free_port


def start(tmp_path, redis_url):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEBULA_", "DJANGO_", "DATABASE_URL", "SECRET_KEY"))
    }
    env.update(
        {
            "PORT": str(port),
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "NEBULA_ENV_FILE": str(tmp_path / ".env"),
            "NEBULA_SIM_TIME_SCALE": "0",
            "NEBULA_WORKER_CONCURRENCY": "8",
        }
    )
    log = tmp_path / f"run-{port}.log"
    # The child gets its own append-mode handle and we read through the path: a handle shared
    # with the child shares its file offset, so seeking it to read would make the child's next
    # line overwrite the start of the log.
    with log.open("a") as handle:
        process = subprocess.Popen(
            ["bin/run"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}", log


def wait_healthy(url, process, log, workers):
    for _ in range(300):
        if process.poll() is not None:
            break
        try:
            body = httpx.get(url + "/health", timeout=2).json()
            if body["status"] == "ok" and body["checks"]["workers"].get("live", 0) >= workers:
                return body
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail(f"bin/run did not become healthy:\n{output(log)}")


def stop(process):
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    process.wait(timeout=20)
    time.sleep(0.5)
    leftover = subprocess.run(
        ["pgrep", "-g", str(process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == [], f"processes left running: {leftover}"


def output(log: Path) -> str:
    return log.read_text()


def test_run_starts_daphne_and_a_worker_and_ctrl_c_stops_both(tmp_path):
    from django.conf import settings

    process, url, log = start(tmp_path, settings.REDIS_URL)
    try:
        health = wait_healthy(url, process, log, workers=1)
        assert health["mode"] == "distributed"
        text = output(log)
        assert f"Nebula is starting at {url}/" in text
        assert re.search(r"Operator login:\s+operator / \S+", text)
        secret = re.search(r"Demo API key \(shown once.*\): (nb_\w+)", text).group(1)
        reply = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        completion = reply.chat.completions.create(
            model="nebula-7b", messages=[{"role": "user", "content": "Hello GPU"}]
        )
        assert completion.choices[0].message.content
    finally:
        stop(process)
    # A second start reuses the data and does not show the key again.
    process, url, log = start(tmp_path, settings.REDIS_URL)
    try:
        wait_healthy(url, process, log, workers=1)
        text = output(log)
        assert "shown once" not in text and not re.search(r"nb_\w{38}", text)
    finally:
        stop(process)


def test_run_without_redis_serves_everything_from_one_process(tmp_path):
    process, url, log = start(tmp_path, "redis://127.0.0.1:1/0")
    try:
        health = wait_healthy(url, process, log, workers=1)
        assert health["mode"] == "standalone"
        lines = [line for line in output(log).splitlines() if "Redis is not answering" in line]
        assert len(lines) == 1 and "one process" in lines[0]
    finally:
        stop(process)
