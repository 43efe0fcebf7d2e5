"""Embedding jobs on the worker side against real Redis, without Celery: the runner dispatches
on the job's kind, sends the vectors in its final message and records the job once."""

import base64
import struct
import time

from inference.embedding_tokens import tokenize_texts
from inference.engine.embeddings import EmbeddingModel
from inference.jobs import CANCEL, JOB_TTL_SECONDS, job_key
from inference.runner import completion_execute
from infra.redis_client import get_redis
from models_registry.embedding_models import ALL_MINILM_L6_V2
from tests.support.jobs import make_job, usage_events


def embedding_job(listener, texts, dimensions=None):
    inputs = tokenize_texts(ALL_MINILM_L6_V2, texts)
    return make_job(
        model=ALL_MINILM_L6_V2.name,
        reply_to=listener.channel,
        stream=False,
        prompt_tokens=sum(len(ids) for ids in inputs),
        max_tokens=0,
        endpoint="/v1/embeddings",
        embedding={"inputs": inputs, "dimensions": dimensions},
    )


def test_an_embedding_job_sends_its_vectors_and_bills_its_tokens(worker, listener):
    job = embedding_job(listener, ["first text", "a second, longer text"], dimensions=32)
    completion_execute(job, worker)
    time.sleep(0.2)
    (done,) = listener.of(job["id"])
    assert done["t"] == "done" and "texts" not in done
    vectors = [struct.unpack("<32f", base64.b64decode(v)) for v in done["embeddings"]]
    assert len(vectors) == 2 and all(abs(sum(x * x for x in v) - 1) < 1e-5 for v in vectors)
    tokens = job["prompt_tokens"]
    usage = done["usage"]
    assert usage == {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    (event,) = usage_events(job["id"])
    assert (event["status"], event["endpoint"]) == (200, "/v1/embeddings")
    assert (event["prompt_tokens"], event["completion_tokens"]) == (tokens, 0)


def test_an_embedding_job_whose_client_left_is_recorded_as_stopped(monkeypatch, worker, listener):
    job = embedding_job(listener, ["nobody waits for this"])

    def embed_while_the_client_leaves(self, inputs, *, dimensions=None):
        CANCEL(get_redis(), [job_key(job["id"])], [JOB_TTL_SECONDS])
        return [b"\0" * 4 * ALL_MINILM_L6_V2.dimensions for _ in inputs]

    monkeypatch.setattr(EmbeddingModel, "embed", embed_while_the_client_leaves)
    completion_execute(job, worker)
    time.sleep(0.2)
    assert listener.of(job["id"], "done") == []
    (event,) = usage_events(job["id"])
    assert (event["status"], event["finish_reason"]) == (499, "cancelled")
    assert event["prompt_tokens"] == job["prompt_tokens"]  # the model ran: its input is billed


def test_an_embedding_job_whose_model_fails_is_a_500_recorded_once(monkeypatch, worker, listener):
    job = embedding_job(listener, ["boom"])

    def broken(self, inputs, *, dimensions=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(EmbeddingModel, "embed", broken)
    completion_execute(job, worker)
    time.sleep(0.2)
    (error,) = listener.of(job["id"])
    assert (error["t"], error["code"]) == ("error", "engine_error")
    (event,) = usage_events(job["id"])
    assert event["status"] == 500
