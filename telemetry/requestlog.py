"""The request log: each usage record as the actor may see it, filtered, in pages, and as CSV.

One filter parser (`RequestQuery.parse`) serves `/requests`, `/requests.csv` and the dashboard's
page, so the API, the page and the export can never disagree on what a filter means. Visibility
is `telemetry.services.records_visible_to` (a key: its own requests; a user: their keys' and
their teams' keys'; an operator: all), the same rule as `/metrics`.

Pages are a keyset cursor on (created_at, id), newest first. An offset, or DRF's
CursorPagination (a position plus an offset among rows with the same time), shifts when rows
arrive while someone pages: records land in batches that share timestamps closely, and a
page boundary inside such a batch would repeat or skip rows. A keyset boundary does not move.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Q, QuerySet

from infra.errors import InvalidRequest
from keys.access import Actor, parse_id
from telemetry.models import UsageRecord
from telemetry.services import parse_time, records_visible_to

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Rows fetched per query while streaming a CSV export: memory stays flat however long it is.
CSV_CHUNK = 1000

FILTERS = ("key", "model", "status", "since", "until")
# The columns of a row, in the CSV's order (the JSON has the same names, plus `key` nested).
COLUMNS = (
    "created_at",
    "request_id",
    "key_id",
    "key_name",
    "key_prefix",
    "owner",
    "model",
    "endpoint",
    "client",
    "status",
    "finish_reason",
    "error_code",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "queue_ms",
    "ttft_ms",
    "duration_ms",
    "worker",
)


@dataclass(frozen=True)
class RequestQuery:
    """Which requests: all filters are optional and combine (AND)."""

    key_id: int | None = None
    model: str | None = None
    status: int | None = None  # an exact status, e.g. 429
    status_class: int | None = None  # 2, 4 or 5: 2xx, 4xx, 5xx
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, params: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> RequestQuery:
        """From query parameters; a parameter this does not know (bar `extra`, which the
        caller handles) is a 400, never silently ignored."""
        for name in params:
            if name not in FILTERS and name not in extra:
                raise InvalidRequest(
                    f"Unknown parameter '{name}'. Known: {', '.join((*FILTERS, *extra))}.",
                    param=name,
                )
        values = {name: str(params.get(name) or "").strip() for name in FILTERS}
        key_id = None
        if values["key"]:
            key_id = parse_id(values["key"])
            if not key_id:
                raise InvalidRequest("'key' must be a key's id.", param="key")
        status, status_class = _parse_status(values["status"])
        since = parse_time(values["since"], "since") if values["since"] else None
        until = parse_time(values["until"], "until") if values["until"] else None
        if since and until and since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        return cls(
            key_id=key_id,
            model=values["model"] or None,
            status=status,
            status_class=status_class,
            since=since,
            until=until,
        )

    def as_params(self) -> dict[str, str]:
        """The query parameters that give this query back (for links: next page, CSV)."""
        params: dict[str, str] = {}
        if self.key_id:
            params["key"] = str(self.key_id)
        if self.model:
            params["model"] = self.model
        if self.status:
            params["status"] = str(self.status)
        elif self.status_class:
            params["status"] = f"{self.status_class}xx"
        if self.since:
            params["since"] = self.since.isoformat()
        if self.until:
            params["until"] = self.until.isoformat()
        return params


def parse_limit(text: str | None) -> int:
    """A page size from a query string: PAGE_SIZE when absent, 1 to MAX_PAGE_SIZE."""
    if text is None or text == "":
        return PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"'limit' must be a number from 1 to {MAX_PAGE_SIZE}.", param="limit")
    return int(text)


def _parse_status(text: str) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    lowered = text.lower()
    if len(lowered) == 3 and lowered.endswith("xx") and lowered[0] in "12345":
        return None, int(lowered[0])
    if lowered.isdigit() and 100 <= int(lowered) <= 599:
        return int(lowered), None
    raise InvalidRequest(
        "'status' is an HTTP status (429) or a class of them (2xx, 4xx, 5xx).", param="status"
    )


def requests_visible(*, actor: Actor, query: RequestQuery) -> QuerySet[UsageRecord]:
    """The records `actor` may see that match `query`, newest first."""
    records = records_visible_to(actor).select_related("api_key__owner")
    if query.key_id is not None:
        records = records.filter(api_key_id=query.key_id)
    if query.model:
        records = records.filter(model=query.model)
    if query.status is not None:
        records = records.filter(status=query.status)
    elif query.status_class is not None:
        low = query.status_class * 100
        records = records.filter(status__gte=low, status__lt=low + 100)
    if query.since:
        records = records.filter(created_at__gte=query.since)
    if query.until:
        records = records.filter(created_at__lt=query.until)
    return records.order_by("-created_at", "-id")


# --- Cursor -------------------------------------------------------------------------------------


def cursor_encode(record: UsageRecord) -> str:
    raw = f"{record.created_at.astimezone(UTC).isoformat()}|{record.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[datetime, int]:
    """The (created_at, id) a page continues after. Forged cursors only move the position:
    visibility is applied to every page anyway."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, pk = raw.partition("|")
        position = datetime.fromisoformat(stamp)
        if position.tzinfo is None:
            raise ValueError(stamp)
        pk_value = parse_id(pk)
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):
        pk_value = 0
    if not pk_value:
        raise InvalidRequest("Invalid cursor: use the `next` value as given.", param="cursor")
    return position, pk_value


@dataclass(frozen=True)
class RequestPage:
    records: list[UsageRecord]
    next_cursor: str | None


def request_page(
    *, actor: Actor, query: RequestQuery, cursor: str | None = None, limit: int = PAGE_SIZE
) -> RequestPage:
    """One page of the log, newest first, continuing after `cursor` (a previous page's
    `next_cursor`)."""
    records = requests_visible(actor=actor, query=query)
    if cursor:
        created, pk = cursor_decode(cursor)
        # The cursor carries the time exactly (ISO 8601 with microseconds, as stored).
        records = records.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=pk))
    rows = list(records[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return RequestPage(records=rows, next_cursor=cursor_encode(rows[-1]) if more else None)


# --- Rows ---------------------------------------------------------------------------------------


def request_row(record: UsageRecord, *, operator: bool) -> dict[str, Any]:
    """One request as the log shows it. The key by its name and prefix, never its secret (the
    table holds none). Which worker ran it is the fleet's business: operators only."""
    key = record.api_key
    return {
        "id": record.pk,
        "created_at": record.created_at.isoformat(),
        "request_id": record.request_id,
        "key_id": record.api_key_id,
        "key_name": key.name if key is not None else "",
        "key_prefix": record.key_prefix,
        "owner": key.owner.get_username() if key is not None else "",
        "model": record.model,
        "endpoint": record.endpoint,
        "client": record.client,
        "status": record.status,
        "finish_reason": record.finish_reason,
        "error_code": record.error_code,
        "stream": record.stream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cost": str(record.cost),
        "queue_ms": record.queue_ms,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.latency_ms,
        "worker": record.worker if operator else None,
    }


# A cell a spreadsheet would run as a formula (the model name is whatever a client sent):
# quoted, OWASP's advice for CSV injection.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_lines(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def csv_header() -> bytes:
    return _csv_lines([list(COLUMNS)])


def csv_rows(records: list[UsageRecord], *, operator: bool) -> bytes:
    lines = []
    for record in records:
        row = request_row(record, operator=operator)
        lines.append([_cell(row[column]) for column in COLUMNS])
    return _csv_lines(lines)


async def requests_csv(*, actor: Actor, query: RequestQuery) -> AsyncIterator[bytes]:
    """The whole filtered log as CSV, a chunk of rows at a time (for a StreamingHttpResponse).

    Async, because under ASGI Django reads a synchronous iterator to its end before sending
    anything. Each chunk is read with `sync_to_async(thread_sensitive=True)`: in the request's
    own thread under daphne (one connection for the export), and in the test's thread under
    the test client, so the export sees what the test wrote.
    """
    yield csv_header()
    cursor: str | None = None
    page_of = sync_to_async(request_page, thread_sensitive=True)
    while True:
        page = await page_of(actor=actor, query=query, cursor=cursor, limit=CSV_CHUNK)
        if page.records:
            yield csv_rows(page.records, operator=actor.is_operator)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
