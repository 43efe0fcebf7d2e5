"""The web process's side of a job whose worker died: what it resends, against real Redis."""

import asyncio
import time
import uuid
from types import SimpleNamespace

import orjson

from inference import completion as completion_module
from inference.completion import Completion
from inference.jobs import job_key
from tests.support.jobs import make_job


def test_a_resent_job_gets_the_whole_queue_timeout_again(settings, redis_client, monkeypatch):
    # A job that ran for a minute before its worker died: counted from its first enqueue, its
    # queue deadline is long gone, and the resent job would be abandoned with a 503
    # queue_timeout the moment it had to wait for a GPU slot.
    settings.NEBULA_QUEUE_TIMEOUT = 5.0
    queue = f"nebula:test-queue:{uuid.uuid4().hex}"  # not the queue the live workers read
    monkeypatch.setattr(completion_module, "QUEUE", queue)
    job = make_job(enqueued_at=time.time() - 60)
    redis_client.hset(job_key(job["id"]), mapping={"state": "running", "worker": "w1/run1"})
    ctx = SimpleNamespace(request_id=job["id"])
    admitted = SimpleNamespace(admission=SimpleNamespace(headers=dict))
    completion = Completion(ctx, None, asyncio.Queue(), job, admitted, caller=None)

    asyncio.run(completion._worker_lost("w1/run1"))

    assert completion.attempts == 2
    assert completion.deadline > time.time() + 4
    [message] = redis_client.lrange(queue, 0, -1)
    assert orjson.loads(message)  # the job itself, sent again
    redis_client.delete(queue)
