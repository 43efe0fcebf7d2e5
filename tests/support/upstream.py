"""A small OpenAI-compatible engine for tests (not part of the product): streams, errors,
stalls and dies on command, and exposes vLLM-style Prometheus /metrics.

Run in a thread (`UpstreamServer().start()`) or as its own process, so a test can kill it:
`python -m tests.support.upstream --port 8601`.

Commands travel in the last user message, so concurrent requests each get their own:

    [[tokens=N]]      reply with N tokens (default 5; max_tokens still caps it)
    [[delay=S]]       S seconds between tokens
    [[first_delay=S]] S seconds before the response headers
    [[status=C]]      answer HTTP C with an error body in vLLM's shape
    [[die_after=N]]   close the connection abruptly after N tokens (no [DONE])
    [[hang_after=N]]  after N tokens, send nothing more (until the client leaves)
    [[garbage]]       a 200 stream of things that are not JSON
    [[tool_call]]     call the tool get_weather with {"city": "Paris"} (finish: tool_calls)
    [[function_call]] the same as the legacy functions API's function_call (finish: function_call)
    [[logprobs]]      logprobs on every content token
    [[no_usage]]      no usage chunk, even when asked for one
    [[echo_auth]]     with [[status=C]]: the error message quotes the Authorization header
    [[json]]          one JSON completion even when asked to stream

Behaviour for every request: POST /_control with any of `health_status`, `models`,
`fail_status`, `die_after`, `running`, `waiting`, `kv_cache`, `require_key`; GET /_log lists
the requests seen (their id, Authorization header, body, whether the client hung up before the
end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COMMAND = re.compile(r"\[\[(\w+)(?:=([^\]]*))?\]\]")


def word(index: int) -> str:
    return f"w{index} "


class _State:
    def __init__(self, model: str) -> None:
        self.lock = threading.Lock()
        self.model = model
        self.control: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []
        self.active = 0

    def setting(self, name: str, default: Any = None) -> Any:
        with self.lock:
            return self.control.get(name, default)


class _Gone(Exception):
    """The client hung up."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small writes go out at once (as real engines' servers do): without it, each token waits
    # for the client's delayed ACK, 40 ms a token on Linux.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing -------------------------------------------------------------------------
    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise _Gone from error

    def _event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._client_gone():
                raise _Gone
            time.sleep(min(0.01, max(deadline - time.monotonic(), 0)))

    # --- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/health":
            status = state.setting("health_status", 200)
            self._text(status, "" if status == 200 else "unhealthy")
        elif self.path == "/v1/models":
            if not self._authorized():
                return
            models = state.setting("models", [state.model])
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "owned_by": "test"} for m in models],
                },
            )
        elif self.path == "/metrics":
            running = state.setting("running", state.active)
            waiting = state.setting("waiting", 0)
            kv = state.setting("kv_cache", 0.25)
            label = f'{{model_name="{state.model}"}}'
            self._text(
                200,
                "# HELP vllm:num_requests_running Requests running.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{label} {float(running)}\n"
                "# HELP vllm:num_requests_waiting Requests waiting.\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{label} {float(waiting)}\n"
                "# HELP vllm:gpu_cache_usage_perc KV-cache usage.\n"
                "# TYPE vllm:gpu_cache_usage_perc gauge\n"
                f"vllm:gpu_cache_usage_perc{label} {float(kv)}\n",
                "text/plain; version=0.0.4",
            )
        elif self.path == "/_log":
            with state.lock:
                self._json(200, list(state.log))
        else:
            self._json(404, {"object": "error", "message": "Not Found", "code": 404})

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/_control":
            with state.lock:
                state.control.update(json.loads(raw or b"{}"))
            self._json(200, {"ok": True})
        elif self.path == "/_reset":
            with state.lock:
                state.control.clear()
                state.log.clear()
            self._json(200, {"ok": True})
        elif self.path == "/v1/chat/completions":
            self._chat(json.loads(raw))
        else:
            self._json(404, {"object": "error", "message": "Not Found", "code": 404})

    def _authorized(self) -> bool:
        required = self.server.state.setting("require_key")
        if required and self.headers.get("Authorization") != f"Bearer {required}":
            self._json(401, {"error": {"message": "Invalid API key", "type": "auth", "code": 401}})
            return False
        return True

    # --- chat -----------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any]) -> None:
        state = self.server.state
        entry: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "authorization": self.headers.get("Authorization"),
            "client_port": self.client_address[1],
            "body": body,
            "disconnected": False,
            "finished": False,
        }
        with state.lock:
            state.log.append(entry)
            state.active += 1
        try:
            self._serve_chat(body, entry)
            entry["finished"] = True
        except _Gone:
            entry["disconnected"] = True
        finally:
            with state.lock:
                state.active -= 1

    def _serve_chat(self, body: dict[str, Any], entry: dict[str, Any]) -> None:
        state = self.server.state
        if not self._authorized():
            return
        messages = body.get("messages") or []
        last_user = next(
            (m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        text = last_user if isinstance(last_user, str) else json.dumps(last_user)
        commands = {name: value for name, value in _COMMAND.findall(text)}
        self._sleep(float(commands.get("first_delay") or 0))
        status = int(commands.get("status") or state.setting("fail_status", 0) or 0)
        if status:
            said = f"test upstream says {status}"
            if "echo_auth" in commands:  # some engines quote the credential they got
                said += f" (you sent {self.headers.get('Authorization')})"
            self._json(
                status,
                {
                    "object": "error",
                    "message": said,
                    "type": "BadRequestError" if status < 500 else "InternalServerError",
                    "param": None,
                    "code": status,
                },
            )
            return
        if body.get("model") != state.model:
            self._json(
                404,
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "code": 404,
                },
            )
            return
        n = int(body.get("n") or 1)
        tokens = int(commands.get("tokens") or 5)
        if body.get("max_tokens"):
            tokens = min(tokens, int(body["max_tokens"]))
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        created = int(time.time())
        cid = "chatcmpl-up-" + entry["id"][:12]
        legacy = "function_call" in commands
        tool = "tool_call" in commands or legacy
        reason = (
            ("function_call" if legacy else "tool_calls")
            if tool
            else ("length" if body.get("max_tokens") == tokens else "stop")
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens * n,
            "total_tokens": prompt_tokens + tokens * n,
        }
        if not body.get("stream") or "json" in commands:
            completion = self._completion(cid, created, n, tokens, tool, reason, usage)
            if legacy:
                for whole in completion["choices"]:
                    (made,) = whole["message"].pop("tool_calls")
                    whole["message"]["function_call"] = made["function"]
            self._json(200, completion)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if "garbage" in commands:
            self._chunk(b"data: this is not json\n\n")
            self._chunk(b"")  # the empty chunk that ends a chunked body
            return
        delay = float(commands.get("delay") or 0)
        die_after = commands.get("die_after", state.setting("die_after"))
        die_after = int(die_after) if die_after is not None else None
        hang_after = int(commands["hang_after"]) if "hang_after" in commands else None

        def chunk(choices: list[dict[str, Any]], usage_value: Any = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.model,
                "choices": choices,
            }
            if (body.get("stream_options") or {}).get("include_usage"):
                out["usage"] = usage_value
            return out

        self._event(
            chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                    for i in range(n)
                ]
            )
        )
        pieces = ['{"city": ', '"Paris"}'] if tool else [word(i) for i in range(tokens)]
        for position, piece in enumerate(pieces):
            if die_after is not None and position >= die_after:
                self.connection.shutdown(socket.SHUT_RDWR)
                raise _Gone
            if hang_after is not None and position >= hang_after:
                while True:
                    self._sleep(0.05)
            if position and delay:
                self._sleep(delay)
            choices = []
            for i in range(n):
                if tool:
                    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                    if position == 0:
                        call.update(id="call_test_1", type="function")
                        call["function"]["name"] = "get_weather"
                    delta: dict[str, Any] = {"tool_calls": [call]}
                    if legacy:
                        delta = {"function_call": call["function"]}
                else:
                    delta = {"content": piece}
                choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": None}
                if "logprobs" in commands and not tool:
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": piece,
                                "logprob": -0.25,
                                "bytes": list(piece.encode()),
                                "top_logprobs": [],
                            }
                        ]
                    }
                choices.append(choice)
            self._event(chunk(choices))
        self._event(chunk([{"index": i, "delta": {}, "finish_reason": reason} for i in range(n)]))
        if (body.get("stream_options") or {}).get("include_usage") and "no_usage" not in commands:
            self._event(chunk([], usage))
        self._event("[DONE]")
        self._chunk(b"")

    def _completion(
        self,
        cid: str,
        created: int,
        n: int,
        tokens: int,
        tool: bool,
        reason: str,
        usage: dict[str, int],
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(map(word, range(tokens))),
        }
        if tool:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_test_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": self.server.state.model,
            "choices": [
                {"index": i, "message": message, "finish_reason": reason} for i in range(n)
            ],
            "usage": usage,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a proxy opening 100 connections at once (the
    # bench's bursts through LiteLLM) had most of them wait in SYN retransmits for seconds.
    # Engines' own servers listen with a deep one (uvicorn: 2048).
    request_queue_size = 1024
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up is what several tests do on purpose


class UpstreamServer:
    """The test engine on 127.0.0.1, in a thread of this process."""

    def __init__(self, *, port: int = 0, model: str = "test-upstream-model") -> None:
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.state = _State(model)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def state(self) -> _State:
        return self.httpd.state

    def start(self) -> UpstreamServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def control(self, **settings: Any) -> None:
        with self.state.lock:
            self.state.control.update(settings)

    @property
    def log(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(entry) for entry in self.state.log]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="test-upstream-model")
    args = parser.parse_args()
    server = UpstreamServer(port=args.port, model=args.model)
    print(f"test upstream on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.httpd.serve_forever()


if __name__ == "__main__":
    main()


def deploy_upstream(*urls: str, name: str | None = None, **options: Any) -> Any:
    """A ready deployment served by the engines at `urls` (skipping the probe on the way)."""
    from models_registry.services import model_seed_ready

    options.setdefault("upstream_model", "test-upstream-model")
    model, _ = model_seed_ready(
        owner=options.pop("owner", None),
        name=name or f"up-{uuid.uuid4().hex[:8]}",
        backend="openai-compatible",
        upstream_urls=list(urls),
        **options,
    )
    return model


def forget_upstream_state(redis_client: Any) -> None:
    """Database ids repeat between tests (their rows are rolled back): what a process or Redis
    keeps by deployment or replica id must go with them."""
    from models_registry import upstreams

    upstreams._targets.clear()
    for key in redis_client.scan_iter("nebula:upstream*"):
        redis_client.delete(key)


class EngineProcess:
    """The test engine in a process of its own, for tests that kill it (kill -9)."""

    def __init__(self, port: int) -> None:
        import subprocess
        import sys

        import httpx

        self.port = port
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upstream", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("the test engine did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
