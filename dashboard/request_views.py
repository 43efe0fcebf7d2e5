"""The request log page: the same service, filters and visibility as `/requests`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from dashboard.forms import RequestLogFilterForm
from dashboard.views import _page, dashboard_view
from infra.errors import InvalidRequest
from keys.access import Actor, keys_visible_to
from telemetry.requestlog import RequestQuery, request_page, request_row
from telemetry.services import usage_models


@dashboard_view
def requests_log(request: HttpRequest, actor: Actor) -> HttpResponse:
    key_choices = [
        (
            str(key.pk),
            f"{key.name} ({key.prefix}…)" + (f" · {key.owner}" if actor.is_operator else ""),
        )
        for key in keys_visible_to(actor).order_by("name", "pk")
    ]
    form = RequestLogFilterForm(
        request.GET or None, keys=key_choices, models=usage_models(actor=actor)
    )
    context: dict[str, Any] = {"form": form, "rows": [], "next_url": None, "error": None}
    try:
        query = RequestQuery.parse(request.GET, extra=("cursor",))
        page = request_page(actor=actor, query=query, cursor=request.GET.get("cursor") or None)
    except InvalidRequest as error:
        context["error"] = error.message
        return _page(request, "dashboard/requests.html", "requests", status=400, **context)
    params = query.as_params()
    if page.next_cursor:
        context["next_url"] = "?" + urlencode({**params, "cursor": page.next_cursor})
    context.update(
        rows=[request_row(record, operator=actor.is_operator) for record in page.records],
        csv_url=reverse("requests-csv") + ("?" + urlencode(params) if params else ""),
        paged=bool(request.GET.get("cursor")),
        newest_url="?" + urlencode(params),
        operator=actor.is_operator,
    )
    return _page(request, "dashboard/requests.html", "requests", **context)
