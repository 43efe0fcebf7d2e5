"""Scenario 8: a peer in the same run. LiteLLM's proxy (a pinned release, in a venv of its own
under the bench cache, so its many dependencies stay out of the product's) in front of the
same test engine as Nebula's openai-compatible deployment (scenario 6), on the same requests:
the engine called directly is the baseline, and both proxies are measured against it, side by
side, alternating where the scenario allows.

LiteLLM runs as its docs show for a proxy: `litellm --config config.yaml`, a master key, no
database, one worker process (`--num_workers 1`: the machine has two cores, and Nebula's stack
is one web process and one worker). When it cannot be installed or started (no network beyond
PyPI, a release that needs a package PyPI does not have), the scenario reports why instead of
failing the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.compare import CACHE
from bench.http1 import Connection
from bench.stats import summarize
from bench.streams import Client, StreamResult, request
from bench.upstream import ENGINE_MODEL, TOKENS
from bench.upstream import MODEL as NEBULA_MODEL
from bench.wrk import lua_script, run_wrk

# The newest release whose `proxy` extra installs from PyPI for Python 3.11 here: later ones
# pin litellm-proxy-extras / litellm-enterprise builds that PyPI does not serve.
LITELLM_VERSION = "1.106.12"
LITELLM_MODEL = "bench-upstream"  # the name clients ask for, as with Nebula
STREAM_TOKENS = 64
SIDES = ("direct", "nebula", "litellm")


class PeerUnavailable(Exception):
    """LiteLLM could not be installed or started; the message says why."""


def venv_path(cache: Path = CACHE) -> Path:
    return cache / "litellm-venv"


def install_command(venv: Path, version: str = LITELLM_VERSION) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
            f"litellm[proxy]=={version}"]  # fmt: skip


def ensure_litellm(
    cache: Path = CACHE, version: str = LITELLM_VERSION, timeout: float = 1200
) -> Path:
    """The `litellm` command of the pinned release, installed into its venv on first use."""
    venv = venv_path(cache)
    stamp = venv / f".installed-{version}"
    binary = venv / "bin" / "litellm"
    if stamp.exists() and binary.exists():
        return binary
    try:
        if not (venv / "bin" / "python").exists():
            venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        done = subprocess.run(
            install_command(venv, version),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise PeerUnavailable(
            f"installing litellm[proxy]=={version} took over {timeout:.0f} s"
        ) from error
    except (OSError, subprocess.CalledProcessError) as error:
        raise PeerUnavailable(f"could not create its venv: {error}") from error
    if done.returncode != 0 or not binary.exists():
        raise PeerUnavailable(f"pip install litellm[proxy]=={version}: {last_error(done.stderr)}")
    stamp.write_text(version + "\n")
    return binary


def last_error(output: str) -> str:
    """The line of pip's (or a server's) output that says what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "Error", "error"))]
    return (errors or lines or ["no output"])[0 if errors else -1]


def _quoted(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def config_yaml(*, api_base: str, master_key: str, upstream_model: str = ENGINE_MODEL) -> str:
    """LiteLLM's proxy config: one model, `openai/` provider pointing at the engine, a master
    key, no database, no retries (a failure should show as one, not be retried away)."""
    return "\n".join(
        [
            "model_list:",
            f"  - model_name: {_quoted(LITELLM_MODEL)}",
            "    litellm_params:",
            f"      model: {_quoted('openai/' + upstream_model)}",
            f"      api_base: {_quoted(api_base.rstrip('/') + '/v1')}",
            f"      api_key: {_quoted('unused')}",
            "litellm_settings:",
            "  num_retries: 0",
            "  request_timeout: 60",
            "general_settings:",
            f"  master_key: {_quoted(master_key)}",
            "",
        ]
    )


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """LiteLLM's environment: not the benchmark's (whose DATABASE_URL and REDIS_URL LiteLLM
    would take as its own database and cache), only what a process needs, and no fetching of
    its model price list from the internet at startup."""
    base = dict(os.environ if base is None else base)
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {name: base[name] for name in keep if name in base}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class LiteLLM:
    binary: Path
    config: Path
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [str(self.binary), "--config", str(self.config), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1"]  # fmt: skip

    def start(self, timeout: float = 180) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as handle:
            self.popen = subprocess.Popen(
                self.argv(),
                cwd=self.config.parent,
                env=server_env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise PeerUnavailable(f"litellm exited at startup: {self._tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/liveliness", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise PeerUnavailable(f"litellm did not answer within {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return last_error(self.log.read_text(errors="replace"))
        except OSError:
            return "no log"

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    port: int
    headers: dict[str, str]
    model: str


def targets(
    *, engine_port: int, nebula_port: int, nebula_secret: str, litellm_port: int, master_key: str
) -> dict[str, Target]:
    json_type = {"Content-Type": "application/json"}
    return {
        "direct": Target(engine_port, json_type, ENGINE_MODEL),
        "nebula": Target(
            nebula_port, {**json_type, "Authorization": f"Bearer {nebula_secret}"}, NEBULA_MODEL
        ),
        "litellm": Target(
            litellm_port, {**json_type, "Authorization": f"Bearer {master_key}"}, LITELLM_MODEL
        ),
    }


def body(model: str, *, stream: bool, tokens: int = TOKENS) -> dict[str, Any]:
    """The same request to every side but for the model's name (the engine's command for the
    reply's length travels in the message)."""
    out: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Hello engine [[tokens={tokens}]]"}],
        "max_tokens": tokens,
    }
    if stream:
        out.update(stream=True, stream_options={"include_usage": True})
    return out


def stream_words(events: list[str]) -> tuple[int, bool]:
    """(content words delivered, whether `[DONE]` came last) of one stream: the engine sends
    one word a token, so the count is the tokens a client got, however a proxy regroups them."""
    text: list[str] = []
    for event in events:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            for choice in json.loads(event).get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    text.append(content)
    return len("".join(text).split()), bool(events) and events[-1] == "[DONE]"


def problem(result: StreamResult) -> str:
    """What went wrong with a request, in a few words: its status and error, or its body."""
    said = result.error or " ".join(result.events)[:200]
    return f"status {result.status}: {said}".strip()


def _ok(result: StreamResult) -> bool:
    return result.status == 200 and result.error is None


async def concurrency_one(targets: dict[str, Target], *, seconds: float) -> dict[str, Any]:
    """One request at a time per side, half-second blocks in turn (as scenario 1), so drift
    on a shared machine lands on every side alike."""
    path = "/v1/chat/completions"
    connections = {name: Connection("127.0.0.1", t.port) for name, t in targets.items()}
    latency: dict[str, list[float]] = {name: [] for name in targets}
    failed = dict.fromkeys(targets, 0)
    try:
        for name, t in targets.items():  # warm-up
            for _ in range(50):
                await request(connections[name], path, t.headers, body(t.model, stream=False))
        block = 0.5
        for _ in range(max(1, round(seconds / block))):
            for name, t in targets.items():
                first, until = True, time.perf_counter() + block
                while time.perf_counter() < until:
                    result = await request(
                        connections[name], path, t.headers, body(t.model, stream=False)
                    )
                    if first:
                        first = False
                        continue
                    if _ok(result):
                        latency[name].append((result.ended - result.started) * 1000)
                    else:
                        failed[name] += 1
    finally:
        await asyncio.gather(*(c.close() for c in connections.values()))
    return {name: {**summarize(latency[name]), "failed": failed[name]} for name in targets}


def concurrency_fifty(
    targets: dict[str, Target], *, seconds: float, cpus: str | None
) -> dict[str, Any]:
    """`wrk -c50` on each side in turn, after a short warm-up of each."""
    out: dict[str, Any] = {}
    for warm in (True, False):
        for name, t in targets.items():
            script = lua_script(
                method="POST", headers=t.headers, body=json.dumps(body(t.model, stream=False))
            )
            result = run_wrk(
                f"http://127.0.0.1:{t.port}/v1/chat/completions",
                connections=50,
                seconds=2 if warm else seconds,
                script=script,
                cpus=cpus,
            )
            if not warm:
                out[name] = result.as_dict()
    return out


async def bounded(
    connection: Connection, path: str, headers: dict[str, str], body: dict[str, Any], timeout: float
) -> StreamResult:
    """One request that gives up after `timeout` seconds (a stream a proxy stopped sending
    counts as failed instead of holding the run)."""
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(request(connection, path, headers, body), timeout)
    except TimeoutError:
        await connection.close()
        return StreamResult(started=started, ended=time.perf_counter(),
                            error=f"no end after {timeout:g} s")  # fmt: skip


async def bounded_round(
    client: Client,
    path: str,
    headers: dict[str, str],
    bodies: list[dict[str, Any]],
    *,
    timeout: float,
) -> tuple[list[StreamResult], float]:
    """`Client.round` with every request bounded in time."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            bounded(connection, path, headers, one, timeout)
            for connection, one in zip(client.connections, bodies, strict=False)
        )
    )
    return list(results), time.perf_counter() - started


async def bursts(
    targets: dict[str, Target],
    *,
    streams: int,
    rounds: int,
    tokens: int,
    timeout: float = 120,
) -> dict[str, Any]:
    """`rounds` bursts of `streams` streams started at once per side, the sides taking turns
    burst by burst; the first burst of each opens its connections and is not counted."""
    path = "/v1/chat/completions"
    clients = {name: Client("127.0.0.1", t.port, streams) for name, t in targets.items()}
    ttft: dict[str, list[float]] = {name: [] for name in targets}
    walls = dict.fromkeys(targets, 0.0)
    words = dict.fromkeys(targets, 0)
    failed = dict.fromkeys(targets, 0)
    broken = dict.fromkeys(targets, 0)
    problems: dict[str, list[str]] = {name: [] for name in targets}
    try:
        for index in range(rounds + 1):
            for name, t in targets.items():
                bodies = [body(t.model, stream=True, tokens=tokens) for _ in range(streams)]
                results, wall = await bounded_round(
                    clients[name], path, t.headers, bodies, timeout=timeout
                )
                if index == 0:
                    continue
                walls[name] += wall
                for result in results:
                    got, done = stream_words(result.events)
                    words[name] += got
                    if not _ok(result):
                        failed[name] += 1
                        problems[name].append(problem(result))
                    elif got != tokens or not done:
                        broken[name] += 1
                        problems[name].append(f"{got} of {tokens} tokens, [DONE] {done}")
                    if result.ttft_ms is not None and _ok(result):
                        ttft[name].append(result.ttft_ms)
    finally:
        await asyncio.gather(*(client.close() for client in clients.values()))
    return {
        name: {
            "burst_ttft_ms": summarize(ttft[name]),
            "tokens_per_second": words[name] / walls[name] if walls[name] else None,
            "streams_failed": failed[name],
            "streams_broken": broken[name],
            "problems": sorted(set(problems[name]))[:10],
        }
        for name in targets
    }


def merge(c1: dict[str, Any], c50: dict[str, Any], burst: dict[str, Any]) -> dict[str, Any]:
    """Per side: its c=1 latency, wrk's c=50 summary, its bursts, and every failure counted."""
    out: dict[str, Any] = {}
    for name in c1:
        failed = c1[name].get("failed", 0) + c50[name].get("errors", 0)
        failed += burst[name].get("streams_failed", 0)
        out[name] = {"c1": c1[name], "c50": c50[name], **burst[name], "failed": failed}
    return out
