"""A real Nebula for integration tests: daphne web processes and Celery worker processes,
started from this checkout against the test database and the test Redis database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(settings_dict: dict) -> str:
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else f"{user}@"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    env: dict[str, str]
    webs: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_web(self, port: int | None = None, extra_env: dict[str, str] | None = None) -> Proc:
        port = port or free_port()
        proc = _spawn(
            f"web-{port}",
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "nebula_site.asgi:application",
            ],
            {**self.env, **(extra_env or {})},
        )
        self.webs.append(proc)
        self.ports.append(port)
        _wait_http(f"http://127.0.0.1:{port}/health", proc, accept={200, 503})
        return proc

    def start_worker(self, concurrency: int = 32, extra_env: dict[str, str] | None = None) -> Proc:
        index = len(self.workers)
        proc = _spawn(
            f"worker-{index}-{time.monotonic_ns()}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "nebula_site",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"w{index}-{os.getpid()}@%h",
            ],
            {**self.env, **(extra_env or {})},
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        live = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = httpx.get(self.url + "/health", timeout=5).json()
                live = body["checks"]["workers"].get("live", 0)
                if live >= count:
                    return
            for proc in self.workers:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"only {live} of {count} workers came up")

    def stop(self) -> None:
        for proc in [*self.workers, *self.webs]:
            if proc.alive():
                proc.popen.terminate()
        for proc in [*self.workers, *self.webs]:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> Proc:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
    handle = log.open("w")
    popen = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Proc(name=name, popen=popen, log=log)


def _wait_http(url: str, proc: Proc, *, accept: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code in accept:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer at {url}:\n{proc.tail()}")
