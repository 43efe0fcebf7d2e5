"""Retention: records older than NEBULA_USAGE_RETENTION_DAYS become daily totals and are
deleted, and every report counts the same requests, tokens, errors and cost as before."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.models import Sum
from django.utils import timezone

from keys.access import SYSTEM, actor_for_user
from keys.services import team_create, team_member_add
from telemetry.models import RefusalTally, UsageDaily, UsageRecord
from telemetry.retention import rollup_cutoff, rollup_thread_start, usage_rollup
from telemetry.services import TimeRange, usage_models, usage_report, usage_timeline

pytestmark = pytest.mark.django_db

_counter = iter(range(1_000_000))
NOW = timezone.now()


def record(key: Any, at: datetime, *, status: int = 200, model: str = "nebula-7b", **extra: Any):
    return UsageRecord.objects.create(
        request_id=f"req_ret{next(_counter)}",
        api_key=key,
        key_prefix=key.prefix if key else "",
        model=model,
        endpoint="/v1/chat/completions",
        status=status,
        prompt_tokens=7,
        completion_tokens=11 if status == 200 else 0,
        latency_ms=50.0,
        finish_reason="cancelled" if status == 499 else "stop",
        cost=Decimal("0.0000000123") if status == 200 else Decimal(0),
        created_at=at,
        **extra,
    )


@pytest.fixture
def history(alice, bob, django_user_model, make_key, settings):
    """Ten days of traffic on alice's own key, a team key and bob's key, refusal tallies among
    them; a retention of three days."""
    settings.NEBULA_USAGE_RETENTION_DAYS = 3
    carol = django_user_model.objects.create_user("carol", password="carol-pass-123")
    team = team_create(actor=SYSTEM, name="ml", admin=alice)
    team_member_add(actor=SYSTEM, team=team, user=carol)
    keys = {
        "alice": make_key(alice, name="alice-own")[0],
        "team": make_key(alice, name="ml-prod", team=team)[0],
        "bob": make_key(bob, name="bob-own")[0],
    }
    statuses = [200, 200, 200, 429, 499, 500, 503, 400]
    for day in range(10):
        for hour in (1, 9, 17, 23):
            at = NOW - timedelta(days=day, hours=hour)
            for index, key in enumerate(keys.values()):
                record(key, at, status=statuses[(day + hour + index) % len(statuses)])
                record(key, at, model="nebula-13b")
            record(None, at, status=500)  # a deleted key's
        minute = (NOW - timedelta(days=day, hours=2)).replace(second=0, microsecond=0)
        RefusalTally.objects.create(
            minute=minute, api_key=keys["bob"], key_prefix=keys["bob"].prefix,
            endpoint="/v1/chat/completions", model="nebula-7b", status=429,
            error_code="rate_limit_exceeded", count=3 + day,
        )  # fmt: skip
        RefusalTally.objects.create(
            minute=minute, key_prefix="", endpoint="/v1/chat/completions", status=401,
            error_code="invalid_api_key", count=2,
        )  # fmt: skip
    return {"keys": keys, "carol": carol}


def _without_percentiles(report: dict[str, Any]) -> dict[str, Any]:
    """What a rolled-up day keeps: every count and sum; not its single requests' latencies."""
    report = copy.deepcopy(report)
    for totals in [report["totals"], *report["keys"]]:
        totals.pop("latency_ms")
        totals.pop("ttft_ms")
        totals.pop("series", None)
    report.pop("series")
    return report


def _range() -> TimeRange:
    # From a UTC midnight: a rolled-up day counts whole in a range that holds its midnight.
    start = datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC) - timedelta(days=12)
    return TimeRange(since=start, until=NOW + timedelta(minutes=1))


def test_rollup_deletes_old_records_and_keeps_every_total(history, operator, alice, bob):
    actors = [SYSTEM, actor_for_user(operator), actor_for_user(alice), actor_for_user(bob)]
    actors.append(actor_for_user(history["carol"]))
    key_ids = [None, str(history["keys"]["team"].pk)]
    before = {
        (index, key_id, model): _without_percentiles(
            usage_report(actor=actor, time_range=_range(), key_id=key_id, model=model)
        )
        for index, actor in enumerate(actors)
        for key_id in key_ids
        for model in (None, "nebula-13b")
    }
    timelines = {
        index: usage_timeline(actor=actor, time_range=_range())
        for index, actor in enumerate(actors)
    }
    models_before = [usage_models(actor=actor) for actor in actors]
    cost_before = UsageRecord.objects.aggregate(total=Sum("cost"))["total"]
    count_before = UsageRecord.objects.count()

    result = usage_rollup()

    cutoff = rollup_cutoff()
    assert cutoff is not None and cutoff.hour == 0 and cutoff.minute == 0
    assert not UsageRecord.objects.filter(created_at__lt=cutoff).exists()
    assert not RefusalTally.objects.filter(minute__lt=cutoff).exists()
    assert UsageRecord.objects.filter(created_at__gte=cutoff).exists()  # recent ones stay
    assert result.records == count_before - UsageRecord.objects.count() > 0
    assert result.tallies > 0
    assert UsageDaily.objects.count() < result.records  # rolled up, not copied
    for (index, key_id, model), report in before.items():
        after = usage_report(actor=actors[index], time_range=_range(), key_id=key_id, model=model)
        assert _without_percentiles(after) == report, (index, key_id, model)
    for index, actor in enumerate(actors):
        # The chart puts a rolled-up day at its midnight; its sums are what they were.
        then = timelines[index]["points"]
        now = usage_timeline(actor=actor, time_range=_range())["points"]
        for field in ("requests", "errors", "tokens"):
            assert sum(p[field] for p in now) == sum(p[field] for p in then), field
    assert [usage_models(actor=actor) for actor in actors] == models_before
    rolled_cost = UsageDaily.objects.aggregate(total=Sum("cost"))["total"]
    kept_cost = UsageRecord.objects.aggregate(total=Sum("cost"))["total"]
    assert rolled_cost + kept_cost == cost_before  # exact: Decimal all the way


def test_a_second_rollup_changes_nothing_and_late_records_join_their_day(history, operator):
    usage_rollup()
    rows = list(UsageDaily.objects.order_by("pk").values())
    assert usage_rollup().records == 0
    assert list(UsageDaily.objects.order_by("pk").values()) == rows
    # A record the ledger wrote late (its worker was cut off from Redis for days) for a day
    # already rolled up: added to that day's row, not lost and not a second row.
    old = NOW - timedelta(days=8, hours=1)
    key = history["keys"]["alice"]
    day_row = UsageDaily.objects.get(
        day=datetime(old.year, old.month, old.day, tzinfo=UTC),
        api_key=key,
        model="nebula-13b",
        status=200,
    )
    requests, tokens = day_row.requests, day_row.prompt_tokens
    record(key, old, model="nebula-13b")
    assert usage_rollup().records == 1
    day_row.refresh_from_db()
    assert UsageDaily.objects.count() == len(rows)
    assert (day_row.requests, day_row.prompt_tokens) == (requests + 1, tokens + 7)


def _days() -> list[tuple[Any, ...]]:
    return sorted(
        UsageDaily.objects.values_list(
            "day", "api_key_id", "key_prefix", "model", "status", "requests", "cancelled",
            "prompt_tokens", "completion_tokens", "cost",
        ),
        key=lambda row: [str(value) for value in row],
    )  # fmt: skip


class _Undo(Exception):
    pass


def test_rollup_in_small_batches_gives_the_same_days(history):
    whole: list[tuple[Any, ...]] = []

    def roll_up_and_undo() -> None:
        with transaction.atomic():
            usage_rollup()
            whole.extend(_days())
            raise _Undo

    with pytest.raises(_Undo):
        roll_up_and_undo()
    assert not UsageDaily.objects.exists()
    usage_rollup(batch=7)  # a day split across many batches, rows added to many times
    assert _days() == whole


def test_a_retention_of_zero_keeps_every_record(history, settings):
    settings.NEBULA_USAGE_RETENTION_DAYS = 0
    count = UsageRecord.objects.count()
    result = usage_rollup()
    assert result.cutoff is None and result.records == 0
    assert UsageRecord.objects.count() == count and not UsageDaily.objects.exists()


def test_metrics_over_rolled_up_days_show_each_person_only_theirs(client, history, bob):
    usage_rollup()
    client.force_login(history["carol"])
    since = _range().since.isoformat().replace("+", "%2B")
    report = client.get(f"/metrics?since={since}").json()
    assert [entry["key"]["name"] for entry in report["keys"]] == ["ml-prod"]
    team_rows = UsageDaily.objects.filter(api_key=history["keys"]["team"])
    rolled = team_rows.aggregate(n=Sum("requests"))["n"]
    recent = UsageRecord.objects.filter(api_key=history["keys"]["team"]).count()
    assert report["totals"]["requests"] == rolled + recent
    client.force_login(bob)
    report = client.get(f"/metrics?since={since}").json()
    assert [entry["key"]["name"] for entry in report["keys"]] == ["bob-own"]


def test_the_command_runs_the_rollup(history, capsys):
    call_command("rollup_usage")
    assert "Rolled up" in capsys.readouterr().out
    assert UsageDaily.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_rollups_at_once_count_each_record_once(history, operator):
    """Two beats by mistake, or the command during the task: every record in one day's row."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite runs one writer at a time: nothing to race (CI's PostgreSQL run)")
    cutoff = rollup_cutoff()
    rolled = UsageRecord.objects.filter(created_at__lt=cutoff).count()
    tallied = RefusalTally.objects.filter(minute__lt=cutoff).aggregate(n=Sum("count"))["n"]
    before = _without_percentiles(usage_report(actor=SYSTEM, time_range=_range()))
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def rollup() -> None:
        try:
            start.wait()
            usage_rollup(batch=10)
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rollup) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert UsageDaily.objects.aggregate(n=Sum("requests"))["n"] == rolled + tallied
    assert _without_percentiles(usage_report(actor=SYSTEM, time_range=_range())) == before


def test_the_standalone_layouts_thread_rolls_up_periodically(history, monkeypatch):
    calls = threading.Semaphore(0)
    monkeypatch.setattr("telemetry.retention.usage_rollup", lambda: calls.release())
    stop = rollup_thread_start(interval=0.05)
    try:
        assert calls.acquire(timeout=5) and calls.acquire(timeout=5)  # twice, by itself
    finally:
        stop.set()
