"""The web process's end of the token stream.

Each web process (each event loop) subscribes once, at first use, to its own reply channel
`nebula:reply:{uuid}` on a dedicated Redis connection, and routes every message to the waiting
request by its request id. Jobs are only enqueued once the subscription is confirmed, so no token
can be published before someone listens; and when this process dies its subscription goes with
it, which is how workers notice that nobody is listening any more.

Why not Channels' Redis layer: `python -m bench.transport` sends 3,000 small messages from a
worker thread to an event loop. Plain pub/sub costs the sender ~0.1-0.3 ms per message with a
sub-millisecond median latency; the layer costs ~4-6 ms per message from a thread (each send
crosses into asyncio through async_to_sync) and ~0.55 ms even from an event loop, and it drops
group messages past its capacity. Workers also batch tokens (inference/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref

import orjson

from inference.jobs import HubMessage, LostMessage, WorkerMessage
from infra.errors import ServiceUnavailable
from infra.redis_client import REDIS_ERRORS, new_async_connection

logger = logging.getLogger(__name__)

LOST: LostMessage = {"t": "lost"}


class ReplyHub:
    def __init__(self) -> None:
        self.channel = f"nebula:reply:{uuid.uuid4().hex}"
        self._queues: dict[str, asyncio.Queue[HubMessage]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def open(self, request_id: str) -> asyncio.Queue[HubMessage]:
        queue: asyncio.Queue[HubMessage] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def ready(self, wait: float = 2.0) -> None:
        """Return once this process is subscribed; 503 if Redis cannot be reached."""
        if self._ready.is_set():
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reply-hub")
        try:
            async with asyncio.timeout(wait):
                await self._ready.wait()
        except TimeoutError:
            raise ServiceUnavailable(
                "The service cannot reach its Redis server right now. Retry shortly.",
                code="redis_unavailable",
            ) from None

    async def _run(self) -> None:
        pause = 0.05
        while True:
            connection = new_async_connection()
            pubsub = connection.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Wait for Redis to confirm before admitting any job that replies here.
                while True:
                    message = await pubsub.get_message(timeout=2.0)
                    if message and message["type"] == "subscribe":
                        break
                    if message is None:
                        raise ConnectionError("no subscribe confirmation")
                self._ready.set()
                pause = 0.05
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    data: WorkerMessage = orjson.loads(message["data"])
                    queue = self._queues.get(data["r"])
                    if queue is not None:
                        queue.put_nowait(data)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS:  # includes ConnectionError (an OSError)
                logger.warning("reply channel lost its Redis connection; resubscribing")
            except Exception:
                logger.exception("reply hub failed; resubscribing")
            finally:
                self._ready.clear()
                # Whatever was in flight on the old subscription may have lost messages.
                for queue in list(self._queues.values()):
                    queue.put_nowait(LOST)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await connection.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReplyHub] = weakref.WeakKeyDictionary()


def reply_hub() -> ReplyHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ReplyHub()
    return hub
