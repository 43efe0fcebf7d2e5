"""A minimal HTTP/1.1 client on asyncio streams, for the streaming scenario.

Why not httpx: with 100 requests in flight its connection pool cost the client process most
of a core on this 2-core machine and added hundreds of milliseconds to every first byte, for
the baseline as much as for Nebula, so the client measured itself. This one does just what the
benchmark needs: keep-alive connections (one request at a time each), a request with a body,
the status line and headers, and the body as it arrives, chunked or with a Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


class ChunkedDecoder:
    """Incremental `Transfer-Encoding: chunked` decoder: feed raw bytes, get body bytes back."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes left in the current chunk
        self._after_chunk = False  # a chunk's trailing CRLF is still due
        self._last = False  # the zero-size chunk came: only the final CRLF is due
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.done:
            if self._last:
                # No trailers from our servers: the body ends with one empty line.
                if len(self._buffer) >= 2:
                    if self._buffer[:2] != b"\r\n":
                        raise ValueError("trailers are not supported")
                    self._buffer = self._buffer[2:]
                    self.done = True
                break
            if self._remaining:
                take = self._buffer[: self._remaining]
                out += take
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                if self._remaining:
                    break
                self._after_chunk = True
            if self._after_chunk:
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                self._buffer = self._buffer[2:]
                self._after_chunk = False
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buffer[:end].split(b";", 1)[0], 16)
            self._buffer = self._buffer[end + 2 :]
            if size == 0:
                self._last = True
                continue
            self._remaining = size
        return bytes(out)


@dataclass
class Response:
    status: int
    headers: dict[str, str]


class Connection:
    """One keep-alive connection; `request` yields the body as it arrives."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._reader.at_eof():
            # The server closed it while it was idle (uvicorn does after 5 s, which LiteLLM's
            # connections are while the other sides of scenario 8 take their turn): open a new
            # one, as httpx's pool does, instead of failing the next request on it.
            await self.close()
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(
        self, method: str, path: str, *, headers: dict[str, str], body: bytes
    ) -> tuple[Response, AsyncIterator[bytes]]:
        reader, writer = await self._open()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        response_headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return Response(status, response_headers), self._body(reader, response_headers)

    async def _body(
        self, reader: asyncio.StreamReader, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoder = ChunkedDecoder()
            while not decoder.done:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed inside a chunked body")
                body = decoder.feed(data)
                if body:
                    yield body
        else:
            left = int(headers.get("content-length", "0"))
            while left > 0:
                data = await reader.read(min(left, 65536))
                if not data:
                    raise ConnectionError("connection closed inside the body")
                left -= len(data)
                yield data
        if headers.get("connection", "").lower() == "close":
            await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None
