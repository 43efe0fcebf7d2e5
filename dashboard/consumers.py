"""What every dashboard websocket consumer shares: a logged-in session, JSON in and out, errors
as messages (never a crash), and a clean close when Redis goes away so the page reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from infra.errors import InternalError, InvalidRequest, NebulaError
from infra.events import remember_main_loop
from infra.redis_client import REDIS_ERRORS
from keys.access import Actor, actor_for_user

logger = logging.getLogger(__name__)

# Close codes the pages act on (static/dashboard/js/nebula.js): 4401 sends the browser to the
# login page; anything else makes it reconnect with backoff. 4013, sent when the consumer lost
# its Redis connection, mirrors the standard 1013 "try again later", which daphne's websocket
# library (autobahn) refuses to send from a server: only 1000 and 3000-4999 are allowed.
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_REDIS_LOST = 4013


class DashboardConsumer(AsyncWebsocketConsumer):
    """Subclasses set `follow` (channel-layer groups to join once authenticated) and implement
    `opened()` and `handle(message)`."""

    follow: tuple[str, ...] = ()
    actor: Actor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except REDIS_ERRORS:
            # The channel layer lost Redis (reading this consumer's channel, or joining a group).
            # Close with "try again later" instead of crashing; the page reconnects.
            logger.warning("dashboard socket %s lost Redis; closing", scope.get("path"))
            await self._stop_tasks()
            try:
                await send({"type": "websocket.close", "code": CLOSE_REDIS_LOST})
            except Exception:
                # Said, not swallowed: a close that fails leaves the page waiting on a socket
                # that nothing serves any more.
                logger.warning(
                    "could not close dashboard socket %s", scope.get("path"), exc_info=True
                )

    # --- lifecycle ------------------------------------------------------------------------------
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.send_error(
                InvalidRequest("Log in to use the dashboard.", code="not_authenticated")
            )
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        self.actor = actor_for_user(user)
        remember_main_loop()
        for group in self.follow:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
        await self.accept()
        await self.opened()

    async def disconnect(self, code: int) -> None:
        await self._stop_tasks()
        for group in self.joined:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = []

    async def opened(self) -> None:
        """Called once the socket is accepted for a logged-in user."""

    async def still_logged_in(self) -> bool:
        """Is the session this socket opened with still a login of the same active user?

        Checked before anything is sent or done on the user's behalf, so logging out (or being
        deactivated, or changing one's password) elsewhere ends the socket too. A socket opened
        without a session (Channels' test communicator given a user) has nothing to re-check.
        """
        session = self.scope.get("session")
        if session is None or not session.session_key:
            return True
        return await database_sync_to_async(_session_still_valid)(
            session.session_key, self.actor.user.pk
        )

    async def end_logged_out(self) -> None:
        await self.send_error(
            InvalidRequest("Your session has ended. Log in again.", code="not_authenticated")
        )
        await self.close(code=CLOSE_NOT_AUTHENTICATED)

    # --- input ----------------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            if text_data is None:
                raise InvalidRequest(
                    "Send JSON text messages, not binary ones.", code="invalid_json"
                )
            try:
                message = orjson.loads(text_data)
            except orjson.JSONDecodeError:
                raise InvalidRequest(
                    "That message is not valid JSON.", code="invalid_json"
                ) from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise InvalidRequest(
                    'Each message is a JSON object with a "type", e.g. {"type": "chat", ...}.',
                    param="type",
                    code="invalid_message",
                )
            if not await self.still_logged_in():
                await self.end_logged_out()
                return
            await self.handle(message)
        except NebulaError as error:
            await self.send_error(error)
        except REDIS_ERRORS:
            raise
        except Exception:
            logger.exception("dashboard socket %s failed on a message", self.scope.get("path"))
            await self.send_error(InternalError("Something went wrong handling that message."))

    async def handle(self, message: dict[str, Any]) -> None:
        raise InvalidRequest("This connection does not take messages.", code="invalid_message")

    # --- output ---------------------------------------------------------------------------------
    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.send(text_data=orjson.dumps(payload).decode())

    async def send_error(self, error: NebulaError, **extra: Any) -> None:
        await self.send_json(
            {
                "type": "error",
                "message": error.message,
                "code": error.code,
                "param": error.param,
                **extra,
            }
        )

    # --- background work ------------------------------------------------------------------------
    def in_background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _stop_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class SnapshotConsumer(DashboardConsumer):
    """Pushes a fresh snapshot on connect and whenever `refresh()` is called, coalescing bursts
    (a deploy emits several events) and at most one push per `min_gap` seconds. Snapshots are
    computed per connection, for its own user: an event never carries anyone's data."""

    min_gap = 0.0
    interval: float | None = None  # also push this often, for figures that change silently

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dirty = False
        self._pusher: asyncio.Task[None] | None = None

    async def opened(self) -> None:
        await self.push()
        if self.interval:
            self.in_background(self._every(self.interval))

    def refresh(self) -> None:
        self._dirty = True
        if self._pusher is None or self._pusher.done():
            self._pusher = self.in_background(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            self._dirty = False
            started = loop.time()
            if not await self.still_logged_in():
                await self.end_logged_out()
                return
            await self.push()
            await asyncio.sleep(max(self.min_gap - (loop.time() - started), 0))

    async def _every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.refresh()

    async def push(self) -> None:
        raise NotImplementedError


def _session_still_valid(session_key: str, user_id: Any) -> bool:
    from importlib import import_module

    from django.conf import settings

    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(session.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return False
    return constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())
