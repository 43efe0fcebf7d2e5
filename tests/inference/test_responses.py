"""How a stream's chunks are written: what a worker already sent goes out in one write."""

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson

from inference.completion import Completion
from inference.responses import DONE_LINE, sse_events
from inference.schemas import parse_chat_request
from tests.support.jobs import make_job


class _Hub:
    def close(self, request_id: str) -> None:
        pass


def _completion(job):  # stand-ins for the request context, hub and admission (untyped)
    ctx = SimpleNamespace(request_id=job["id"])
    admitted = SimpleNamespace(admission=SimpleNamespace(headers=dict))
    completion = Completion(ctx, _Hub(), asyncio.Queue(), job, admitted, caller=None)
    completion.started = True
    return completion


def _delta(job: dict[str, Any], seq: int, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "r": job["id"],
        "t": "delta",
        "seq": seq,
        "d": [(0, text)],
        "f": [(0, finish)] if finish else [],
    }


def _done(job: dict[str, Any]) -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    return {"r": job["id"], "t": "done", "texts": ["abc"], "finish": ["stop"], "usage": usage}


def _writes(completion: Completion, feed: Any) -> list[bytes]:
    request = parse_chat_request(
        orjson.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        )
    )

    async def run() -> list[bytes]:
        producer = asyncio.create_task(feed(completion.queue))
        writes = [write async for write in sse_events(completion, request)]
        await producer
        return writes

    return asyncio.run(run())


def _contents(write: bytes) -> list[str]:
    events = [line.removeprefix(b"data: ") for line in write.split(b"\n\n") if line]
    return [
        orjson.loads(event)["choices"][0]["delta"].get("content", "")
        for event in events
        if event != b"[DONE]"
    ]


def test_messages_already_queued_go_out_in_one_write():
    job = make_job(enqueued_at=time.time())
    completion = _completion(job)

    async def feed(queue: asyncio.Queue) -> None:
        for seq, text in enumerate("abc", start=1):
            queue.put_nowait(_delta(job, seq, text, "stop" if text == "c" else None))
        queue.put_nowait(_done(job))

    role, rest = _writes(completion, feed)

    assert _contents(role) == [""]
    assert _contents(rest) == ["a", "b", "c", ""]  # the three tokens, then the finish chunk
    assert rest.endswith(DONE_LINE)


def test_a_message_that_arrives_alone_is_written_at_once():
    job = make_job(enqueued_at=time.time())
    completion = _completion(job)

    async def feed(queue: asyncio.Queue) -> None:
        for seq, text in enumerate("ab", start=1):
            queue.put_nowait(_delta(job, seq, text))
            while not queue.empty():  # the relay takes it before the next one comes
                await asyncio.sleep(0)
        queue.put_nowait(_done(job))

    _role, first, second, end = _writes(completion, feed)

    assert [_contents(first), _contents(second)] == [["a"], ["b"]]
    assert end == DONE_LINE
