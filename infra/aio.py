"""One event loop per process on a thread of its own, for async I/O that sync code (a Celery
job's thread, the prober, a deployment task) starts and waits for: today, HTTP to upstream
engines. One loop and one HTTP client per process means kept-alive connections to each engine
are shared by every job the process runs, instead of one connection (and TLS handshake) per
request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="nebula-aio", daemon=True).start()
            _loop = loop
        return _loop


def is_background_loop(loop: asyncio.AbstractEventLoop) -> bool:
    return loop is _loop


def submit(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule `coroutine` on the background loop; its Future can be waited on or cancelled
    (cancelling it cancels the coroutine)."""
    return asyncio.run_coroutine_threadsafe(coroutine, background_loop())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on the background loop and wait for its result (or its exception)."""
    return submit(coroutine).result()


def http_client() -> httpx.AsyncClient:
    """The running loop's shared HTTP client. Timeouts are given per request; no environment
    proxies (`trust_env=False`): engines are reached as configured."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            trust_env=False,
            follow_redirects=False,
        )
    return client
