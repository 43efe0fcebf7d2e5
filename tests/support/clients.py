"""Clients for fault tests: a chat request running in a thread that keeps everything it got,
and a look at the jobs in a Redis server."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import redis


class ChatCall(threading.Thread):
    """One POST /v1/chat/completions in a thread. Streams are parsed as they arrive."""

    def __init__(self, url: str, secret: str, body: dict[str, Any], timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.url, self.secret, self.body, self.timeout = url, secret, body, timeout
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.json: Any = None
        self.events: list[Any] = []  # parsed `data:` payloads of a stream; "[DONE]" as is
        self.exception: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.url + "/v1/chat/completions",
                json=self.body,
                headers={"Authorization": f"Bearer {self.secret}"},
                timeout=self.timeout,
            ) as response:
                self.status = response.status_code
                self.headers = dict(response.headers)
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            data = line.removeprefix("data: ")
                            self.events.append(data if data == "[DONE]" else json.loads(data))
                        else:
                            assert line == "" or line.startswith(":"), line
                else:
                    self.json = json.loads(response.read())
        except BaseException as error:  # kept for the test to look at
            self.exception = error
        finally:
            self.finished_at = time.monotonic()

    def go(self) -> ChatCall:
        self.start()
        return self

    def result(self, timeout: float = 60) -> ChatCall:
        self.join(timeout)
        assert not self.is_alive(), f"no answer within {timeout} s"
        assert self.exception is None, repr(self.exception)
        return self

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    @property
    def text(self) -> str:
        if self.json is not None:
            return str(self.json["choices"][0]["message"]["content"])
        return "".join(
            choice["delta"].get("content") or ""
            for event in self.events
            if isinstance(event, dict) and "choices" in event
            for choice in event["choices"]
        )

    @property
    def content_chunks(self) -> int:
        return sum(
            1
            for event in self.events
            if isinstance(event, dict)
            and any(choice["delta"].get("content") for choice in event.get("choices", []))
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    def assert_well_formed(self) -> None:
        """An answer a client can read: a JSON body (completion or error), or a stream that ends
        with [DONE], where only the chunk before [DONE] may be an error."""
        assert self.exception is None, repr(self.exception)
        if self.events:
            assert self.status == 200
            assert self.events[-1] == "[DONE]", self.events[-3:]
            assert all(isinstance(e, dict) for e in self.events[:-1])
            assert all("error" not in e for e in self.events[:-2])
            if self.errors:
                assert set(self.errors[0]) == {"message", "type", "param", "code"}
        elif self.status == 200:
            assert self.json["object"] == "chat.completion", self.json
        else:
            assert self.status is not None and self.status >= 400
            assert set(self.json) == {"error"}
            assert set(self.json["error"]) == {"message", "type", "param", "code"}


def jobs_in(client: redis.Redis) -> dict[str, dict[str, str]]:
    """request id → the job's hash (state, worker), for every job in Redis."""
    found = {}
    for key in client.scan_iter("nebula:job:*"):
        raw: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        found[bytes(key).decode().removeprefix("nebula:job:")] = fields
    return found


def worker_pid(owner: str) -> int:
    """The process id in a job owner, `{host}:{pid}:{tag}/{run}`."""
    return int(owner.split("/")[0].split(":")[1])
