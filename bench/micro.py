"""In-process micro-benchmarks of two hot-path steps, against the benchmark's real Redis and
database: the rate-limit check (the admission script without a job) and key authentication.

Needs Django set up (the caller does it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.stats import percentile


async def _timed_us(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def ratelimit_cost(*, key_id: int, rpm_limit: int, n: int = 3000) -> dict[str, float]:
    """Microseconds per rate-limit check, as the web process pays it (one script round trip),
    next to a bare PING round trip on the same connection pool, and amortised over 50 checks in
    flight at once (what it costs when the event loop pipelines many requests)."""
    from inference.admission import admit
    from infra.epoch import EPOCH_KEY
    from infra.redis_client import get_async_redis

    client = get_async_redis()
    # A first call mints the epoch if Redis has none; then every check is a real one.
    probe = await admit(client, key_id=key_id, expected_epoch=None, rpm_limit=rpm_limit)
    raw = await client.get(EPOCH_KEY)
    epoch = raw.decode() if isinstance(raw, bytes) else probe.epoch

    async def check() -> None:
        admission = await admit(client, key_id=key_id, expected_epoch=epoch, rpm_limit=rpm_limit)
        if admission.status != "ok":
            raise RuntimeError(f"rate-limit check refused: {admission.status}")

    await _timed_us(check, 200)  # warm the pool and the script cache
    ping = await _timed_us(client.ping, n)
    checks = await _timed_us(check, n)
    batch = 50
    started = time.perf_counter()
    for _ in range(n // batch):
        await asyncio.gather(*(check() for _ in range(batch)))
    amortised = (time.perf_counter() - started) * 1e6 / (n // batch * batch)
    return {
        "check_p50_us": percentile(checks, 50),
        "check_p99_us": percentile(checks, 99),
        "ping_p50_us": percentile(ping, 50),
        "script_over_ping_p50_us": percentile(checks, 50) - percentile(ping, 50),
        "amortised_50_in_flight_us": amortised,
    }


async def auth_cost(*, secret: str, n: int = 20000, misses: int = 300) -> dict[str, float]:
    """Microseconds to authenticate a bearer header on the hot path: the checksum, the digest
    and the process cache (the every-request cost), and on a cache miss (a database read, once
    per key per process and after every key or model change)."""
    from infra.epoch import observe_epoch
    from keys.auth import _keys_by_digest, key_info_for_secret, parse_bearer

    observe_epoch(f"bench-{time.monotonic_ns()}")
    header = f"Bearer {secret}"

    async def authenticate() -> None:
        info, _ = await key_info_for_secret(parse_bearer(header))
        if info is None:
            raise RuntimeError("the benchmark key did not authenticate")

    await authenticate()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n // 5):
            await authenticate()
        rounds.append((time.perf_counter() - started) * 1e6 / (n // 5))

    async def cold() -> None:
        _keys_by_digest.clear()
        await authenticate()

    cold_samples = await _timed_us(cold, misses)
    return {
        "cached_us": percentile(rounds, 50),
        "miss_p50_us": percentile(cold_samples, 50),
        "miss_p99_us": percentile(cold_samples, 99),
    }
