"""More workers, more capacity: two real Celery worker processes share the queue."""

from concurrent.futures import ThreadPoolExecutor

import openai

from telemetry.ledger import ledger_flush
from telemetry.models import UsageRecord


def test_two_worker_processes_both_take_jobs(live, alice, make_key, ready_model):
    ready_model("nebula-7b", replicas=4, max_concurrent_seqs=16)
    _, secret = make_key(alice, rpm_limit=10_000)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)

    def ask(index: int) -> str:
        response = client.chat.completions.with_raw_response.create(
            model="nebula-7b",
            messages=[{"role": "user", "content": f"question {index}"}],
            max_tokens=40,
            extra_body={"ignore_eos": True},
        )
        return response.headers["x-request-id"]

    with ThreadPoolExecutor(max_workers=24) as pool:
        request_ids = list(pool.map(ask, range(48)))

    ledger_flush()
    records = UsageRecord.objects.filter(request_id__in=request_ids)
    assert records.count() == 48
    per_worker = {}
    for record in records:
        per_worker[record.worker] = per_worker.get(record.worker, 0) + 1
    assert len(per_worker) == 2, per_worker
    assert all(count >= 5 for count in per_worker.values()), per_worker
