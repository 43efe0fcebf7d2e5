"""Usage reports: what /metrics, the dashboard and operators read, computed from usage records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from billing.spend import spend_report
from infra.errors import InvalidRequest
from keys.access import Actor, keys_visible_to
from keys.models import ApiKey
from models_registry.services import fleet_snapshot
from telemetry.events import GENERATION_ENDPOINTS
from telemetry.health import health_report
from telemetry.models import RefusalTally, UsageDaily, UsageRecord

MAX_RANGE = timedelta(days=31)
SERIES_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class TimeRange:
    since: datetime
    until: datetime

    @classmethod
    def parse(cls, since: str | None, until: str | None, window: str | None = None) -> TimeRange:
        """`since`/`until` as ISO 8601 or Unix seconds; `window` like `15m`, `24h`, `7d`."""
        end = parse_time(until, "until") if until else timezone.now()
        start = parse_time(since, "since") if since else end - _parse_window(window or "24h")
        if start >= end:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        if end - start > MAX_RANGE:
            raise InvalidRequest("The time range can span at most 31 days.", param="since")
        return cls(since=start, until=end)


def parse_time(text: str, param: str) -> datetime:
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(
            f"'{param}' must be an ISO 8601 time or Unix seconds.", param=param
        ) from None
    return parsed if parsed.tzinfo else timezone.make_aware(parsed, UTC)


def _parse_window(text: str) -> timedelta:
    units = {"m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise InvalidRequest("'window' looks like 15m, 24h or 7d.", param="window")
    try:
        return timedelta(**{units[unit]: int(number)})
    except OverflowError:
        raise InvalidRequest("The time range can span at most 31 days.", param="window") from None


def percentiles(
    records: QuerySet[UsageRecord], field: str, points: tuple[float, ...]
) -> dict[str, float | None]:
    """Nearest-rank percentiles computed by the database: one sorted row per point."""
    values = records.exclude(**{f"{field}__isnull": True})
    count = values.count()
    result: dict[str, float | None] = {}
    for point in points:
        label = f"p{round(point * 100)}"
        if not count:
            result[label] = None
            continue
        rank = max(int(-(-point * count // 1)) - 1, 0)  # ceil(point·count) - 1
        value = values.order_by(field).values_list(field, flat=True)[rank]
        result[label] = round(float(value), 2)
    return result


def _aggregate(
    records: QuerySet[UsageRecord],
    tallies: QuerySet[RefusalTally] | None = None,
    days: QuerySet[UsageDaily] | None = None,
) -> dict[str, Any]:
    """Totals of `records`, with the refusals counted in `tallies` (telemetry.refusals) and the
    rolled-up days in `days` (telemetry.retention)."""
    totals = records.aggregate(
        requests=Count("id"),
        successes=Count("id", filter=Q(status__lt=400)),
        rate_limited=Count("id", filter=Q(status=429)),
        cancelled=Count("id", filter=Q(finish_reason="cancelled")),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
    )
    totals["prompt_tokens"] = totals["prompt_tokens"] or 0
    totals["completion_tokens"] = totals["completion_tokens"] or 0
    errors = records.filter(status__gte=400).values("status").annotate(n=Count("id"))
    by_status = {row["status"]: row["n"] for row in errors}
    if days is not None:
        _add_days(totals, by_status, days)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    if tallies is not None:
        for row in tallies.values("status").annotate(n=Sum("count")):
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
            totals["requests"] += row["n"]
            if row["status"] == 429:
                totals["rate_limited"] += row["n"]
    totals["errors"] = {str(status): by_status[status] for status in sorted(by_status)}
    completions = records.filter(endpoint__in=GENERATION_ENDPOINTS, status=200)
    totals["latency_ms"] = percentiles(completions, "latency_ms", (0.5, 0.95))
    totals["ttft_ms"] = percentiles(completions, "ttft_ms", (0.5, 0.95))
    return totals


def _add_days(
    totals: dict[str, Any], by_status: dict[int, int], days: QuerySet[UsageDaily]
) -> None:
    """Rolled-up days count as their records did (the requests they summarize)."""
    # Aliases that are not the fields' names: Django refuses an aggregate named like a field.
    names = ["requests", "successes", "rate_limited", "cancelled"]
    names += ["prompt_tokens", "completion_tokens"]
    sums = days.aggregate(
        sum_requests=Sum("requests"),
        sum_successes=Sum("requests", filter=Q(status__lt=400)),
        sum_rate_limited=Sum("requests", filter=Q(status=429)),
        sum_cancelled=Sum("cancelled"),
        sum_prompt_tokens=Sum("prompt_tokens"),
        sum_completion_tokens=Sum("completion_tokens"),
    )
    for name in names:
        totals[name] += sums[f"sum_{name}"] or 0
    for row in days.filter(status__gte=400).values("status").annotate(n=Sum("requests")):
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]


def _by_model(
    records: QuerySet[UsageRecord],
    tallies: QuerySet[RefusalTally] | None = None,
    days: QuerySet[UsageDaily] | None = None,
) -> list[dict[str, Any]]:
    rows = (
        records.exclude(model="")
        .values("model")
        .annotate(
            requests=Count("id"),
            successes=Count("id", filter=Q(status__lt=400)),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
        .order_by("model")
    )
    models: dict[str, dict[str, Any]] = {
        row["model"]: {
            **row,
            "prompt_tokens": row["prompt_tokens"] or 0,
            "completion_tokens": row["completion_tokens"] or 0,
        }
        for row in rows
    }
    if tallies is not None:
        for row in tallies.exclude(model="").values("model").annotate(n=Sum("count")):
            entry = models.setdefault(
                row["model"],
                {
                    "model": row["model"],
                    "requests": 0,
                    "successes": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                },
            )
            entry["requests"] += row["n"]
    if days is not None:
        rolled = (
            days.exclude(model="")
            .values("model")
            .annotate(
                n_requests=Sum("requests"),
                n_successes=Sum("requests", filter=Q(status__lt=400)),
                n_prompt=Sum("prompt_tokens"),
                n_completion=Sum("completion_tokens"),
            )
        )
        for day_row in rolled:
            entry = models.setdefault(
                day_row["model"],
                {
                    "model": day_row["model"],
                    "requests": 0,
                    "successes": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                },
            )
            entry["requests"] += day_row["n_requests"] or 0
            entry["successes"] += day_row["n_successes"] or 0
            entry["prompt_tokens"] += day_row["n_prompt"] or 0
            entry["completion_tokens"] += day_row["n_completion"] or 0
    return [models[name] for name in sorted(models)]


def _series(
    records: QuerySet[UsageRecord],
    until: datetime,
    tallies: QuerySet[RefusalTally] | None = None,
) -> list[dict[str, Any]]:
    """One point per minute for the hour up to `until`, zeros included (charts need them)."""
    end = until.replace(second=0, microsecond=0)
    start = end - SERIES_WINDOW + timedelta(minutes=1)
    rows = (
        records.filter(created_at__gte=start, created_at__lt=end + timedelta(minutes=1))
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status__gte=400)),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
    )
    by_minute: dict[datetime, Any] = {row["minute"]: dict(row) for row in rows}
    if tallies is not None:
        refused = tallies.filter(minute__gte=start, minute__lt=end + timedelta(minutes=1))
        for tally in refused.values("minute").annotate(n=Sum("count")):
            point = by_minute.setdefault(
                tally["minute"],
                {"minute": tally["minute"], "requests": 0, "errors": 0, "tokens": 0},
            )
            point["requests"] += tally["n"]
            point["errors"] += tally["n"]
    series = []
    for step in range(60):
        minute = start + timedelta(minutes=step)
        row: dict[str, Any] = by_minute.get(minute, {})
        series.append(
            {
                "minute": minute.isoformat(),
                "requests": row.get("requests", 0),
                "errors": row.get("errors", 0),
                "tokens": row.get("tokens") or 0,
            }
        )
    return series


_Usage = TypeVar("_Usage", UsageRecord, RefusalTally, UsageDaily)


def _visible_usage(rows: QuerySet[_Usage], actor: Actor) -> QuerySet[_Usage]:
    """A key sees its own usage; a user their keys' and their teams' keys'; an operator
    everything (rows of no key included)."""
    if actor.key is not None and not actor.key.is_admin:
        return rows.filter(api_key=actor.key)
    if actor.is_operator:
        return rows
    return rows.filter(api_key_id__in=keys_visible_to(actor).values("pk"))


def records_visible_to(actor: Actor) -> QuerySet[UsageRecord]:
    return _visible_usage(UsageRecord.objects.all(), actor)


def tallies_visible_to(actor: Actor) -> QuerySet[RefusalTally]:
    """Refusal tallies (telemetry.refusals), by the same rule as records."""
    return _visible_usage(RefusalTally.objects.all(), actor)


def days_visible_to(actor: Actor) -> QuerySet[UsageDaily]:
    """Rolled-up days (telemetry.retention), by the same rule as records."""
    return _visible_usage(UsageDaily.objects.all(), actor)


def _days_selected(
    actor: Actor,
    keys: QuerySet[ApiKey],
    key_id: str | None,
    model: str | None,
    since: datetime,
    until: datetime,
) -> QuerySet[UsageDaily]:
    """The rolled-up days `actor` may see for this report. A day counts in a range when its
    midnight (UTC) is in it: days are indivisible, and adjacent ranges never count one twice."""
    days = days_visible_to(actor).filter(day__gte=since, day__lt=until)
    if key_id is not None:
        days = days.filter(api_key_id__in=keys.values("pk"))
    if model:
        days = days.filter(model=model)
    return days


def _selection(
    actor: Actor, key_id: str | None, model: str | None
) -> tuple[QuerySet[UsageRecord], QuerySet[ApiKey]]:
    """The records and keys `actor` may see, narrowed to one key and/or model if asked."""
    records = records_visible_to(actor)
    keys: QuerySet[ApiKey] = keys_visible_to(actor)
    if actor.key is not None and not actor.key.is_admin:
        keys = keys.filter(pk=actor.key.pk)
    if key_id is not None:
        keys = keys.filter(pk=key_id) if str(key_id).isdigit() else keys.none()
        records = records.filter(api_key_id__in=keys.values("pk"))
    if model:
        records = records.filter(model=model)
    return records, keys


def usage_report(
    *, actor: Actor, time_range: TimeRange, key_id: str | None = None, model: str | None = None
) -> dict[str, Any]:
    series_records, keys = _selection(actor, key_id, model)
    records = series_records.filter(
        created_at__gte=time_range.since, created_at__lt=time_range.until
    )
    series_tallies = tallies_visible_to(actor)
    if model:
        series_tallies = series_tallies.filter(model=model)
    if key_id is not None:
        series_tallies = series_tallies.filter(api_key_id__in=keys.values("pk"))
    tallies = series_tallies.filter(minute__gte=time_range.since, minute__lt=time_range.until)
    days = _days_selected(actor, keys, key_id, model, time_range.since, time_range.until)
    used_key_ids = set(records.exclude(api_key=None).values_list("api_key_id", flat=True))
    used_key_ids |= set(tallies.exclude(api_key=None).values_list("api_key_id", flat=True))
    used_key_ids |= set(days.exclude(api_key=None).values_list("api_key_id", flat=True))
    report_keys = []
    for key in keys.filter(pk__in=used_key_ids).order_by("name", "pk"):
        mine = records.filter(api_key=key)
        report_keys.append(
            {
                "key": {
                    "id": key.pk,
                    "name": key.name,
                    "prefix": key.prefix,
                    "owner": key.owner.get_username(),
                    "state": key.state,
                },
                **_aggregate(mine, tallies.filter(api_key=key), days.filter(api_key=key)),
                "models": _by_model(mine, tallies.filter(api_key=key), days.filter(api_key=key)),
                "series": _series(
                    series_records.filter(api_key=key),
                    time_range.until,
                    series_tallies.filter(api_key=key),
                ),
            }
        )
    return {
        "object": "usage_report",
        "range": {"since": time_range.since.isoformat(), "until": time_range.until.isoformat()},
        "totals": {
            **_aggregate(records, tallies, days),
            "models": _by_model(records, tallies, days),
        },
        "series": _series(series_records, time_range.until, series_tallies),
        "keys": report_keys,
        # What the range cost, per key, user, team and model (billing.spend).
        "spend": spend_report(records, days, tallies),
    }


# --- The dashboard ------------------------------------------------------------------------------

# Bucket sizes a usage chart may use; the smallest that keeps the chart under MAX_BUCKETS bars.
_BUCKETS = [timedelta(minutes=m) for m in (1, 5, 15, 60, 180, 360, 720, 1440)]
MAX_BUCKETS = 120
OVERVIEW_WINDOW = timedelta(hours=1)
# "Per minute" rates on the overview average this much recent traffic: one minute is too jumpy.
RATE_WINDOW = timedelta(minutes=5)


def usage_timeline(
    *, actor: Actor, time_range: TimeRange, key_id: str | None = None, model: str | None = None
) -> dict[str, Any]:
    """Requests, errors and tokens per bucket across the whole range (the usage page's chart).

    The database groups by minute or by hour (functions every backend has); the rows are then
    summed into the chart's buckets here, which is at most 31 days × 24 hours of rows.
    """
    span = time_range.until - time_range.since
    bucket = next((b for b in _BUCKETS if span / b <= MAX_BUCKETS), _BUCKETS[-1])
    records, keys = _selection(actor, key_id, model)
    trunc = TruncMinute if bucket < timedelta(hours=1) else TruncHour
    rows = (
        records.filter(created_at__gte=time_range.since, created_at__lt=time_range.until)
        .annotate(slot=trunc("created_at"))
        .values("slot")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status__gte=400)),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
    )
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    first = epoch + bucket * ((time_range.since - epoch) // bucket)
    count = int((time_range.until - first) / bucket) + 1
    sums = [[0, 0, 0] for _ in range(count)]
    for row in rows:
        index = int((row["slot"] - first) // bucket)
        if 0 <= index < count:
            sums[index][0] += row["requests"]
            sums[index][1] += row["errors"]
            sums[index][2] += row["tokens"] or 0
    # Refusals counted in tallies are requests (and errors) too, as in the report's totals.
    tallies = tallies_visible_to(actor).filter(
        minute__gte=time_range.since, minute__lt=time_range.until
    )
    if model:
        tallies = tallies.filter(model=model)
    if key_id is not None:
        tallies = tallies.filter(api_key_id__in=keys.values("pk"))
    for tally in tallies.annotate(slot=trunc("minute")).values("slot").annotate(n=Sum("count")):
        index = int((tally["slot"] - first) // bucket)
        if 0 <= index < count:
            sums[index][0] += tally["n"]
            sums[index][1] += tally["n"]
    days = _days_selected(actor, keys, key_id, model, time_range.since, time_range.until)
    rolled = days.values("day").annotate(
        n_requests=Sum("requests"),
        errors=Sum("requests", filter=Q(status__gte=400)),
        tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
    )
    for day_row in rolled:
        index = int((day_row["day"] - first) // bucket)
        if 0 <= index < count:
            sums[index][0] += day_row["n_requests"] or 0
            sums[index][1] += day_row["errors"] or 0
            sums[index][2] += day_row["tokens"] or 0
    points = [
        {"start": (first + bucket * i).isoformat(), "requests": r, "errors": e, "tokens": t}
        for i, (r, e, t) in enumerate(sums)
    ]
    return {
        "bucket_seconds": int(bucket.total_seconds()),
        "span_seconds": int(span.total_seconds()),
        "points": points,
    }


def usage_models(*, actor: Actor) -> list[str]:
    """Every model name in the usage `actor` may see (for choosing one to report on)."""
    names = records_visible_to(actor).exclude(model="").values_list("model", flat=True)
    rolled = days_visible_to(actor).exclude(model="").values_list("model", flat=True)
    return sorted(set(names.distinct()) | set(rolled.distinct()))


def server_errors_recent(now: datetime) -> tuple[int, int]:
    """(5xx answers, all answers) of the whole service in the last RATE_WINDOW: what says
    whether it is degraded, whoever asks. Client errors (4xx: bad requests, limits, clients
    that went away) are the clients' doing and never make the service look broken."""
    counts = UsageRecord.objects.filter(
        created_at__gte=now - RATE_WINDOW, created_at__lt=now
    ).aggregate(requests=Count("id"), server=Count("id", filter=Q(status__gte=500)))
    return counts["server"], counts["requests"]


def _degraded_by_errors(now: datetime, *, operator: bool) -> str | None:
    """Why the service counts as degraded by its own errors, or None when it does not."""
    server, requests = server_errors_recent(now)
    if server < settings.NEBULA_DEGRADED_MIN_5XX or not requests:
        return None
    share = server / requests
    if share < settings.NEBULA_DEGRADED_5XX_RATE:
        return None
    minutes = round(RATE_WINDOW.total_seconds() / 60)
    return f"server errors ({share:.0%} in {minutes} min)" if operator else "server errors"


def overview_report(*, actor: Actor) -> dict[str, Any]:
    """Everything the overview page shows, as this actor may see it: their own traffic (an
    operator's: everyone's), the models they can use, and which workers run (operators only)."""
    operator = actor.is_operator
    now = timezone.now()
    healthy, health = health_report(detailed=operator)
    visible = records_visible_to(actor)
    hour = visible.filter(created_at__gte=now - OVERVIEW_WINDOW, created_at__lt=now)
    totals = _aggregate(hour)
    errors = sum(totals["errors"].values())
    server_errors = sum(n for status, n in totals["errors"].items() if int(status) >= 500)
    client_errors = errors - server_errors
    degraded = _degraded_by_errors(now, operator=operator)
    failing = [*health["failing"], *([degraded] if degraded else [])]
    recent = hour.filter(created_at__gte=now - RATE_WINDOW).aggregate(
        requests=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    minutes = RATE_WINDOW.total_seconds() / 60
    worker_check = health["checks"]["workers"]
    workers = worker_check.get("workers", []) if operator else []
    return {
        "generated_at": now.isoformat(),
        "health": {
            "ok": healthy and degraded is None,
            "status": health["status"] if not healthy or degraded is None else "degraded",
            "failing": failing,
            "uptime_seconds": health["uptime_seconds"],
            "version": health["version"],
            "mode": health["mode"],
            "checks": {
                name: {"ok": check["ok"], "latency_ms": check.get("latency_ms")}
                for name, check in health["checks"].items()
            },
        },
        "workers": {
            "live": worker_check.get("live", 0),
            "busy": sum(w["busy"] for w in workers),
            "slots": sum(w["concurrency"] for w in workers),
            "list": workers,
        },
        "models": fleet_snapshot(actor),
        "traffic": {
            "requests": totals["requests"],
            "tokens": totals["total_tokens"],
            "errors": errors,
            "error_rate": errors / totals["requests"] if totals["requests"] else 0.0,
            "client_errors": client_errors,
            "server_errors": server_errors,
            "client_error_rate": client_errors / totals["requests"] if totals["requests"] else 0.0,
            "server_error_rate": server_errors / totals["requests"] if totals["requests"] else 0.0,
            "requests_per_minute": round(recent["requests"] / minutes, 2),
            "tokens_per_minute": round(
                ((recent["prompt"] or 0) + (recent["completion"] or 0)) / minutes, 1
            ),
            "latency_ms": totals["latency_ms"],
            "ttft_ms": totals["ttft_ms"],
        },
        "series": _series(visible, now),
    }
