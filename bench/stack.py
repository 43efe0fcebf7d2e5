"""The system under test: daphne web processes and Celery worker processes (one of each, except
in the scale-out scenario), started from this checkout against the benchmark's own SQLite file
and Redis database, optionally pinned to cores."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.scale import haproxy_config

ROOT = Path(__file__).resolve().parent.parent
_APP = ("nebula_site.asgi:application",)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(first: int, last: int, *, taken: set[int] | None = None) -> int:
    for port in range(first, last + 1):
        if port not in (taken or set()) and port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {first}-{last}")


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    cpus: str | None  # what it was pinned to, None if not pinned

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """`webs` daphne processes and `workers` Celery workers. With one web process it listens on
    `port` itself; with `balancer`, HAProxy listens there and the web processes on free ports
    of their own (scenario 7)."""

    env: dict[str, str]
    port: int
    log_dir: Path
    web_cpus: str | None = None
    worker_cpus: str | None = None
    worker_concurrency: int = 128
    webs: int = 1
    workers: int = 1
    balancer: bool = False
    # The checkout the servers run from: this one, or an earlier commit's (`--compare`).
    root: Path = ROOT
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def web(self) -> Proc:
        return self.procs[0]

    @property
    def worker(self) -> Proc:
        return self.procs[self.webs]

    def start(self) -> None:
        python = sys.executable
        web_ports = [self.port]
        if self.balancer:
            taken = {self.port}
            web_ports = []
            for _ in range(self.webs):
                web_ports.append(free_port(self.port + 1, self.port + 200, taken=taken))
                taken.add(web_ports[-1])
        # The same command lines as the Procfile (daphne's default access log included), so the
        # figures describe the layout `make run` starts.
        for index, web_port in enumerate(web_ports):
            self._spawn(
                "web" if self.webs == 1 else f"web-{index + 1}",
                [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), *_APP],
                self.web_cpus,
            )
        for index in range(self.workers):
            self._spawn(
                "worker" if self.workers == 1 else f"worker-{index + 1}",
                [
                    *(python, "-m", "celery", "-A", "nebula_site", "worker", "--pool", "threads"),
                    *("--concurrency", str(self.worker_concurrency), "--loglevel", "INFO"),
                    *("--without-gossip", "--without-mingle"),
                    *("-n", f"bench-{os.getpid()}-{index}@%h"),
                ],
                self.worker_cpus,
            )
        if self.balancer:
            config = self.log_dir / "haproxy.cfg"
            config.write_text(haproxy_config(port=self.port, backends=web_ports))
            self._spawn("haproxy", [haproxy_binary(), "-db", "-f", str(config)], None)
        self._wait_ready()

    def _spawn(self, name: str, argv: list[str], cpus: str | None) -> None:
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]  # taskset execs: the pid stays the server's
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(Proc(name=name, popen=popen, log=log, cpus=cpus))

    def _wait_ready(self, timeout: float = 90.0) -> None:
        """Until /health (through the balancer, if any) says the database and Redis are fine
        and exactly our workers are alive."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                response = httpx.get(self.url + "/health", timeout=2)
                last = response.text
                if response.status_code == 200 and healthy(response.json(), self.workers):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the stack did not become healthy: {last}\n{self.web.tail()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)


def healthy(body: object, workers: int) -> bool:
    """Whether a 200 from /health means the stack is ready: exactly our workers alive, where
    it counts them. Earlier commits (`--compare`) answered 200 only once a worker was alive,
    without counting them, so a body with no count is taken at its word."""
    checks = body.get("checks") if isinstance(body, dict) else None
    counted = checks.get("workers") if isinstance(checks, dict) else None
    if not isinstance(counted, dict) or "live" not in counted:
        return True
    return bool(counted["live"] == workers)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: `apt-get install haproxy` (make bench does)")
    return found


def pinning(cpu_count: int, enabled: bool) -> tuple[str | None, str | None, str | None]:
    """(web, worker, load generator) cores. With two or more cores the web process and the
    worker each get one, as they would on separate machines; the load generator gets what is
    left (or shares). Redis is the machine's and is not pinned."""
    if not enabled or cpu_count < 2 or shutil.which("taskset") is None:
        return None, None, None
    rest = ",".join(str(cpu) for cpu in range(2, cpu_count)) or None
    return "0", "1", rest
