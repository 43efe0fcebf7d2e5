"""The Procfile's `beat` line, run as the supervised layout runs it, makes the live workers roll
old usage records up: the schedule, the task's name and the workers' task discovery agree."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from telemetry.models import UsageDaily, UsageRecord
from tests.support.stack import _spawn

pytestmark = pytest.mark.integration


def test_beat_from_the_procfile_rolls_up_records_past_the_retention(live, alice, make_key):
    key, _ = make_key(alice, name="old-traffic")
    old = timezone.now() - timedelta(days=45)  # past the workers' default 30-day retention
    for index in range(5):
        UsageRecord.objects.create(
            request_id=f"req_beat{index}", api_key=key, key_prefix=key.prefix,
            model="nebula-7b", endpoint="/v1/chat/completions", status=200,
            prompt_tokens=3, completion_tokens=4, cost=Decimal("0.01"), created_at=old,
        )  # fmt: skip
    recent = UsageRecord.objects.create(
        request_id="req_beat_recent", api_key=key, key_prefix=key.prefix, model="nebula-7b",
        endpoint="/v1/chat/completions", status=200, created_at=timezone.now(),
    )  # fmt: skip
    beat = _spawn(
        f"beat-{time.monotonic_ns()}",
        [sys.executable, "-m", "infra.supervise", "run", "--only", "beat", "Procfile"],
        {**live.env, "NEBULA_USAGE_ROLLUP_SECONDS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while UsageRecord.objects.filter(created_at__lt=old + timedelta(days=1)).exists():
            assert beat.alive(), beat.tail()
            assert time.monotonic() < deadline, beat.tail()
            time.sleep(0.5)
    finally:
        beat.kill()
    [day] = UsageDaily.objects.filter(api_key=key)
    assert (day.requests, day.prompt_tokens, day.completion_tokens) == (5, 15, 20)
    assert day.cost == Decimal("0.05")
    assert UsageRecord.objects.filter(pk=recent.pk).exists()
