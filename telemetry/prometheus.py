"""Prometheus exposition, named after vLLM's metrics where they overlap (`vllm:` → `nebula:`).

Counters and histograms are aggregated in one Redis hash by the usage ledger (which sees every
request, from every web process and worker on every machine), so one scrape of any web process
shows the whole fleet. Gauges (running and waiting sequences, live workers) are read from the
GPU slot and heartbeat sets at scrape time. prometheus-client renders the text format.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from inference.heartbeats import live_workers
from inference.slots import slot_usage
from infra.redis_client import get_redis
from models_registry.models import DeployedModel, ModelState
from telemetry.events import GENERATION_ENDPOINTS, ITL_BUCKETS_MS, UsageEvent

HASH = "nebula:prometheus"
PREFIX = "nebula:"

# Bucket bounds in seconds, as vLLM's.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = tuple(bound / 1000 for bound in ITL_BUCKETS_MS)

HISTOGRAMS: dict[str, tuple[tuple[float, ...], str]] = {
    "time_to_first_token_seconds": (TTFT_BUCKETS, "Time to first token."),
    "e2e_request_latency_seconds": (E2E_BUCKETS, "End-to-end request latency."),
    "request_queue_time_seconds": (QUEUE_BUCKETS, "Time spent waiting for a GPU slot."),
    "inter_token_latency_seconds": (ITL_BUCKETS, "Time between consecutive output tokens."),
}
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt_tokens": (("model_name",), "Prompt tokens processed."),
    "generation_tokens": (("model_name",), "Generation tokens produced."),
    "request_success": (("model_name", "finished_reason"), "Requests that finished."),
    "requests": (("key_prefix", "status"), "API requests by key prefix and HTTP status."),
}


def _field(metric: str, labels: Iterable[tuple[str, str]], suffix: str = "") -> str:
    return f"{metric}|{','.join(f'{k}={v}' for k, v in labels)}|{suffix}"


def _bucket_index(bounds: tuple[float, ...], value: float) -> int:
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


def requests_field(key_prefix: str, status: int) -> str:
    """The hash field of the `requests` counter for one key prefix and status."""
    return _field("requests", (("key_prefix", key_prefix), ("status", str(status))))


def metrics_observe(events: list[UsageEvent]) -> None:
    """Fold a batch of usage records into the shared aggregates (one pipeline)."""
    if not events:
        return
    increments: dict[str, float] = defaultdict(float)

    def observe(metric: str, model: str, seconds: float) -> None:
        bounds = HISTOGRAMS[metric][0]
        labels = (("model_name", model),)
        increments[_field(metric, labels, str(_bucket_index(bounds, seconds)))] += 1
        increments[_field(metric, labels, "sum")] += seconds
        increments[_field(metric, labels, "count")] += 1

    for event in events:
        model = event["model"] or "-"
        increments[requests_field(event["key_prefix"] or "-", event["status"])] += 1
        if event["status"] >= 400 and event["status"] != 499:
            continue
        increments[_field("prompt_tokens", (("model_name", model),))] += event["prompt_tokens"]
        increments[_field("generation_tokens", (("model_name", model),))] += event[
            "completion_tokens"
        ]
        if event["endpoint"] not in GENERATION_ENDPOINTS:
            continue
        reason = event["finish_reason"] or "stop"
        increments[
            _field("request_success", (("model_name", model), ("finished_reason", reason)))
        ] += 1
        if event["ttft_ms"] is not None:
            observe("time_to_first_token_seconds", model, event["ttft_ms"] / 1000)
        if event["latency_ms"] is not None:
            observe("e2e_request_latency_seconds", model, event["latency_ms"] / 1000)
        if event["queue_ms"] is not None:
            observe("request_queue_time_seconds", model, event["queue_ms"] / 1000)
        if event["itl_hist"]:
            labels = (("model_name", model),)
            for index, count in enumerate(event["itl_hist"]):
                if count:
                    increments[_field("inter_token_latency_seconds", labels, str(index))] += count
            increments[_field("inter_token_latency_seconds", labels, "sum")] += (
                event["itl_sum_ms"] / 1000
            )
            increments[_field("inter_token_latency_seconds", labels, "count")] += sum(
                event["itl_hist"]
            )
    pipe = get_redis().pipeline(transaction=False)
    for field, amount in increments.items():
        pipe.hincrbyfloat(HASH, field, amount)
    pipe.execute()


Parsed = dict[str, dict[tuple[tuple[str, str], ...], dict[str, float]]]


def _parse(raw: dict[Any, Any]) -> Parsed:
    parsed: dict[str, dict[tuple[tuple[str, str], ...], dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for field_b, value_b in raw.items():
        metric, labels_text, suffix = field_b.decode().split("|")
        labels = tuple(tuple(pair.split("=", 1)) for pair in labels_text.split(",") if pair)
        parsed[metric][labels][suffix] = float(value_b)
    return parsed


class NebulaCollector(Collector):
    def collect(self) -> Iterator[Any]:
        parsed = _parse(get_redis().hgetall(HASH))
        for metric, (label_names, documentation) in COUNTERS.items():
            counter = CounterMetricFamily(PREFIX + metric, documentation, labels=label_names)
            for labels, values in sorted(parsed.get(metric, {}).items()):
                counter.add_metric([value for _, value in labels], values.get("", 0.0))
            yield counter
        for metric, (bounds, documentation) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(PREFIX + metric, documentation, labels=["model_name"])
            for labels, values in sorted(parsed.get(metric, {}).items()):
                cumulative, buckets = 0.0, []
                for index, bound in enumerate((*bounds, float("inf"))):
                    cumulative += values.get(str(index), 0.0)
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                histogram.add_metric(
                    [value for _, value in labels], buckets, sum_value=values.get("sum", 0.0)
                )
            yield histogram
        running = GaugeMetricFamily(
            PREFIX + "num_requests_running", "Sequences holding a GPU slot.", labels=["model_name"]
        )
        waiting = GaugeMetricFamily(
            PREFIX + "num_requests_waiting",
            "Sequences waiting for a GPU slot.",
            labels=["model_name"],
        )
        for name in DeployedModel.objects.filter(state=ModelState.READY).values_list(
            "name", flat=True
        ):
            in_use, queued = slot_usage(name)
            running.add_metric([name], in_use)
            waiting.add_metric([name], queued)
        yield running
        yield waiting
        yield GaugeMetricFamily(
            PREFIX + "workers_live",
            "Workers that reported a heartbeat recently.",
            value=len(live_workers()),
        )


def prometheus_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NebulaCollector())
    return generate_latest(registry)
