"""`bin/run` (or `make run`) started by a test: the default layout, supervisord and all, in a
session of its own, so the test can kill its processes and check that nothing outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.faults import wait_until
from tests.support.stack import ROOT, free_port

VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    env: dict[str, str]
    run_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def supervisorctl(self, *args: str) -> str:
        config = self.run_dir / "supervisord.conf"
        argv = [str(VENV_BIN / "supervisorctl"), "-c", str(config), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()

    def pid(self, name: str) -> int:
        """What supervisord says is the pid of one of its processes (0 if it is not running)."""
        answer = self.supervisorctl("pid", name)
        return int(answer) if answer.isdigit() else 0

    def manage(self, *args: str) -> str:
        """A management command against the run's database, as an operator would type it."""
        done = subprocess.run(
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def session(self) -> list[int]:
        """Every live process of the session the run started in (supervisord gives each of its
        processes a process group of its own, but they stay in the session)."""
        found = subprocess.run(
            ["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        return [int(pid) for pid in found]

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def wait_healthy(self, workers: int = 1, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                body = self.health()
                if body["status"] == "ok" and body["checks"]["workers"].get("live", 0) >= workers:
                    return body
            time.sleep(0.1)
        raise AssertionError(f"bin/run did not become healthy:\n{self.output()}")

    def stop(self, *, sig: int = signal.SIGINT, group: bool = True) -> None:
        """Ctrl-C in the terminal (SIGINT to the foreground process group), or one signal to
        the one process (what systemd or `kill` does); then nothing of the run may be left."""
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.process.wait(timeout=30)
        wait_until(lambda: self.session() == [], timeout=5)


def run_env(workdir: Path, base: dict[str, str], **settings: str) -> dict[str, str]:
    """`base` (the test's environment, or a live stack's) with the run's own env file and
    supervisor directory (short: the control socket's path is limited to 107 bytes)."""
    run_dir = Path(tempfile.mkdtemp(prefix="nebula-run-"))
    return {
        **base,
        "NEBULA_ENV_FILE": str(workdir / ".env"),
        "NEBULA_RUN_DIR": str(run_dir),
        **settings,
    }


def start_run(workdir: Path, env: dict[str, str], *, argv: tuple[str, ...] = ("bin/run",)) -> Run:
    """Start `argv` (bin/run by default) with `env`; PORT is picked if `env` has none."""
    env = {"PORT": str(free_port()), **env}
    log = workdir / f"run-{env['PORT']}.log"
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
    url = f"http://127.0.0.1:{env['PORT']}"
    return Run(process, url, log, env, Path(env["NEBULA_RUN_DIR"]))


@contextlib.contextmanager
def running(run: Run) -> Iterator[Run]:
    """Make sure nothing of the run survives the test, whatever the test did."""
    try:
        yield run
    finally:
        if run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
        for pid in run.session():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.process.wait(timeout=10)
