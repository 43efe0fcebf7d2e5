"""Shared fixtures: personas, keys, models, Redis, and a live Nebula (daphne + Celery workers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from tests.support.stack import Stack, database_url

# Simulated time in the live stack: a tenth of real GPU time. A 7B model on an H100 decodes a
# token in ~0.6 ms and loads in ~0.7 s; tests that need slow generation deploy a slower model.
LIVE_TIME_SCALE = "0.1"


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis() -> None:
    """Start every run from an empty test Redis database."""
    from infra.redis_client import get_redis

    get_redis().flushdb()


@pytest.fixture(autouse=True)
def _fresh_process_caches() -> None:
    """Each test starts with empty key and model caches in this process."""
    from infra.epoch import observe_epoch

    observe_epoch(f"test-{uuid.uuid4().hex}")


@pytest.fixture
def redis_client() -> Any:
    from infra.redis_client import get_redis

    return get_redis()


# --- Personas --------------------------------------------------------------------------------


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(
        "olivia-operator", password="operator-pass-123", is_staff=True
    )


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="alice-pass-123")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="bob-pass-123")


@pytest.fixture
def make_key() -> Any:
    """`make_key(owner, **options) -> (ApiKey, secret)`, made by the system (no rules apply)."""
    from infra.redis_client import get_redis
    from keys.access import SYSTEM
    from keys.ratelimit import rpm_key, tpm_key
    from keys.services import key_create

    def make(owner: Any, name: str = "test key", **options: Any) -> tuple[Any, str]:
        created = key_create(actor=SYSTEM, owner=owner, name=name, **options)
        # Key ids start again in each test's fresh tables: forget the limits of an earlier
        # test's key that had this id.
        get_redis().delete(rpm_key(created.key.pk), tpm_key(created.key.pk))
        return created.key, created.secret

    return make


@pytest.fixture
def ready_model() -> Any:
    """`ready_model(name="nebula-7b", **options) -> DeployedModel`, ready at once."""
    from models_registry.services import model_seed_ready

    def make(name: str = "nebula-7b", **options: Any) -> Any:
        options.setdefault("params_billions", 7)
        options.setdefault("gpu_type", "H100-80GB")
        model, _ = model_seed_ready(owner=None, name=name, **options)
        return model

    return make


# --- The live stack ----------------------------------------------------------------------------


def live_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from django.db import connection

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "NEBULA_TESTING": "1",
        "NEBULA_LIVE_SERVER": "1",
        "DATABASE_URL": database_url(connection.settings_dict),
        "NEBULA_SIM_TIME_SCALE": LIVE_TIME_SCALE,
        "NEBULA_WORKER_TTL": "2",
        "NEBULA_HEARTBEAT_INTERVAL": "0.5",
        "NEBULA_QUEUE_TIMEOUT": "5",
        "NEBULA_WORKER_CONCURRENCY": "64",
        # The test process moves usage records into the database itself (ledger_flush), so no
        # server writes while pytest-django empties the tables between tests.
        "NEBULA_WORKER_LEDGER": "false",
        "NEBULA_WORKER_RECONCILER": "false",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


@pytest.fixture(scope="session")
def stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Stack]:
    """Two daphne web processes and two Celery worker processes, for the whole session."""
    with django_db_blocker.unblock():
        env = live_env()
    live = Stack(env=env)
    try:
        live.start_worker()
        live.start_worker()
        live.start_web()
        live.start_web()
        live.wait_workers(2)
        yield live
    finally:
        live.stop()


@pytest.fixture
def live(stack: Stack, transactional_db: Any) -> Iterator[Stack]:
    """The live stack, for a test whose data must be committed (the servers read it)."""
    yield stack
    from infra.epoch import epoch_bump
    from telemetry.ledger import ledger_flush

    # Settle what the test left in flight before its rows are flushed, then make every server
    # drop its caches of them.
    ledger_flush()
    epoch_bump()


@pytest.fixture
def openai_client(live: Stack) -> Any:
    import openai

    def make(secret: str, *, url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=(url or live.url) + "/v1", api_key=secret, max_retries=0)

    return make


# --- Upstream engines (the openai-compatible backend) -----------------------------------------


@pytest.fixture
def engine() -> Iterator[Any]:
    """A test engine (tests/support/upstream.py) on loopback, in a thread of this process."""
    from tests.support.upstream import UpstreamServer

    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def second_engine() -> Iterator[Any]:
    from tests.support.upstream import UpstreamServer

    server = UpstreamServer().start()
    yield server
    server.stop()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # Live-stack tests are slower; run them after the fast ones so failures show up early.
    # Browser tests go last: while the browser is open, its event loop sits on the main thread
    # (see tests/e2e/conftest.py).
    items.sort(
        key=lambda item: (
            "live" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("integration") is not None,
            item.get_closest_marker("browser") is not None,
        )
    )


assert settings.REDIS_URL.endswith(os.environ.get("NEBULA_TEST_REDIS_DB", "15")), (
    "tests must run against the test Redis database"
)
