"""Servers a fault test may break: a private Redis and a private PostgreSQL cluster, each on a
free port in a temporary directory, never the shared ones other tests use.

Every process started here is stopped by `stop()`; the fixtures that start them call it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.stack import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class RedisServer:
    """`redis-server` on a free port. With `persistent`, an append-only file fsynced on every
    write, so a kill -9 loses nothing it acknowledged (how production Redis should run)."""

    persistent: bool = False
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nebula-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        log = (self.directory / "redis.log").open("a")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(self._answers(client), timeout=10, interval=0.05)
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            with contextlib.suppress(redis.exceptions.RedisError):
                return bool(client.ping())
            return False

        return ping

    def kill(self) -> None:
        """Crash it (kill -9): connections drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """Hang it (SIGSTOP): connections stay open but nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb) on a free port, run as the `postgres` user."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nebula-pg-")))

    @staticmethod
    def available() -> bool:
        return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "nebula") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str | Path) -> None:
        # PostgreSQL refuses to run as root; the temp dir belongs to `postgres` for that.
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *map(str, argv)], check=True, capture_output=True)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust")
        self.start()
        self._run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "nebula")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        log = self.directory / "log"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
