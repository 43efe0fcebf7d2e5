"""Database work from async code, on a small pool of threads.

Django's async ORM methods (`afirst()` and friends) run in the request's "thread-sensitive"
thread, which under daphne is a new thread per request, each opening its own connection: 200
concurrent cache misses meant 200 PostgreSQL connections ("too many clients"). Async code in the
hot path hands its (rare) database work to this pool instead, so a web process never holds more
than NEBULA_DB_THREADS connections for it, and `single_flight` makes concurrent misses for the
same thing share one query.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections

from infra.errors import DATABASE_ERRORS, database_unavailable

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.NEBULA_DB_THREADS, thread_name_prefix="nebula-db"
        )
    return _executor


def _call(fn: Callable[..., T], *args: Any) -> T:
    # These threads serve no request, so nothing else retires broken or old connections.
    close_old_connections()
    return fn(*args)


async def run_db(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` (sync, may use the ORM) on the pool, without blocking the event loop.

    An unreachable database becomes a 503 (`database_unavailable`), never a 500.
    """
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_pool(), functools.partial(_call, fn, *args))
    except DATABASE_ERRORS:
        raise database_unavailable() from None


class SingleFlight:
    """Concurrent callers asking for the same key share one in-flight computation."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(make())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        # shield: one caller going away must not cancel the query the others wait for.
        return await asyncio.shield(future)
