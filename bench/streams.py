"""Streaming load: an asyncio client that keeps N streams open at once (one keep-alive
connection each) and timestamps every read, for time to first token, inter-chunk gaps and
delivered tokens per second."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench.http1 import Connection
from bench.sse import SSEParser


@dataclass
class StreamResult:
    status: int = 0
    started: float = 0.0
    first_byte: float | None = None  # first byte of the body
    first_token: float | None = None  # first read that carried content
    content_reads: list[float] = field(default_factory=list)  # reads that carried content
    ended: float = 0.0
    events: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        """Until the first content (or, for a body that is not SSE, its first byte)."""
        first = self.first_token if self.first_token is not None else self.first_byte
        return None if first is None else (first - self.started) * 1000

    def gaps_ms(self) -> list[float]:
        reads = self.content_reads
        return [(later - earlier) * 1000 for earlier, later in itertools.pairwise(reads)]


def _has_content(events: list[str]) -> bool:
    # Cheaper than decoding every event while timing: a content delta says so literally.
    return any('"content":"' in event and '"content":""' not in event for event in events)


async def request(
    connection: Connection, path: str, headers: dict[str, str], body: dict[str, Any]
) -> StreamResult:
    """One request on `connection`, timed read by read."""
    return await _one(connection, path, headers, body)


async def _one(
    connection: Connection, path: str, headers: dict[str, str], body: dict[str, Any]
) -> StreamResult:
    result = StreamResult()
    parser = SSEParser()
    payload = json.dumps(body).encode()
    result.started = time.perf_counter()
    try:
        response, chunks = await connection.request("POST", path, headers=headers, body=payload)
        result.status = response.status
        async for data in chunks:
            now = time.perf_counter()
            if result.first_byte is None:
                result.first_byte = now
            events = parser.feed(data)
            if events:
                result.events.extend(events)
                if _has_content(events):
                    result.content_reads.append(now)
                    if result.first_token is None:
                        result.first_token = now
        if parser.leftover.strip():  # a body that is not SSE: the baseline's JSON, an error
            result.events.append(parser.leftover.decode("utf-8", "replace"))
    except (OSError, ValueError, asyncio.IncompleteReadError) as error:
        result.error = f"{type(error).__name__}: {error}"
        await connection.close()
    result.ended = time.perf_counter()
    return result


class Client:
    """N keep-alive connections to one server; a round sends one request on each."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.connections = [Connection(host, port) for _ in range(connections)]

    async def round(
        self, path: str, headers: dict[str, str], bodies: list[dict[str, Any]]
    ) -> tuple[list[StreamResult], float]:
        """Start every request at once; (results, wall seconds from first start to last end)."""
        if len(bodies) > len(self.connections):
            raise ValueError("more requests than connections")
        started = time.perf_counter()
        connections = self.connections[: len(bodies)]
        results = await asyncio.gather(
            *(
                _one(conn, path, headers, body)
                for conn, body in zip(connections, bodies, strict=True)
            )
        )
        return list(results), time.perf_counter() - started

    async def texts(
        self, path: str, headers: dict[str, str], bodies: list[dict[str, Any]]
    ) -> list[str | None]:
        """The non-streaming answers to the same requests: what each stream must add up to."""
        plain = [
            {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            for body in bodies
        ]
        results, _ = await self.round(path, headers, plain)
        texts: list[str | None] = []
        for result in results:
            try:
                answer = json.loads("".join(result.events))
                texts.append(answer["choices"][0]["message"]["content"])
            except (ValueError, KeyError, IndexError):
                texts.append(None)
        return texts

    async def close(self) -> None:
        await asyncio.gather(*(conn.close() for conn in self.connections))
