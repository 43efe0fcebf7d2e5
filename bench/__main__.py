"""`python -m bench` (`make bench`): start Nebula's distributed layout from this checkout, measure
it against a trivial view on the same stack, print the table, keep the results.

See docs/BENCHMARKS.md for the method and what limits each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import compare, micro, peer
from bench.http1 import Connection
from bench.report import Row, fmt, markdown, markdown_table, render, render_table
from bench.scale import (
    DEFAULT_LAYOUTS,
    SCALE_COLUMNS,
    Layout,
    cores_busy,
    parse_layouts,
    scale_cells,
)
from bench.sidebyside import cells, columns, peer_figures, previous_figures
from bench.sse import check_stream
from bench.stack import ROOT, Stack, allowed_cpus, cpu_seconds, free_port, pinning, rss_kib
from bench.stats import growth, ratio, summarize
from bench.streams import Client, StreamResult, request
from bench.upstream import engine_deploy, rows_upstream, upstream_overhead
from bench.wrk import lua_script, run_wrk

RESULTS = ROOT / "bench" / "results"
MODEL = "bench-7b"
MAX_RPM = 1_000_000  # keys.services.MAX_RPM: the highest limit a key can have
# The benchmark owns this Redis database and empties it first; never point it at real data.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
PORTS = (8200, 8299)

# The non-streaming request: a short chat turn and a reply of exactly 16 tokens.
COMPLETION_TOKENS = 16
STREAM_TOKENS = 256


def completion_body() -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello GPU, how fast are you?"}],
        "max_tokens": COMPLETION_TOKENS,
        "ignore_eos": True,
    }


def stream_body(seed: int, tokens: int = STREAM_TOKENS) -> dict[str, Any]:
    # A seed per stream: the text is deterministic, so each stream has its own exact expected
    # answer, and streams crossing wires would show.
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Stream number {seed}, please."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# --- setup -----------------------------------------------------------------------------------


def configure(redis_url: str, database: Path) -> dict[str, str]:
    """Environment for this process and the servers: our Redis DB and SQLite file, no simulated
    GPU waiting, the baseline view on."""
    env = {
        "DJANGO_SETTINGS_MODULE": "nebula_site.settings",
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{database}",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DEBUG": "false",
        "NEBULA_SIM_TIME_SCALE": "0",
        "NEBULA_BENCH_BASELINE": "true",
        "NEBULA_STANDALONE": "false",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    return {**os.environ, **env}


def prepare_data() -> tuple[int, str]:
    """Migrate the fresh database; a user, a key with the highest limits, a model with room for
    every request at once. Returns (key id, secret)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from infra.redis_client import get_redis
    from keys.access import SYSTEM
    from keys.services import key_create
    from models_registry.services import model_seed_ready

    client = get_redis()
    client.ping()
    client.flushdb()  # our own database (see DEFAULT_REDIS_URL), never FLUSHALL
    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user("bench")
    model_seed_ready(
        owner=user,
        name=MODEL,
        params_billions=7,
        gpu_type="H100-80GB",
        replicas=64,
        max_concurrent_seqs=1024,
    )
    created = key_create(actor=SYSTEM, owner=user, name="bench", rpm_limit=MAX_RPM)
    return created.key.pk, created.secret


# --- scenarios -------------------------------------------------------------------------------


def wrk_pair(
    stack: Stack, secret: str, *, connections: int, seconds: float, cpus: str | None
) -> dict[str, Any]:
    """The baseline and the completion endpoint under the same load, back to back. Both get the
    same POST body and headers, so the difference is what Nebula does with them. Next to each
    wrk summary: CPU milliseconds per request of each server process, which drifts far less
    than latency when the machine is shared."""
    body = json.dumps(completion_body())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    script = lua_script(method="POST", headers=headers, body=body)
    out: dict[str, Any] = {}
    for name, path in (("baseline", "/bench/baseline"), ("nebula", "/v1/chat/completions")):
        before = {proc.name: cpu_seconds(proc.pid) for proc in stack.procs}
        result = run_wrk(
            stack.url + path, connections=connections, seconds=seconds, script=script, cpus=cpus
        )
        out[name] = result.as_dict()
        out[name]["cpu_ms_per_request"] = {
            proc.name: round(
                (cpu_seconds(proc.pid) - before[proc.name]) * 1000 / max(result.requests, 1), 3
            )
            for proc in stack.procs
        }
    return out


async def alternating(stack: Stack, secret: str, *, seconds: float) -> dict[str, Any]:
    """Concurrency 1: one request at a time on one keep-alive connection, each sent as soon as
    the last one is answered (as wrk -c1 does), switching between the baseline view and the
    completion endpoint every half second. Drift on a shared machine (other jobs come and go
    within seconds) then lands in both columns alike instead of in the difference, as it did
    with two separate wrk runs. Blocks rather than strict alternation, so each request still
    pays for what the one before it left running (as it would back to back), not for the
    other endpoint's leftovers."""
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    body = completion_body()
    connection = Connection("127.0.0.1", stack.port)
    latency: dict[str, list[float]] = {"baseline": [], "nebula": []}
    failed = {"baseline": 0, "nebula": 0}
    paths = (("baseline", "/bench/baseline"), ("nebula", "/v1/chat/completions"))
    block = 0.5
    try:
        for _, path in paths:  # warm-up
            for _ in range(100):
                await request(connection, path, headers, body)
        for _ in range(max(1, round(seconds / block))):
            for name, path in paths:
                first, until = True, time.perf_counter() + block
                while time.perf_counter() < until:
                    result = await request(connection, path, headers, body)
                    if first:  # it followed the other endpoint's block
                        first = False
                        continue
                    if result.status == 200 and result.error is None:
                        latency[name].append((result.ended - result.started) * 1000)
                    else:
                        failed[name] += 1
    finally:
        await connection.close()
    return {
        name: {**summarize(samples), "failed": failed[name]} for name, samples in latency.items()
    }


async def streaming(
    stack: Stack,
    secret: str,
    *,
    streams: int,
    rounds: int,
    probes: int,
    stream_tokens: int = STREAM_TOKENS,
    server_side: bool = True,
) -> dict[str, Any]:
    """Rounds of `streams` streams started at once, after the same rounds against the baseline
    view; before that, `probes` single requests of each, one at a time (the idle system).
    `server_side`: read where the streams waited from their usage records, which only this
    process's database has (not an earlier commit's stack, `--compare`)."""
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    path, baseline = "/v1/chat/completions", "/bench/baseline"
    client = Client("127.0.0.1", stack.port, streams)
    single = Connection("127.0.0.1", stack.port)
    out: dict[str, Any] = {"streams": streams, "rounds": rounds, "tokens_per_stream": stream_tokens}
    try:
        # One stream at a time, alternating with the baseline: what the gateway adds before
        # the first token when nothing else is going on.
        idle: dict[str, list[float]] = {"baseline": [], "nebula": []}
        for index in range(probes * 2 + 2):
            which = "baseline" if index % 2 == 0 else "nebula"
            url = baseline if which == "baseline" else path
            result = await request(
                single, url, headers, stream_body(900_000 + index, stream_tokens)
            )
            if index >= 2 and result.status == 200 and result.ttft_ms is not None:
                idle[which].append(result.ttft_ms)  # the first pair warms up
        out["idle_baseline_ttfb_ms"] = summarize(idle["baseline"])
        out["idle_nebula_ttft_ms"] = summarize(idle["nebula"])

        # The same burst to the baseline view: its first bytes are the floor under any first
        # token when `streams` requests arrive together. The first round opens the connections.
        bodies = [stream_body(i, stream_tokens) for i in range(streams)]
        await client.round(baseline, headers, bodies)
        ttfb: list[float] = []
        for _ in range(rounds):
            base, _ = await client.round(baseline, headers, bodies)
            ttfb += [r.ttft_ms for r in base if r.ttft_ms is not None and r.status == 200]
        out["baseline_ttfb_ms"] = summarize(ttfb)

        results, expected, walls = await bursts(
            client, headers, streams=streams, rounds=rounds, stream_tokens=stream_tokens
        )
    finally:
        await client.close()
        await single.close()

    out.update(check_streams(results, expected, stream_tokens=stream_tokens))
    if server_side:
        out["server"] = await asyncio.to_thread(server_timings, results)
    out.update(wall_seconds=sum(walls), tokens_per_second=out["tokens_delivered"] / sum(walls))
    return out


async def bursts(
    client: Client, headers: dict[str, str], *, streams: int, rounds: int, stream_tokens: int
) -> tuple[list[StreamResult], list[str | None], list[float]]:
    """A warm-up round, then `rounds` rounds of `streams` streams started at once, each after
    the same requests without streaming (the texts the streams must add up to). Returns the
    rounds' results, their expected texts and each round's wall time."""
    path = "/v1/chat/completions"
    await client.round(
        path, headers, [stream_body(100_000 + i, stream_tokens) for i in range(streams)]
    )
    results: list[StreamResult] = []
    expected: list[str | None] = []
    walls: list[float] = []
    for index in range(rounds):
        bodies = [stream_body(index * streams + i, stream_tokens) for i in range(streams)]
        expected += await client.texts(path, headers, bodies)
        batch, wall = await client.round(path, headers, bodies)
        results += batch
        walls.append(wall)
    return results, expected, walls


def scale_out(
    *,
    env: dict[str, str],
    port: int,
    log_dir: Path,
    secret: str,
    layouts: list[Layout],
    seconds: float,
    streams: int,
    rounds: int,
    stream_tokens: int,
    say: Any,
) -> list[dict[str, Any]]:
    """Scenario 6: each layout in turn, behind HAProxy, unpinned (there are more processes
    than cores): non-streaming throughput at concurrency 50 with the cores the stack kept busy
    meanwhile, then bursts of streams (time to first token, tokens/s, every stream checked)."""
    body = json.dumps(completion_body())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    script = lua_script(method="POST", headers=headers, body=body)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out: list[dict[str, Any]] = []
    for layout in layouts:
        say(f"7. {layout.label}")
        stack = Stack(
            env=env,
            port=port,
            log_dir=log_dir / f"scale-{layout.key}",
            webs=layout.webs,
            workers=layout.workers,
            balancer=True,
        )
        try:
            stack.start()
            run_wrk(url, connections=50, seconds=2, script=script)  # warm every process
            before = sum(cpu_seconds(proc.pid) for proc in stack.procs)
            c50 = run_wrk(url, connections=50, seconds=seconds, script=script)
            used = sum(cpu_seconds(proc.pid) for proc in stack.procs) - before
            streamed = asyncio.run(
                scale_streams(stack, headers, streams=streams, rounds=rounds, tokens=stream_tokens)
            )
        finally:
            stack.stop()
        out.append(
            {
                "layout": layout.key,
                "label": layout.label,
                "cpus": os.cpu_count() or 1,
                "c50": c50.as_dict(),
                "cores_busy": cores_busy(used, c50.seconds),
                "streaming": streamed,
            }
        )
    return out


async def scale_streams(
    stack: Stack, headers: dict[str, str], *, streams: int, rounds: int, tokens: int
) -> dict[str, Any]:
    client = Client("127.0.0.1", stack.port, streams)
    try:
        results, expected, walls = await bursts(
            client, headers, streams=streams, rounds=rounds, stream_tokens=tokens
        )
    finally:
        await client.close()
    checked = check_streams(results, expected, stream_tokens=tokens)
    return {**checked, "tokens_per_second": checked["tokens_delivered"] / sum(walls)}


def check_streams(
    results: list[StreamResult], expected: list[str | None], *, stream_tokens: int
) -> dict[str, Any]:
    """Check every burst stream against its non-streaming answer; time to first token,
    inter-chunk gaps and tokens delivered over all of them."""
    from inference.engine import count_tokens

    ttft: list[float] = []
    gaps: list[float] = []
    delivered = broken = 0
    problems: list[str] = []
    for result, text in zip(results, expected, strict=True):
        check = check_stream(
            result.events,
            count_tokens=count_tokens,
            expected_tokens=stream_tokens,
            expected_text=text,
            expected_finish="length",
        )
        if result.status != 200 or result.error:
            check.problems.append(f"status {result.status} {result.error or ''}".strip())
        if text is None:
            check.problems.append("no non-streaming answer to compare with")
        if not check.ok:
            broken += 1
            problems += check.problems[:3]
        delivered += check.tokens
        if result.ttft_ms is not None:
            ttft.append(result.ttft_ms)
        gaps += result.gaps_ms()
    return {
        "ttft_ms": summarize(ttft),
        "inter_chunk_ms": summarize(gaps),
        "tokens_delivered": delivered,
        "streams_checked": len(results),
        "streams_broken": broken,
        "problems": problems[:20],
    }


def server_timings(results: list[StreamResult], wait: float = 15.0) -> dict[str, Any]:
    """Where the bursts' streams spent their time on the servers, from their usage records:
    from the web process enqueueing a job to a worker taking its GPU slot (`queue_ms`), and to
    the worker generating its first token (`ttft_ms`). The workers' ledger writes the records
    a moment after each stream ends, so wait for them."""
    from telemetry.models import UsageRecord

    ids = [rid for rid in map(stream_request_id, results) if rid is not None]
    deadline = time.monotonic() + wait
    while True:
        records = list(
            UsageRecord.objects.filter(request_id__in=ids).values_list("queue_ms", "ttft_ms")
        )
        if len(records) >= len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return {
        "records": len(records),
        "streams": len(ids),
        "queue_ms": summarize([q for q, _ in records if q is not None]),
        "first_token_ms": summarize([t for _, t in records if t is not None]),
    }


def stream_request_id(result: StreamResult) -> str | None:
    """The request id behind a stream: its chunks' id is `chatcmpl-` + the id without `req_`."""
    for event in result.events:
        try:
            chunk_id = json.loads(event).get("id", "")
        except (ValueError, AttributeError):
            continue
        if chunk_id.startswith("chatcmpl-"):
            return "req_" + chunk_id.removeprefix("chatcmpl-")
    return None


def memory(
    stack: Stack, secret: str, *, requests: int, cpus: str | None, rps_hint: float
) -> dict[str, Any]:
    """RSS of both servers before and after `requests` more completions (they are warm: every
    other scenario ran first)."""
    before = {"web": rss_kib(stack.web.pid), "worker": rss_kib(stack.worker.pid)}
    body = json.dumps(completion_body())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    script = lua_script(method="POST", headers=headers, body=body)
    done = errors = 0
    while done < requests:
        seconds = max(2.0, min(60.0, (requests - done) / max(rps_hint, 50.0) * 1.05))
        result = run_wrk(
            stack.url + "/v1/chat/completions",
            connections=50,
            seconds=seconds,
            script=script,
            cpus=cpus,
        )
        done += result.requests
        errors += result.errors
        rps_hint = result.rps or rps_hint
    after = {"web": rss_kib(stack.web.pid), "worker": rss_kib(stack.worker.pid)}
    return {
        "requests": done,
        "errors": errors,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "growth": {name: growth(before[name], after[name]) for name in before},
    }


# --- the run -----------------------------------------------------------------------------------


def rows_c1(s1: dict[str, Any]) -> list[Row]:
    b, n = s1["baseline"], s1["nebula"]
    added50, added99 = n["p50"] - b["p50"], n["p99"] - b["p99"]
    return [
        Row("1. c=1 latency p50 (ms)", fmt(b["p50"]), fmt(n["p50"]),
            f"{added50:+.2f} ms", "≤ +1.5 ms", added50 <= 1.5),
        Row("1. c=1 latency p99 (ms)", fmt(b["p99"]), fmt(n["p99"]),
            f"{added99:+.2f} ms", "≤ +10 ms", added99 <= 10),
        Row("1. c=1 requests measured / failed", f"{b['n']} / {b['failed']}",
            f"{n['n']} / {n['failed']}", "", "0 failed", b["failed"] + n["failed"] == 0),
    ]  # fmt: skip


def rows_c50(s2: dict[str, Any]) -> list[Row]:
    b, n = s2["baseline"], s2["nebula"]
    share = ratio(n["rps"], b["rps"]) or 0.0
    return [
        Row("2. c=50 requests/s", fmt(b["rps"], 0), fmt(n["rps"], 0),
            f"{share * 100:.1f}%", "≥ 70%", share >= 0.70),
        Row("2. c=50 latency p50 / p99 (ms)", f"{fmt(b['p50_ms'])} / {fmt(b['p99_ms'])}",
            f"{fmt(n['p50_ms'])} / {fmt(n['p99_ms'])}"),
        Row("2. c=50 CPU per request, web + worker (ms)",
            f"{fmt(b['cpu_ms_per_request']['web'], 3)} + "
            f"{fmt(b['cpu_ms_per_request']['worker'], 3)}",
            f"{fmt(n['cpu_ms_per_request']['web'], 3)} + "
            f"{fmt(n['cpu_ms_per_request']['worker'], 3)}"),
        Row("2. c=50 failed requests", str(b["errors"]), str(n["errors"]), "", "0",
            n["errors"] == 0 and b["errors"] == 0),
    ]  # fmt: skip


def rows_streaming(s3: dict[str, Any]) -> list[Row]:
    b, n = s3["baseline_ttfb_ms"], s3["ttft_ms"]
    over50, over99 = n["p50"] - b["p50"], n["p99"] - b["p99"]
    ib, inb = s3["idle_baseline_ttfb_ms"], s3["idle_nebula_ttft_ms"]
    idle50 = inb["p50"] - ib["p50"]
    gaps, streams = s3["inter_chunk_ms"], s3["streams"]
    # The default stream is 256 tokens; a run with `--stream-tokens` says so in its label.
    size = s3.get("tokens_per_stream", STREAM_TOKENS)
    noun = "token" if size == 1 else "tokens"
    at_once = f"{streams} at once" + ("" if size == STREAM_TOKENS else f" of {size} {noun}")
    return [
        Row(f"3. TTFT p50, {at_once} (ms; baseline: first byte)", fmt(b["p50"]),
            fmt(n["p50"]), f"{over50:+.2f} ms", "≤ +20 ms", over50 <= 20),
        Row(f"3. TTFT p99, {at_once} (ms)", fmt(b["p99"]), fmt(n["p99"]),
            f"{over99:+.2f} ms"),
        Row("3. TTFT p50, one stream at a time (ms)", fmt(ib["p50"]), fmt(inb["p50"]),
            f"{idle50:+.2f} ms"),
        *rows_server(s3),
        Row("3. inter-chunk p50 / p99 (ms)", "",
            f"{fmt(gaps.get('p50'))} / {fmt(gaps.get('p99'))}", "", "p99 ≤ 15 ms",
            gaps.get("p99") is not None and gaps["p99"] <= 15),
        Row("3. tokens/s delivered (aggregate)", "", fmt(s3["tokens_per_second"], 0), "",
            "≥ 20,000", s3["tokens_per_second"] >= 20_000),
        Row("3. streams whole and in order", "",
            f"{s3['streams_checked'] - s3['streams_broken']}/{s3['streams_checked']}", "",
            "all", s3["streams_broken"] == 0),
    ]  # fmt: skip


def rows_server(s3: dict[str, Any]) -> list[Row]:
    server = s3.get("server") or {}
    queue, first = server.get("queue_ms", {}), server.get("first_token_ms", {})
    if not queue.get("n"):
        return []
    return [
        Row("3. at once: enqueued → on a worker's GPU p50 / p90 (ms)", "",
            f"{fmt(queue['p50'])} / {fmt(queue['p90'])}",
            f"{server['records']}/{server['streams']} usage records"),
        Row("3. at once: enqueued → first token generated p50 / p90 (ms)", "",
            f"{fmt(first.get('p50'))} / {fmt(first.get('p90'))}"),
    ]  # fmt: skip


def rows_micro(s4: dict[str, Any]) -> list[Row]:
    return [
        Row("4. rate-limit check (µs per request)", f"PING {fmt(s4['ping_p50_us'], 0)}",
            fmt(s4["check_p50_us"], 0),
            f"script {s4['script_over_ping_p50_us']:+.0f}; "
            f"{fmt(s4['amortised_50_in_flight_us'], 0)} amortised at 50 in flight"),
        Row("4. key authentication (µs per request)", "", f"{fmt(s4['auth_cached_us'], 1)}",
            f"cache miss (database) {fmt(s4['auth_miss_p50_us'], 0)}"),
    ]  # fmt: skip


def rows_memory(s5: dict[str, Any]) -> list[Row]:
    rows = []
    for name in ("web", "worker"):
        before = s5["rss_kib_before"][name] / 1024
        after = s5["rss_kib_after"][name] / 1024
        change = s5["growth"][name]
        rows.append(
            Row(f"5. RSS {name} (MiB), {s5['requests']:,} requests", "",
                f"{before:.1f} → {after:.1f}", f"{change * 100:+.1f}%", "≤ +10%",
                change <= 0.10)
        )  # fmt: skip
    return rows


ROWS = {"c1": rows_c1, "c50": rows_c50, "streaming": rows_streaming, "micro": rows_micro}
ROWS["memory"] = rows_memory
ROWS["upstream"] = rows_upstream


def build_rows(results: dict[str, Any]) -> list[Row]:
    return [row for name, build in ROWS.items() if name in results for row in build(results[name])]


def engine_scenarios(
    stack: Stack,
    secret: str,
    args: argparse.Namespace,
    *,
    only: set[str],
    workdir: Path,
    load_cpus: str | None,
    say: Any,
) -> dict[str, Any]:
    """Scenarios 6 and 8, in front of the test engine (in a process of its own): Nebula
    against the engine called directly (6, bench/upstream.py), then LiteLLM's proxy next to
    both (8, bench/peer.py)."""
    from tests.support.upstream import EngineProcess

    out: dict[str, Any] = {}
    engine = EngineProcess(int(os.environ.get("NEBULA_BENCH_ENGINE_PORT") or free_port(*PORTS)))
    try:
        engine_deploy(engine.url)
        if "6" in only:
            say(f"6. in front of an engine: direct and through Nebula ({args.seconds:g} s a side)")
            out["upstream"] = asyncio.run(
                upstream_overhead(
                    nebula_port=stack.port,
                    engine_port=engine.port,
                    secret=secret,
                    seconds=args.seconds,
                    streams=args.engine_streams,
                    rounds=args.engine_rounds,
                )
            )
        if "8" in only:
            out["peer"] = peer_scenario(
                stack, secret, args, engine_port=engine.port, workdir=workdir,
                load_cpus=load_cpus, say=say,
            )  # fmt: skip
    finally:
        engine.kill()
    return out


def peer_scenario(
    stack: Stack,
    secret: str,
    args: argparse.Namespace,
    *,
    engine_port: int,
    workdir: Path,
    load_cpus: str | None,
    say: Any,
) -> dict[str, Any]:
    """Scenario 8: the engine directly, through Nebula and through LiteLLM, on the same
    requests. LiteLLM is installed on first use; when it cannot be, or does not start, the
    result says why."""
    out: dict[str, Any] = {
        "peer": f"LiteLLM {peer.LITELLM_VERSION}",
        "tokens": peer.TOKENS,
        "streams": args.peer_streams,
        "rounds": args.peer_rounds,
        "stream_tokens": args.peer_stream_tokens,
    }
    say(f"8. LiteLLM {peer.LITELLM_VERSION}: installing it if needed, starting it")
    master_key = "sk-bench-" + secrets.token_urlsafe(16)
    config = workdir / "litellm" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        peer.config_yaml(api_base=f"http://127.0.0.1:{engine_port}", master_key=master_key)
    )
    port = int(
        os.environ.get("NEBULA_BENCH_PEER_PORT")
        or free_port(*PORTS, taken={stack.port, engine_port})
    )
    try:
        binary = peer.ensure_litellm(timeout=args.peer_install_timeout)
        log = workdir / "logs" / "litellm.log"
        proxy = peer.LiteLLM(binary=binary, config=config, port=port, log=log)
        proxy.start()
    except peer.PeerUnavailable as error:
        say(f"8. LiteLLM unavailable: {error}")
        return {**out, "unavailable": str(error)}
    try:
        sides = peer.targets(
            engine_port=engine_port, nebula_port=stack.port, nebula_secret=secret,
            litellm_port=port, master_key=master_key,
        )  # fmt: skip
        say(f"8. concurrency 1, engine / Nebula / LiteLLM alternating ({args.seconds:g} s each)")
        c1 = asyncio.run(peer.concurrency_one(sides, seconds=args.seconds))
        say("8. concurrency 50 (wrk), each in turn")
        c50 = peer.concurrency_fifty(sides, seconds=args.seconds, cpus=load_cpus)
        say(f"8. {args.peer_rounds} x {args.peer_streams} streams at once, taking turns")
        burst = asyncio.run(
            peer.bursts(
                sides, streams=args.peer_streams, rounds=args.peer_rounds,
                tokens=args.peer_stream_tokens,
            )
        )  # fmt: skip
    except (RuntimeError, OSError, ValueError) as error:
        # wrk or a client failing on the peer's side ends the scenario, not the run.
        say(f"8. LiteLLM scenario failed: {gist(error)}")
        return {**out, "unavailable": f"failed while measuring: {gist(error)}"}
    finally:
        proxy.stop()
    return {**out, "sides": peer.merge(c1, c50, burst)}


def previous_scenarios(
    args: argparse.Namespace,
    *,
    env: dict[str, str],
    port: int,
    workdir: Path,
    pins: tuple[str | None, str | None, str | None],
    only: set[str],
    say: Any,
) -> dict[str, Any]:
    """`--compare REV`: scenarios 1-3 (those asked for) against REV's stack, checked out into
    the bench cache and started the same way. Anything that keeps REV from starting is
    reported in the result, not raised."""
    web_cpus, worker_cpus, load_cpus = pins
    out: dict[str, Any] = {"rev": args.compare}
    try:
        sha = compare.resolve(args.compare)
        out["commit"] = sha
        say(f"previous: {args.compare} ({sha[:10]}): checking it out, preparing its data")
        path = compare.checkout(sha)
        their_env = {**env, "DATABASE_URL": f"sqlite:///{workdir / 'previous.sqlite3'}"}
        _, secret = compare.prepare(path, their_env)
        stack = Stack(
            env=their_env, port=port, log_dir=workdir / "logs" / "previous",
            web_cpus=web_cpus, worker_cpus=worker_cpus, root=path,
        )  # fmt: skip
        try:
            try:
                stack.start()
            except RuntimeError as error:
                raise compare.Unavailable(f"its stack did not start: {gist(error)}") from error
            results: dict[str, Any] = {}
            say("previous: warming up")
            wrk_pair(stack, secret, connections=50, seconds=3, cpus=load_cpus)
            if "1" in only:
                say("previous: 1. concurrency 1")
                results["c1"] = asyncio.run(alternating(stack, secret, seconds=args.seconds))
            if "2" in only:
                say("previous: 2. concurrency 50")
                results["c50"] = wrk_pair(
                    stack, secret, connections=50, seconds=args.seconds, cpus=load_cpus
                )
            if "3" in only:
                say(f"previous: 3. {args.rounds} x {args.streams} concurrent streams")
                results["streaming"] = asyncio.run(
                    streaming(
                        stack, secret, streams=args.streams, rounds=args.rounds,
                        probes=args.probes, stream_tokens=args.stream_tokens, server_side=False,
                    )
                )  # fmt: skip
        except (RuntimeError, OSError, ValueError) as error:
            # An older commit that answers differently ends its part, not the run.
            raise compare.Unavailable(f"failed while measuring: {gist(error)}") from error
        finally:
            stack.stop()
    except compare.Unavailable as error:
        say(f"previous: {args.compare} unavailable: {error}")
        return {**out, "unavailable": str(error)}
    return {**out, "results": results}


def gist(error: Exception) -> str:
    """First and last line of a failure: what failed, and the log line that says why."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"


def previous_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | str:
    """The previous commit's table (columns, cells), or the line saying why there is none."""
    previous = results["previous"]
    label = f"previous ({previous.get('commit', '')[:7] or previous['rev']})"
    if "unavailable" in previous:
        return f"{label} unavailable: {previous['unavailable']}"
    return columns("Nebula", label), cells(previous_figures(results, previous["results"]))


def peer_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]] | str:
    """Scenario 8's table (columns, cells), or the line saying why there is none."""
    result = results["peer"]
    if "unavailable" in result:
        return f"LiteLLM unavailable: {result['unavailable']}"
    return (
        columns("Nebula", result["peer"], baseline="Engine direct"),
        cells(peer_figures(result)),
    )


def print_table(table: tuple[list[str], list[list[str]]] | str) -> str:
    """Print a side-by-side table (or the line that stands for it); its Markdown for the JSON."""
    if isinstance(table, str):
        print(table)
        return table
    print(render_table(*table))
    return markdown_table(*table)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers to cores")
    parser.add_argument("--seconds", type=float, default=10.0, help="per side (scenarios 1, 2)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams (3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of streams (3)")
    parser.add_argument("--probes", type=int, default=100, help="single streams (3)")
    parser.add_argument(
        "--stream-tokens",
        type=int,
        default=STREAM_TOKENS,
        help="tokens per stream (3); 1 leaves almost only the job's intake on the worker",
    )
    parser.add_argument("--requests", type=int, default=20_000, help="memory scenario (5)")
    parser.add_argument("--engine-streams", type=int, default=32, help="streams at once (6)")
    parser.add_argument("--engine-rounds", type=int, default=5, help="rounds of streams (6)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8", help="scenarios to run, e.g. 1,2")
    parser.add_argument(
        "--layouts",
        default=DEFAULT_LAYOUTS,
        help="scale-out layouts (7), WEBSxWORKERS, e.g. 1x1,2x4",
    )
    parser.add_argument(
        "--scale-streams", type=int, default=100, help="concurrent streams per burst (7)"
    )
    parser.add_argument("--scale-rounds", type=int, default=3, help="bursts per layout (7)")
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run scenarios 1-3 on commit REV's stack, checked out into .cache/bench",
    )
    parser.add_argument("--peer-streams", type=int, default=100, help="streams at once (8)")
    parser.add_argument("--peer-rounds", type=int, default=3, help="bursts per side (8)")
    parser.add_argument(
        "--peer-stream-tokens", type=int, default=peer.STREAM_TOKENS, help="tokens a stream (8)"
    )
    parser.add_argument(
        "--peer-install-timeout",
        type=float,
        default=1200,
        help="seconds LiteLLM's first install may take (8)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and server logs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    try:
        layouts = parse_layouts(args.layouts)
    except ValueError as error:
        parser.error(str(error))

    started = time.time()
    redis_url = os.environ.get("NEBULA_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    port = int(os.environ.get("NEBULA_BENCH_PORT") or free_port(*PORTS))
    workdir = Path(tempfile.mkdtemp(prefix="nebula-bench-"))
    env = configure(redis_url, workdir / "bench.sqlite3")
    key_id, secret = prepare_data()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health poll otherwise
    web_cpus, worker_cpus, load_cpus = pinning(os.cpu_count() or 1, not args.no_pin)
    stack = Stack(
        env=env, port=port, log_dir=workdir / "logs", web_cpus=web_cpus, worker_cpus=worker_cpus
    )
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    cpus_seen: dict[str, str] = {}

    def say(text: str) -> None:
        print(f"  [{time.time() - started:5.0f}s] {text}", flush=True)

    print(f"Nebula benchmark: servers on port {port}, Redis {redis_url}, logs in {workdir}/logs")
    try:
        if only & {"1", "2", "3", "4", "5", "6", "8"}:
            stack.start()
            cpus_seen = {p.name: allowed_cpus(p.pid) for p in stack.procs}
        if only & {"1", "2", "5"}:  # the wrk scenarios (6 warms up its own way)
            say("warming up")
            wrk_pair(stack, secret, connections=50, seconds=3, cpus=load_cpus)
        if "1" in only:
            say("1. non-streaming, concurrency 1 (baseline and completion alternating)")
            results["c1"] = asyncio.run(alternating(stack, secret, seconds=args.seconds))
        if "2" in only:
            say("2. non-streaming, concurrency 50")
            results["c50"] = wrk_pair(
                stack, secret, connections=50, seconds=args.seconds, cpus=load_cpus
            )
        if "3" in only:
            say(
                f"3. {args.rounds} x {args.streams} concurrent streams of "
                f"{args.stream_tokens} tokens"
            )
            results["streaming"] = asyncio.run(
                streaming(
                    stack,
                    secret,
                    streams=args.streams,
                    rounds=args.rounds,
                    probes=args.probes,
                    stream_tokens=args.stream_tokens,
                )
            )
        if "4" in only:
            say("4. rate-limit check and key authentication (in-process)")
            limits = asyncio.run(micro.ratelimit_cost(key_id=key_id, rpm_limit=MAX_RPM))
            auth = asyncio.run(micro.auth_cost(secret=secret))
            results["micro"] = {**limits, **{f"auth_{k}": v for k, v in auth.items()}}
        if "5" in only:
            say(f"5. memory over {args.requests:,} requests")
            rps = results.get("c50", {}).get("nebula", {}).get("rps", 300.0)
            results["memory"] = memory(
                stack, secret, requests=args.requests, cpus=load_cpus, rps_hint=rps
            )
        if only & {"6", "8"}:
            results.update(
                engine_scenarios(
                    stack, secret, args, only=only, workdir=workdir, load_cpus=load_cpus, say=say
                )
            )
        stack.stop()
        if "7" in only:
            results["scale"] = scale_out(
                env=env,
                port=port,
                log_dir=workdir / "logs",
                secret=secret,
                layouts=layouts,
                seconds=args.seconds,
                streams=args.scale_streams,
                rounds=args.scale_rounds,
                stream_tokens=args.stream_tokens,
                say=say,
            )
        if args.compare:
            # Last: its preparation empties the Redis database this commit's stack used.
            results["previous"] = previous_scenarios(
                args,
                env=env,
                port=port,
                workdir=workdir,
                pins=(web_cpus, worker_cpus, load_cpus),
                only=only & {"1", "2", "3"},
                say=say,
            )
    except BaseException:
        print(f"the benchmark failed; server logs are in {workdir}/logs", file=sys.stderr)
        raise
    finally:
        stack.stop()

    rows = build_rows(results)
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "pinned": {"web": web_cpus, "worker": worker_cpus, "load_generator": load_cpus},
        "allowed_cpus": cpus_seen,
        "worker_concurrency": stack.worker_concurrency,
        "completion_tokens": COMPLETION_TOKENS,
        "seconds": round(time.time() - started, 1),
    }
    pin_note = (
        f"web process pinned to CPU {web_cpus}, worker to CPU {worker_cpus}; load generators "
        f"on {load_cpus or 'any CPU'}; Redis not pinned"
        if web_cpus is not None
        else "nothing pinned"
    ) + (" (scenarios 1-6; 7 is never pinned)" if "scale" in results else "")
    header = [
        f"Nebula benchmark, {meta['date']}, commit {meta['commit']}, {meta['cpus']} CPUs, "
        f"load {meta['load_average_before'][0]} → {meta['load_average_after'][0]}, "
        f"{meta['seconds']:.0f} s",
        pin_note,
    ]
    print()
    print(render(rows, header) if rows else "\n".join(header[:1]))
    document = {
        "meta": meta,
        "results": results,
        "table": [row.as_dict() for row in rows],
        "markdown": markdown(rows),
    }
    if "scale" in results:
        scale = scale_cells(results["scale"])
        streams = results["scale"][0]["streaming"]["streams_checked"] // max(args.scale_rounds, 1)
        print()
        bursts_said = "1 burst" if args.scale_rounds == 1 else f"{args.scale_rounds} bursts"
        print(
            f"7. Scale-out, everything behind HAProxy, nothing pinned; c=50 non-streaming for "
            f"{args.seconds:g} s, then {bursts_said} of {streams} streams of "
            f"{args.stream_tokens} tokens at once"
        )
        print(render_table(SCALE_COLUMNS, scale))
        document["scale_markdown"] = markdown_table(SCALE_COLUMNS, scale)
    if "peer" in results:
        print()
        print(
            f"8. The same requests to the test engine directly, through Nebula and through "
            f"{results['peer']['peer']} (one worker process, --num_workers 1, not pinned)"
        )
        document["peer_markdown"] = print_table(peer_table(results))
        for name, side in results["peer"].get("sides", {}).items():
            if side.get("problems"):
                print(f"  {name}: {'; '.join(side['problems'])}")
    if "previous" in results:
        print()
        print(
            f"Against {results['previous']['rev']}: its stack started the same way from "
            f"{compare.CACHE.relative_to(ROOT)}, right after this commit's scenarios"
        )
        document["previous_markdown"] = print_table(previous_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in ("latest.json", f"{stamp}.json"):
        (args.out / name).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten to {args.out / 'latest.json'} and {args.out / (stamp + '.json')}")
    if args.keep:
        print(f"database and server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
