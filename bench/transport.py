"""Which Redis transport carries tokens from workers to web processes?

Compares Channels' Redis layer (what a Channels app would use) with plain Redis pub/sub on one
subscribed connection per web process (what Nebula uses), for the pattern that matters: a worker
thread sending small messages for one request, a web process's event loop receiving them.

    .venv/bin/python -m bench.transport [--messages 5000] [--redis redis://127.0.0.1:6379/11]

Reports the sender's cost per message and the median and p99 one-way latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis


def _summary(name: str, send_seconds: float, latencies: list[float], count: int) -> dict[str, Any]:
    latencies.sort()
    return {
        "transport": name,
        "messages": count,
        "send_us_per_message": round(send_seconds / count * 1e6, 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "received": len(latencies),
    }


async def _pubsub(url: str, count: int) -> dict[str, Any]:
    channel = f"bench:reply:{uuid.uuid4().hex}"
    receiver = aioredis.Redis.from_url(url)
    pubsub = receiver.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    sender = redis.Redis.from_url(url)
    elapsed: list[float] = []

    def send() -> None:
        started = time.perf_counter()
        for index in range(count):
            sender.publish(channel, orjson.dumps({"r": "req", "seq": index, "t": time.time()}))
        elapsed.append(time.perf_counter() - started)

    thread = threading.Thread(target=send)
    latencies: list[float] = []
    thread.start()
    while len(latencies) < count:
        message = await pubsub.get_message(timeout=5)
        if message is None:
            break
        if message["type"] == "message":
            latencies.append(time.time() - orjson.loads(message["data"])["t"])
    thread.join()
    await pubsub.aclose()
    await receiver.aclose()
    return _summary("redis pub/sub (Nebula)", elapsed[0], latencies, count)


async def _channels(url: str, count: int, *, group: bool) -> dict[str, Any]:
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[url], capacity=count + 100, expiry=60)
    channel = await layer.new_channel()
    group_name = f"bench-{uuid.uuid4().hex}"
    if group:
        await layer.group_add(group_name, channel)
    sender_layer = RedisChannelLayer(hosts=[url], capacity=count + 100, expiry=60)

    async def send_async(message: dict[str, Any]) -> None:
        if group:
            await sender_layer.group_send(group_name, message)
        else:
            await sender_layer.send(channel, message)

    # A worker is a plain thread, so each send crosses into asyncio the way Channels documents.
    send_one: Callable[[dict[str, Any]], Any] = async_to_sync(send_async)
    elapsed: list[float] = []

    def send() -> None:
        started = time.perf_counter()
        for index in range(count):
            send_one({"type": "tokens", "seq": index, "t": time.time()})
        elapsed.append(time.perf_counter() - started)

    thread = threading.Thread(target=send)
    latencies: list[float] = []
    thread.start()
    while len(latencies) < count:
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        except TimeoutError:
            break
        latencies.append(time.time() - message["t"])
    thread.join()
    await layer.flush()
    name = "channels-redis group_send" if group else "channels-redis send"
    return _summary(name, elapsed[0], latencies, count)


async def _channels_from_a_loop(url: str, count: int) -> dict[str, Any]:
    """The layer's best case: the sender already runs an event loop (no async_to_sync)."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[url], capacity=count + 100, expiry=60)
    channel = await layer.new_channel()
    started = time.perf_counter()
    for index in range(count):
        await layer.send(channel, {"type": "tokens", "seq": index, "t": time.time()})
    elapsed = time.perf_counter() - started
    received = [await layer.receive(channel) for _ in range(count)]
    await layer.flush()
    # Sent before any was received, so latency says nothing here; only the send cost does.
    row = _summary("channels-redis send, async", elapsed, [0.0] * len(received), count)
    row["latency_p50_ms"] = row["latency_p99_ms"] = "n/a"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    results = [
        asyncio.run(_pubsub(args.redis, args.messages)),
        asyncio.run(_channels(args.redis, args.messages, group=False)),
        asyncio.run(_channels(args.redis, args.messages, group=True)),
        asyncio.run(_channels_from_a_loop(args.redis, args.messages)),
    ]
    header = f"{'transport':28} {'send µs/msg':>12} {'p50 ms':>9} {'p99 ms':>9} {'received':>9}"
    print(header)
    for row in results:
        print(
            f"{row['transport']:28} {row['send_us_per_message']:>12} {row['latency_p50_ms']:>9} "
            f"{row['latency_p99_ms']:>9} {row['received']:>5}/{row['messages']}"
        )


if __name__ == "__main__":
    main()
