"""A key that stops being usable stops its requests under way, not only its next ones."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from keys.access import SYSTEM
from keys.services import key_revoke
from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord
from tests.support.clients import ChatCall
from tests.support.faults import wait_until

pytestmark = pytest.mark.integration

# ~10 ms a token at the live stack's time scale: a 3,000-token reply takes half a minute.
SLOW = {"params_billions": 20, "gpu_type": "L4", "gpus_per_replica": 2}
LONG = {
    "model": "slow-one",
    "messages": [{"role": "user", "content": "Tell me everything about GPUs."}],
    "max_tokens": 3000,
    "ignore_eos": True,
    "stream": True,
}


def _stopped_stream(call: ChatCall, code: str) -> UsageRecord:
    call.result(timeout=10)
    call.assert_well_formed()  # an error chunk, then [DONE]
    assert [error["code"] for error in call.errors] == [code]

    def recorded() -> UsageRecord | None:
        ledger_flush()  # the worker records the job once it sees it stopped, a token later
        return UsageRecord.objects.filter(request_id=call.request_id).first()

    record = wait_until(recorded, timeout=5)
    assert (record.status, record.error_code, record.finish_reason) == (401, code, "cancelled")
    assert record.completion_tokens >= call.content_chunks > 0  # what was sent is billed
    return record


def test_revoking_a_key_stops_its_streams_within_a_second(live, alice, make_key, ready_model):
    ready_model("slow-one", **SLOW)
    key, secret = make_key(alice, rpm_limit=100)
    calls = [ChatCall(url, secret, LONG).go() for url in live.urls]  # one per web process
    wait_until(lambda: all(call.content_chunks >= 5 for call in calls), timeout=20)
    revoked_at = time.monotonic()
    key_revoke(actor=SYSTEM, key=key)
    for call in calls:
        _stopped_stream(call, "key_revoked")
        assert call.finished_at - revoked_at < 1.0


def test_a_key_expiring_mid_stream_stops_it(live, alice, make_key, ready_model):
    ready_model("slow-one", **SLOW)
    _, secret = make_key(alice, rpm_limit=100, expires_at=timezone.now() + timedelta(seconds=3))
    call = ChatCall(live.url, secret, LONG).go()
    wait_until(lambda: call.content_chunks >= 5, timeout=20)
    _stopped_stream(call, "key_expired")
