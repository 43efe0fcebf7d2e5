"""`/ws/playground/`: the chat playground. It submits through `completion_submit`, like
`/v1/chat/completions`, so a playground message shares the key's rate limit and leaves the same
usage record (with `client="playground"`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from dashboard.consumers import DashboardConsumer
from inference.completion import Completion
from inference.gateway import (
    Caller,
    KeyById,
    RequestContext,
    gateway_authenticate,
    gateway_precheck,
    gateway_refusal,
)
from inference.schemas import parse_chat_request
from inference.services import completion_submit
from infra.errors import Conflict, InvalidRequest, NebulaError
from infra.middleware import new_request_id

# What the playground may set; anything else in a message is ignored.
_FIELDS = ("model", "messages", "temperature", "max_tokens", "ignore_eos")


def _key_id(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidRequest("Pick one of your API keys.", param="key", code="missing_key")


def _numeric(value: Any) -> Any:
    """Form fields arrive as text; numbers go to the schema as numbers, the rest unchanged so
    the schema names what is wrong with them."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        with contextlib.suppress(ValueError):
            return int(text)
        with contextlib.suppress(ValueError):
            return float(text)
    return value


class PlaygroundConsumer(DashboardConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completion: Completion | None = None
        self.relay: asyncio.Task[None] | None = None

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "chat":
            await self.start(message)
        elif kind == "stop":
            await self.stop()
        else:
            raise InvalidRequest(
                f"Unknown message type '{kind}': send 'chat' or 'stop'.",
                param="type",
                code="invalid_message",
            )

    @property
    def generating(self) -> bool:
        return self.relay is not None and not self.relay.done()

    async def start(self, message: dict[str, Any]) -> None:
        if self.generating:
            raise Conflict(
                "A reply is still being generated. Stop it or wait for it to finish.",
                code="busy",
            )
        key_id = _key_id(message.get("key"))
        body = {name: _numeric(message.get(name)) for name in _FIELDS}
        body = {name: value for name, value in body.items() if value is not None}
        # Validated by the API's own schema, so the playground cannot send what /v1 refuses.
        request = parse_chat_request(orjson.dumps({**body, "stream": True}))
        ctx = RequestContext(
            request_id=new_request_id(), endpoint="/v1/chat/completions", client="playground"
        )
        caller: Caller | None = None
        try:
            caller = await gateway_authenticate(
                ctx, credential=KeyById(key_id=key_id, user_id=self.actor.user.pk)
            )
            await gateway_precheck(ctx, caller)
            completion = await completion_submit(ctx, caller=caller, request=request)
        except NebulaError as error:
            raise await gateway_refusal(ctx, caller, error) from None
        self.completion = completion
        self.relay = self.in_background(self._relay(completion))

    async def _relay(self, completion: Completion) -> None:
        ctx = completion.ctx
        first = True
        try:
            await completion.wait_started()
            await self.send_json(
                {"type": "started", "request_id": ctx.request_id, "queue_ms": completion.queue_ms}
            )
            async for message in completion.events():
                if message["t"] == "delta":
                    text = "".join(part for index, part in message["d"] if index == 0)
                    if not text:
                        continue
                    # From now on a lost worker means a failed request, not a silent retry:
                    # the person has already seen part of the reply.
                    completion.relayed = True
                    delta: dict[str, Any] = {"type": "delta", "text": text}
                    if first:
                        delta["ttft_ms"] = round((time.time() - ctx.started) * 1000, 1)
                        first = False
                    await self.send_json(delta)
                elif message["t"] == "done":
                    await self.send_json(
                        {
                            "type": "done",
                            "request_id": ctx.request_id,
                            "usage": message["usage"],
                            "finish_reason": message["finish"][0] or "stop",
                            "ttft_ms": round(message["ttft_ms"], 1),
                        }
                    )
                elif message["t"] == "error":
                    await self.send_json(
                        {
                            "type": "error",
                            "message": message["message"],
                            "code": message["code"],
                            "param": None,
                            "request_id": ctx.request_id,
                        }
                    )
        except NebulaError as error:
            await ctx.record_refusal(error)  # after admission: already charged
            await self.send_error(error, request_id=ctx.request_id)
        finally:
            completion.close()

    async def stop(self) -> None:
        """Stop generating: the worker stops at its next token and records the request as
        cancelled (or this process does, if it never started)."""
        completion, relay = self.completion, self.relay
        if completion is None or relay is None or relay.done():
            await self.send_json({"type": "stopped", "request_id": None})
            return
        await completion.cancel()
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await self.send_json({"type": "stopped", "request_id": completion.ctx.request_id})
