"""Scenario 6: what Nebula adds in front of a real engine. The test engine
(tests/support/upstream.py, in a process of its own) is called directly and through Nebula (a
deployment with the openai-compatible backend), in the same run, alternating, with the same
request; the difference is Nebula's gateway, queue, worker relay and reply stream.

The engine answers at once (no simulated GPU time), so the figures are Nebula's overhead, not
a model's speed; with a real engine its generation time comes on top of both columns alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.http1 import Connection
from bench.report import Row, fmt
from bench.stats import summarize
from bench.streams import Client, StreamResult, request

MODEL = "bench-upstream"
ENGINE_MODEL = "test-upstream-model"
TOKENS = 16


def engine_deploy(engine_url: str) -> None:
    """The deployment Nebula serves from the engine (ready at once; no probe needed)."""
    from models_registry.services import model_seed_ready

    model_seed_ready(
        owner=None,
        name=MODEL,
        backend="openai-compatible",
        upstream_urls=[engine_url],
        upstream_model=ENGINE_MODEL,
        max_concurrent_seqs=1024,
    )


def _body(model: str, *, stream: bool, tokens: int = TOKENS) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Hello engine [[tokens={tokens}]]"}],
        "max_tokens": tokens,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _ok(result: StreamResult) -> bool:
    return result.status == 200 and result.error is None


async def upstream_overhead(
    *, nebula_port: int, engine_port: int, secret: str, seconds: float, streams: int, rounds: int
) -> dict[str, Any]:
    path = "/v1/chat/completions"
    sides = {
        "direct": (engine_port, {"Content-Type": "application/json"}, ENGINE_MODEL),
        "nebula": (
            nebula_port,
            {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
            MODEL,
        ),
    }
    connections = {name: Connection("127.0.0.1", port) for name, (port, _, _) in sides.items()}
    latency: dict[str, list[float]] = {"direct": [], "nebula": []}
    ttft: dict[str, list[float]] = {"direct": [], "nebula": []}
    failed = {"direct": 0, "nebula": 0}
    out: dict[str, Any] = {"tokens": TOKENS, "streams": streams, "rounds": rounds}
    try:
        for name, (_, headers, model) in sides.items():  # warm-up
            for stream in (False, True):
                for _ in range(20):
                    await request(connections[name], path, headers, _body(model, stream=stream))
        # Concurrency 1, alternating half-second blocks (as scenario 1): non-streaming latency
        # and streaming time to first token.
        block = 0.5
        for _ in range(max(1, round(seconds / block / 2))):
            for stream, samples in ((False, latency), (True, ttft)):
                for name, (_, headers, model) in sides.items():
                    until = time.perf_counter() + block
                    while time.perf_counter() < until:
                        result = await request(
                            connections[name], path, headers, _body(model, stream=stream)
                        )
                        if not _ok(result):
                            failed[name] += 1
                        elif stream and result.ttft_ms is not None:
                            samples[name].append(result.ttft_ms)
                        elif not stream:
                            samples[name].append((result.ended - result.started) * 1000)
        out["c1_latency_ms"] = {name: summarize(v) for name, v in latency.items()}
        out["c1_ttft_ms"] = {name: summarize(v) for name, v in ttft.items()}
        # `streams` streams at once, rounds alternating between the sides.
        burst: dict[str, dict[str, list[float]]] = {
            name: {"ttft": [], "wall": []} for name in sides
        }
        clients = {name: Client("127.0.0.1", port, streams) for name, (port, _, _) in sides.items()}
        try:
            for index in range(rounds + 1):
                for name, (_, headers, model) in sides.items():
                    bodies = [_body(model, stream=True, tokens=64) for _ in range(streams)]
                    results, wall = await clients[name].round(path, headers, bodies)
                    if index == 0:
                        continue  # opens the connections
                    failed[name] += sum(1 for r in results if not _ok(r))
                    burst[name]["ttft"] += [r.ttft_ms for r in results if r.ttft_ms is not None]
                    burst[name]["wall"].append(wall * 1000)
        finally:
            await asyncio.gather(*(client.close() for client in clients.values()))
        out["burst_ttft_ms"] = {name: summarize(b["ttft"]) for name, b in burst.items()}
        out["burst_wall_ms"] = {name: summarize(b["wall"]) for name, b in burst.items()}
    finally:
        await asyncio.gather(*(connection.close() for connection in connections.values()))
    out["failed"] = failed
    return out


def rows_upstream(s6: dict[str, Any]) -> list[Row]:
    lat, first = s6["c1_latency_ms"], s6["c1_ttft_ms"]
    burst, wall = s6["burst_ttft_ms"], s6["burst_wall_ms"]
    failed = s6["failed"]

    def added(table: dict[str, Any], key: str) -> str:
        direct, nebula = table["direct"].get(key), table["nebula"].get(key)
        return "" if direct is None or nebula is None else f"{nebula - direct:+.2f} ms"

    return [
        Row(f"6. engine c=1, {s6['tokens']} tokens: latency p50 (ms; direct → Nebula)",
            fmt(lat["direct"].get("p50")), fmt(lat["nebula"].get("p50")), added(lat, "p50")),
        Row("6. engine c=1: latency p99 (ms)", fmt(lat["direct"].get("p99")),
            fmt(lat["nebula"].get("p99")), added(lat, "p99")),
        Row("6. engine c=1: stream TTFT p50 (ms)", fmt(first["direct"].get("p50")),
            fmt(first["nebula"].get("p50")), added(first, "p50")),
        Row(f"6. engine {s6['streams']} streams at once: TTFT p50 (ms)",
            fmt(burst["direct"].get("p50")), fmt(burst["nebula"].get("p50")), added(burst, "p50")),
        Row(f"6. engine {s6['streams']} streams of 64 tokens: wall p50 (ms)",
            fmt(wall["direct"].get("p50")), fmt(wall["nebula"].get("p50")), added(wall, "p50")),
        Row("6. engine failed requests", str(failed["direct"]), str(failed["nebula"]), "", "0",
            failed["direct"] + failed["nebula"] == 0),
    ]  # fmt: skip
