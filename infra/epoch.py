"""Process-local caches that every web process drops the moment a key or model changes.

The /v1 hot path must not touch the database, so each web process caches API keys and the model
catalogue. Any change to either (revoke, new limits, a deployment changing state) writes a new
random value to one Redis key, the *epoch*, after the transaction commits. The admission script
that every /v1 request runs anyway (rate limit + enqueue, one round trip) compares the epoch the
process cached under with the current one and refuses to admit on a mismatch; the process then
drops its caches, re-reads the database and tries again. So a revoked key is refused on the very
next request in every process, at no extra cost per request.

If Redis restarts, the epoch key is gone and the script mints a fresh one, which also invalidates
everything. If a change cannot reach Redis at all, NEBULA_CACHE_TTL bounds how long it goes unseen.

Requests already under way (a stream can last minutes) ask `epoch_refresh` now and then, which
reads the epoch at most once per interval for the whole process however many streams ask.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

from django.conf import settings
from django.db import transaction

from infra.redis_client import REDIS_ERRORS, get_async_redis, get_redis

logger = logging.getLogger(__name__)

EPOCH_KEY = "nebula:epoch"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_current_epoch: str | None = None


class _Miss:
    """What `EpochCache.get` returns when it has nothing (None is a value that can be cached)."""


MISS = _Miss()
_caches: list[EpochCache[object, object]] = []


def epoch_bump() -> None:
    """Publish a new epoch now. Prefer `epoch_bump_on_commit` inside a transaction."""
    try:
        get_redis().set(EPOCH_KEY, uuid.uuid4().hex)
    except REDIS_ERRORS:
        logger.warning(
            "could not publish a cache epoch to Redis; web processes will see the change "
            "within NEBULA_CACHE_TTL (%ss) or when Redis is back",
            settings.NEBULA_CACHE_TTL,
        )


def epoch_bump_on_commit() -> None:
    transaction.on_commit(epoch_bump)


def current_epoch() -> str | None:
    return _current_epoch


def observe_epoch(epoch: str) -> bool:
    """Record the epoch Redis reported; drop every cache if it moved. Returns True if it moved."""
    global _current_epoch
    if epoch == _current_epoch:
        return False
    for cache in _caches:
        cache.clear()
    _current_epoch = epoch
    return True


class _Refresh:
    def __init__(self) -> None:
        self.at = -1e9
        self.pending: asyncio.Task[None] | None = None


_refreshes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Refresh] = (
    weakref.WeakKeyDictionary()
)


async def _read_epoch() -> None:
    raw = await get_async_redis().get(EPOCH_KEY)
    observe_epoch(raw.decode() if isinstance(raw, bytes) else str(raw or ""))


async def epoch_refresh(*, max_age: float) -> str | None:
    """The current epoch, read from Redis if this process last did more than `max_age` seconds
    ago (callers at the same time share one read). Raises Redis' errors."""
    state = _refreshes.setdefault(asyncio.get_running_loop(), _Refresh())
    if time.monotonic() - state.at >= max_age:
        if state.pending is None or state.pending.done():
            state.pending = asyncio.get_running_loop().create_task(_read_epoch())
            state.at = time.monotonic()
        await asyncio.shield(state.pending)
    return _current_epoch


class EpochCache(Generic[K, V]):
    """A dict valid for one epoch, with a time-to-live backstop per entry."""

    def __init__(self, name: str, max_entries: int = 100_000) -> None:
        self.name = name
        self.max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}
        _caches.append(self)  # type: ignore[arg-type]

    def get(self, key: K) -> V | _Miss:
        entry = self._entries.get(key)
        if entry is None:
            return MISS
        value, expires = entry
        if expires < time.monotonic():
            self._entries.pop(key, None)
            return MISS
        return value

    def put(self, key: K, value: V, *, epoch: str | None) -> None:
        """Store `value`, read from the database after `epoch` was observed, if still current."""
        if epoch is None or epoch != _current_epoch:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (value, time.monotonic() + settings.NEBULA_CACHE_TTL)

    def clear(self) -> None:
        self._entries.clear()
