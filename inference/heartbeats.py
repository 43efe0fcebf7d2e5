"""The heartbeat registry: which workers are alive, and what each last said about itself.

Workers write it (`heartbeat_send`, from their heartbeat thread); web processes read it to tell
a dead worker from a slow one, and /health, the dashboard and Prometheus to show the fleet. It
lives apart from the worker runtime so that readers import nothing of a worker.

`nebula:workers` is a sorted set of worker ids scored by Redis' clock at their last beat, plus a
small JSON record per worker that expires on its own.
"""

from __future__ import annotations

from typing import TypedDict

import orjson
import redis
from django.conf import settings

from infra.lua import NOW_MS, LuaScript
from infra.redis_client import get_redis

WORKERS_KEY = "nebula:workers"
# A worker silent this long is dropped from the set altogether (it counts as dead long before).
FORGET_AFTER_MS = 3_600_000


def worker_info_key(worker_id: str) -> str:
    return f"nebula:worker:{worker_id}"


class WorkerInfo(TypedDict):
    id: str
    host: str
    pid: int
    concurrency: int
    busy: int
    started_at: float
    version: str


# KEYS: workers zset, info key. ARGV: worker id, info json, info ttl seconds, forget-after ms.
_BEAT = LuaScript(
    NOW_MS
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
return now
"""
)

_LIVE = LuaScript(
    NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
)


def heartbeat_send(client: redis.Redis, info: WorkerInfo) -> None:
    """Say this worker is alive, on Redis' clock (every reader compares against that clock)."""
    ttl = settings.NEBULA_WORKER_TTL
    _BEAT(
        client,
        [WORKERS_KEY, worker_info_key(info["id"])],
        [info["id"], orjson.dumps(info), max(int(ttl * 3), 3), FORGET_AFTER_MS],
    )


def heartbeat_withdraw(client: redis.Redis, worker_id: str) -> None:
    """A worker shutting down cleanly leaves the registry at once instead of timing out."""
    client.zrem(WORKERS_KEY, worker_id)
    client.delete(worker_info_key(worker_id))


def live_workers() -> list[WorkerInfo]:
    """Workers that reported within NEBULA_WORKER_TTL, with what they last said."""
    client = get_redis()
    ids = _LIVE(client, [WORKERS_KEY], [int(settings.NEBULA_WORKER_TTL * 1000)])
    if not ids:
        return []
    raw = client.mget([worker_info_key(wid.decode()) for wid in ids])
    workers: list[WorkerInfo] = []
    for wid, blob in zip(ids, raw, strict=True):
        if blob:
            workers.append(orjson.loads(blob))
        else:
            workers.append(
                {
                    "id": wid.decode(),
                    "host": "?",
                    "pid": 0,
                    "concurrency": 0,
                    "busy": 0,
                    "started_at": 0.0,
                    "version": "?",
                }
            )
    return workers
