"""Reading an OpenAI-style SSE stream as a client does, and checking it arrived whole and in order.

Pure logic (no I/O), so tests can feed it bytes split at any point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class SSEParser:
    """Incremental `data:` event parser: feed bytes as they arrive, get complete events back.

    Events end with a blank line; comment lines (`: keep-alive`) are skipped. The network may
    cut anywhere, including inside a UTF-8 character, so bytes are buffered until an event ends.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        events: list[str] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            lines = [
                line[5:].removeprefix(b" ")
                for line in raw.split(b"\n")
                if line.startswith(b"data:")
            ]
            if lines:
                events.append(b"\n".join(lines).decode("utf-8"))

    @property
    def leftover(self) -> bytes:
        return self._buffer


@dataclass
class StreamCheck:
    """What one stream delivered, and everything wrong with it (empty `problems` = whole)."""

    text: str = ""
    tokens: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stream(
    events: list[str],
    *,
    count_tokens: Callable[[str], int],
    expected_tokens: int | None = None,
    expected_text: str | None = None,
    expected_finish: str | None = None,
) -> StreamCheck:
    """Check a chat completion stream (with `stream_options.include_usage`) event by event.

    Whole and in order means: one id throughout; a role chunk first; content only before the
    finish chunk; exactly one finish chunk; then the usage chunk, whose completion_tokens equals
    the tokens counted in the delivered text; then `[DONE]`, last. With `expected_text` (the
    same request answered without streaming: generation is deterministic for a fixed seed) the
    concatenated text must match exactly, which catches a lost, duplicated or reordered token
    even when the count happens to add up.
    """
    check = StreamCheck()
    problems = check.problems
    if not events:
        problems.append("no events")
        return check
    if events[-1] != DONE:
        problems.append("the stream does not end with [DONE]")
    chunks: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        if event == DONE:
            if index != len(events) - 1:
                problems.append(f"[DONE] at event {index}, before the end")
            continue
        try:
            chunks.append(json.loads(event))
        except ValueError:
            problems.append(f"event {index} is not JSON")
    ids = {chunk.get("id") for chunk in chunks}
    if len(ids) > 1:
        problems.append(f"{len(ids)} different ids in one stream")
    parts: list[str] = []
    saw_role = saw_finish = saw_usage = False
    for index, chunk in enumerate(chunks):
        if "error" in chunk:
            problems.append(f"error chunk: {chunk['error'].get('code')}")
            continue
        if saw_usage:
            problems.append(f"chunk {index} after the usage chunk")
        choices = chunk.get("choices") or []
        if not choices:
            if chunk.get("usage") is not None:
                saw_usage = True
                check.usage_tokens = chunk["usage"].get("completion_tokens")
            continue
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("role") == "assistant":
                if saw_role or parts:
                    problems.append(f"role chunk at chunk {index}, not first")
                saw_role = True
            content = delta.get("content")
            if content:
                if saw_finish:
                    problems.append(f"content after the finish chunk (chunk {index})")
                parts.append(content)
            reason = choice.get("finish_reason")
            if reason is not None:
                if saw_finish:
                    problems.append("more than one finish chunk")
                saw_finish = True
                check.finish_reason = reason
    if not saw_role:
        problems.append("no role chunk")
    if not saw_finish:
        problems.append("no finish chunk")
    if not saw_usage:
        problems.append("no usage chunk")
    check.text = "".join(parts)
    check.tokens = count_tokens(check.text)
    if check.usage_tokens is not None and check.usage_tokens != check.tokens:
        problems.append(
            f"usage says {check.usage_tokens} completion tokens, the text has {check.tokens}"
        )
    if expected_tokens is not None and check.tokens != expected_tokens:
        problems.append(f"{check.tokens} tokens delivered, {expected_tokens} expected")
    if expected_finish is not None and check.finish_reason != expected_finish:
        problems.append(f"finish_reason {check.finish_reason!r}, expected {expected_finish!r}")
    if expected_text is not None and check.text != expected_text:
        at = next(
            (i for i, (a, b) in enumerate(zip(check.text, expected_text, strict=False)) if a != b),
            min(len(check.text), len(expected_text)),
        )
        problems.append(f"text differs from the non-streaming answer at character {at}")
    return check
