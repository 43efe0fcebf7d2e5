"""Worker-side fixtures: a worker runtime (no Celery), and a listener on a reply channel."""

import pytest

from inference.workers import WorkerRuntime
from tests.support.jobs import ReplyListener


@pytest.fixture
def worker():
    return WorkerRuntime(concurrency=8)


@pytest.fixture
def listener():
    listening = ReplyListener()
    yield listening
    listening.close()
