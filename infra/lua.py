"""Lua scripts: Nebula's atomic Redis operations (rate limits, slots, job claims) run as scripts,
so each is exact under any concurrency and costs one round trip."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Arg = str | int | float | bytes


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def acall(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[Arg] = ()
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


# Redis' own clock in milliseconds, shared by every host: no skew between web and worker machines.
NOW_MS = """
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
"""
