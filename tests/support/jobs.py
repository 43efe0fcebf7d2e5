"""Building inference jobs and listening to their replies, for worker-side tests."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson

from inference.jobs import JobPayload
from infra.redis_client import get_redis, new_sync_connection
from models_registry.gpus import GPU_TYPES


def make_job(
    *,
    params_billions: float = 7,
    gpu: str = "H100-80GB",
    gpus: int = 1,
    capacity: int = 8,
    model: str | None = None,
    stream: bool = True,
    reply_to: str | None = None,
    **overrides: Any,
) -> JobPayload:
    spec = GPU_TYPES[gpu]
    job: JobPayload = {
        "id": f"req_{uuid.uuid4().hex}",
        "reply_to": reply_to or f"nebula:reply:test-{uuid.uuid4().hex}",
        "key_id": 1,
        "key_prefix": "nb_testtest",
        "model": {
            "name": model or f"test-{uuid.uuid4().hex[:8]}",
            "parameters": int(params_billions * 1e9),
            "gpus": gpus,
            "bandwidth_tb_s": spec.bandwidth_tb_s,
            "bf16_tflops": spec.bf16_tflops,
            "capacity": capacity,
            "context_length": 8192,
        },
        "prompt_text": "user: hello",
        "user_text": "hello",
        "prompt_tokens": 10,
        "max_tokens": 8,
        "stop": [],
        "n": 1,
        "seed": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "ignore_eos": False,
        "min_tokens": 0,
        "stream": stream,
        "endpoint": "/v1/chat/completions",
        "client": "api",
        "enqueued_at": time.time(),
        "tpm_reserved": 0,
        "tpm_limit": None,
    }
    job.update(overrides)  # type: ignore[typeddict-item]
    return job


class ReplyListener:
    """Subscribes to a reply channel (like a web process) and keeps what arrives."""

    def __init__(self) -> None:
        self.channel = f"nebula:reply:test-{uuid.uuid4().hex}"
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self._connection = new_sync_connection()
        self._pubsub = self._connection.pubsub()
        self._pubsub.subscribe(self.channel)
        # Like a web process: nothing is sent our way before Redis confirms the subscription.
        while (confirmation := self._pubsub.get_message(timeout=1.0)) is None:
            pass
        assert confirmation["type"] == "subscribe"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message and message["type"] == "message":
                self.messages.append((time.monotonic(), orjson.loads(message["data"])))

    def of(self, request_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["r"] == request_id and kind in (None, m["t"])]

    def at(self, request_id: str, kind: str) -> float:
        return next(t for t, m in self.messages if m["r"] == request_id and m["t"] == kind)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()
        self._connection.close()


def usage_events(request_id: str) -> list[dict[str, Any]]:
    from telemetry.events import STREAM

    entries: Any = get_redis().xrange(STREAM)
    events = [orjson.loads(fields[b"d"]) for _, fields in entries]
    return [event for event in events if event["request_id"] == request_id]
