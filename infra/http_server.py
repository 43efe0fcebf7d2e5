"""Limits daphne enforces before a request reaches Django.

Daphne (through Twisted) reads a request's whole body before it calls the application, and
then queues all of it, in 8 KiB messages, for Django, which copies it once more. A client could
send a body of any size (declared or chunked) and the web process would hold it all in memory:
hundreds of megabytes for one request, before authentication or any view had a say. So the
size limit is enforced here, as the bytes arrive: a body declared larger than
NEBULA_MAX_BODY_BYTES is refused before it is read, a chunked one as soon as it grows past the
limit, and nothing past the limit is stored.

The server's own error answers (a malformed request line or chunk, headers over Twisted's
16 KiB or 500-header limit, a non-ASCII path, an exception escaping the application) are
rewritten into the API's JSON error format, from HTML or from no answer at all.

Its access log, which bypasses Python's logging, gets the same secret redaction as the logs.

`harden_daphne()` installs this; `nebula_site.asgi` calls it, and daphne imports that module
before it starts listening.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings

from infra.errors import error_body
from infra.logging import redact

# After refusing a body, keep reading (and dropping) what the client still sends for this long,
# so that it reads our answer instead of a connection reset, then cut it off.
LINGER_SECONDS = 5.0

_REASONS = {
    400: b"Bad Request",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def _error_bytes(status: int, message: str, code: str) -> bytes:
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    body = orjson.dumps(error_body(message, type=type_, code=code))
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, _REASONS.get(status, b"Error"), len(body))
    ) + body


def _drop(data: bytes) -> None:
    return None


def _respond_and_close(channel: Any, data: bytes) -> None:
    """Send `data` and close our side; drop whatever the client still sends for a while, then
    cut it off. (Closing a socket with unread input resets the connection, and the client
    might then lose our answer: a lingering close.)"""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    transport = channel.transport
    channel.dataReceived = _drop
    transport.write(data)
    if hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
        reactor.callLater(LINGER_SECONDS, transport.abortConnection)
    else:
        transport.loseConnection()


def _bad_request(channel: Any, *, line_too_long: bool = False) -> None:
    """Replaces HTTPChannel._respondToBadRequestAndDisconnect (a bare `400`, no body) and
    LineReceiver.lineLengthExceeded (no answer at all)."""
    if (
        line_too_long
        or channel._receivedHeaderSize > channel.totalHeadersSize
        or channel._receivedHeaderCount > channel.maxHeaders
    ):
        data = _error_bytes(
            431,
            f"The request's headers are too large (at most {channel.totalHeadersSize} bytes "
            f"and {channel.maxHeaders} headers).",
            "headers_too_large",
        )
    else:
        data = _error_bytes(400, "The HTTP request is malformed.", "bad_request")
    channel.transport.write(data)
    # What the client sent is read already (it is what we refused), so a plain close is safe;
    # it also stops Twisted from parsing the rest of the buffer.
    channel.loseConnection()


def harden_daphne() -> None:
    """Make daphne's HTTP server enforce the body limit, answer errors in JSON and keep secrets
    out of its access log (idempotent)."""
    import daphne.cli
    import daphne.server
    from daphne.access import AccessLogGenerator
    from daphne.http_protocol import HTTPFactory, WebRequest

    if getattr(daphne.server.HTTPFactory, "nebula_hardened", False):
        return

    class LimitedRequest(WebRequest):
        refused = False
        received = 0

        def gotLength(self, length: int | None) -> None:
            if length is not None and length > settings.NEBULA_MAX_BODY_BYTES:
                # No "100 Continue" for a body we will not read.
                self.requestHeaders.removeHeader(b"expect")
                super().gotLength(0)
                self._refuse()
                return
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self.refused:
                return
            self.received += len(data)
            if self.received > settings.NEBULA_MAX_BODY_BYTES:
                self._refuse()
                return
            super().handleContentChunk(data)

        def _refuse(self) -> None:
            self.refused = True
            _respond_and_close(
                self.channel,
                _error_bytes(
                    413,
                    f"The request body is larger than {settings.NEBULA_MAX_BODY_BYTES} bytes.",
                    "request_too_large",
                ),
            )

        def process(self) -> Any:
            if self.refused:
                return None  # answered already; the application never sees this request
            return super().process()

        def basic_error(self, status: int, status_text: bytes, body: str) -> None:
            """Daphne's own errors (bad path or query string, an exception escaping the
            application) in the API's JSON format instead of an HTML page."""
            code = {400: "bad_request", 503: "service_unavailable"}.get(status, "internal_error")
            type_ = "server_error" if status >= 500 else "invalid_request_error"
            payload = orjson.dumps(error_body(body, type=type_, code=code))
            self.handle_reply(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"Content-Type", b"application/json")],
                }
            )
            self.handle_reply({"type": "http.response.body", "body": payload})

    class HardenedHTTPFactory(HTTPFactory):
        nebula_hardened = True

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            protocol.requestFactory = LimitedRequest
            channel = getattr(protocol, "_channel", protocol)
            channel._respondToBadRequestAndDisconnect = lambda: _bad_request(channel)
            channel.lineLengthExceeded = lambda line: _bad_request(channel, line_too_long=True)
            return protocol

    class RedactingAccessLog(AccessLogGenerator):
        """Daphne's access log writes request URIs, query strings included, straight to its
        stream, past the logging filters: a key sent as `?api_key=nb_…` would be in it."""

        def write_entry(
            self,
            host: Any,
            date: Any,
            request: str,
            status: Any = None,
            length: Any = None,
            ident: Any = None,
            user: Any = None,
        ) -> None:
            super().write_entry(host, date, redact(request), status, length, ident, user)

    daphne.server.HTTPFactory = HardenedHTTPFactory
    daphne.cli.AccessLogGenerator = RedactingAccessLog
