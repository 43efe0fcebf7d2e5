"""Dashboard pages: thin edges over the same services as the API.

Each view parses, authorizes through the access helpers, calls a service and renders. Service
refusals (`NebulaError`) become form errors next to the field they name, a 404 for what the
person may not see, or a 403 page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.forms import (
    DeployForm,
    KeyCreateForm,
    ScaleForm,
    UpstreamDeployForm,
    UsageFilterForm,
    attach_error,
)
from infra.errors import InvalidRequest, NebulaError, NotFound, PermissionDenied
from keys import services as key_services
from keys.access import (
    Actor,
    actor_for_user,
    authorize_key_settings,
    key_get_for,
    keys_visible_to,
    require_operator,
)
from models_registry import services as model_services
from models_registry.access import deployment_get_for, deployments_visible_to
from models_registry.gpus import GPU_TYPES
from models_registry.services import MEMORY_HEADROOM, fleet_snapshot
from telemetry.services import (
    TimeRange,
    overview_report,
    usage_models,
    usage_report,
    usage_timeline,
)

View = Callable[..., HttpResponse]


def dashboard_view(view: View) -> View:
    """Login required; the services' "not yours" and "not allowed" become 404 and 403 pages."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, actor_for_user(request.user), *args, **kwargs)
        except NotFound as error:
            raise Http404(error.message) from None
        except PermissionDenied as error:
            raise DjangoPermissionDenied(error.message) from None

    return wrapper


def _page(
    request: HttpRequest, template: str, section: str, status: int = 200, **context: Any
) -> HttpResponse:
    return render(request, template, {"section": section, **context}, status=status)


# The skeleton fleet.js fills in when a deployment appears while the page is open.
_ROW_PLACEHOLDER = {
    "pk": "",
    "name": "__NAME__",
    "state": "pending",
    "params_billions": 0,
    "gpu_type": "",
    "gpus_per_replica": 1,
    "replicas": 1,
    "capacity": 0,
    "context_length": 0,
    "owner": "",
    "failure_reason": "",
}


# --- Overview -----------------------------------------------------------------------------------


@dashboard_view
def overview(request: HttpRequest, actor: Actor) -> HttpResponse:
    return _page(
        request,
        "dashboard/overview.html",
        "overview",
        report=overview_report(actor=actor),
        placeholder=_ROW_PLACEHOLDER,
    )


# --- API keys -----------------------------------------------------------------------------------


def _keys_page(
    request: HttpRequest, actor: Actor, form: KeyCreateForm, *, status: int = 200, **extra: Any
) -> HttpResponse:
    keys = list(keys_visible_to(actor).order_by("revoked_at", "-created_at", "-id"))
    usage = usage_report(actor=actor, time_range=TimeRange.parse(None, None, "24h"))
    by_key = {row["key"]["id"]: row for row in usage["keys"]}
    rows = [{"key": key, "usage": by_key.get(key.pk)} for key in keys]
    return _page(
        request, "dashboard/keys.html", "keys", status=status, form=form, rows=rows, **extra
    )


@dashboard_view
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest, actor: Actor) -> HttpResponse:
    if request.method != "POST":
        return _keys_page(request, actor, KeyCreateForm(operator=actor.is_operator))
    form = KeyCreateForm(request.POST, operator=actor.is_operator)
    if not form.is_valid():
        return _keys_page(request, actor, form, status=400)
    data = form.cleaned_data
    owner: Any = request.user
    try:
        if username := data.get("owner"):
            owner = get_user_model().objects.filter(username=username).first()
            if owner is None:
                raise InvalidRequest(f"No user named '{username}'.", param="owner")
        # One setting at a time, so a refusal lands next to the field that caused it.
        settings: list[tuple[str, dict[str, Any]]] = [
            ("owner", {}),
            ("is_admin", {"is_admin": bool(data.get("is_admin"))}),
            ("rpm_limit", {"rpm_limit": data.get("rpm_limit")}),
            ("tpm_limit", {"tpm_limit": data.get("tpm_limit")}),
        ]
        for field, setting in settings:
            try:
                authorize_key_settings(actor, owner=owner, **setting)
            except PermissionDenied as error:
                error.param = field
                raise
        created = key_services.key_create(
            owner=owner,
            name=data["name"],
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            allowed_models=data["allowed_models"],
            expires_at=form.expires_at(),
            is_admin=bool(data.get("is_admin")),
        )
    except PermissionDenied as error:
        attach_error(form, error)
        return _keys_page(request, actor, form, status=403)
    except NebulaError as error:
        attach_error(form, error)
        return _keys_page(request, actor, form, status=400)
    # The secret exists only in this response: no redirect, no session, never again.
    response = _keys_page(
        request, actor, KeyCreateForm(operator=actor.is_operator), created=created
    )
    response["Cache-Control"] = "no-store"
    return response


@dashboard_view
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, actor: Actor, key_id: int) -> HttpResponse:
    key = key_get_for(actor, key_id)
    if request.method != "POST":
        return _page(request, "dashboard/key_revoke.html", "keys", key=key)
    key_services.key_revoke(key=key)
    messages.success(request, f"Revoked “{key.name}”. Requests with it are refused from now on.")
    return redirect("dashboard-keys")


# --- Models -------------------------------------------------------------------------------------


def _models_page(
    request: HttpRequest,
    actor: Actor,
    *,
    form: DeployForm | None = None,
    upstream_form: UpstreamDeployForm | None = None,
    status: int = 200,
    scale_error: dict[str, Any] | None = None,
) -> HttpResponse:
    operator = actor.is_operator
    fleet = fleet_snapshot(actor)
    catalogue = {
        gpu.key: {"name": gpu.name, "memory_gb": gpu.memory_gb} for gpu in GPU_TYPES.values()
    }
    return _page(
        request,
        "dashboard/models.html",
        "models",
        status=status,
        fleet=fleet,
        operator=operator,
        form=form or (DeployForm() if operator else None),
        deploy_open=form is not None,
        upstream_form=upstream_form or (UpstreamDeployForm() if operator else None),
        upstream_open=upstream_form is not None,
        scale_error=scale_error,
        catalogue={"gpus": catalogue, "headroom": MEMORY_HEADROOM},
        placeholder=_ROW_PLACEHOLDER,
    )


@dashboard_view
@require_http_methods(["GET", "POST"])
def models(request: HttpRequest, actor: Actor) -> HttpResponse:
    if request.method != "POST":
        return _models_page(request, actor)
    require_operator(actor)
    return _deploy(
        request,
        actor,
        DeployForm(request.POST),
        success="Deploying {name}. Its state updates here as it loads.",
    )


def _deploy(
    request: HttpRequest, actor: Actor, form: DeployForm | UpstreamDeployForm, *, success: str
) -> HttpResponse:
    """Either deploy form, posted: one service; its refusals land next to their fields."""
    if form.is_valid():
        try:
            model = model_services.model_deploy(owner=request.user, **form.deployment())
        except NebulaError as error:
            attach_error(form, error)
        else:
            messages.success(request, success.format(name=model.name))
            return redirect("dashboard-models")
    if isinstance(form, UpstreamDeployForm):
        return _models_page(request, actor, upstream_form=form, status=400)
    return _models_page(request, actor, form=form, status=400)


@dashboard_view
@require_POST
def model_connect(request: HttpRequest, actor: Actor) -> HttpResponse:
    """Deploy a model served by an engine the operator runs (the openai-compatible backend)."""
    require_operator(actor)
    return _deploy(
        request,
        actor,
        UpstreamDeployForm(request.POST),
        success="Connecting {name}: it is ready once one of its engines answers.",
    )


@dashboard_view
@require_POST
def model_scale(request: HttpRequest, actor: Actor, name: str) -> HttpResponse:
    require_operator(actor)
    model = deployment_get_for(actor, name)
    form = ScaleForm(request.POST)
    try:
        if not form.is_valid():
            raise InvalidRequest("Replicas must be a whole number.", param="replicas")
        model = model_services.model_scale(model=model, replicas=form.cleaned_data["replicas"])
    except NebulaError as error:
        typed = request.POST.get("replicas", "")
        return _models_page(
            request,
            actor,
            status=400,
            scale_error={"name": name, "value": typed, "message": error.message},
        )
    messages.success(request, f"{model.name} now runs {model.replicas} replica(s).")
    return redirect("dashboard-models")


@dashboard_view
@require_http_methods(["GET", "POST"])
def model_undeploy(request: HttpRequest, actor: Actor, name: str) -> HttpResponse:
    require_operator(actor)
    model = deployment_get_for(actor, name)
    if request.method != "POST":
        return _page(request, "dashboard/model_undeploy.html", "models", model=model)
    try:
        model = model_services.model_undeploy(model=model)
    except NebulaError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Undeploying {model.name}: requests in flight finish first.")
    return redirect("dashboard-models")


# --- Chat playground ----------------------------------------------------------------------------


@dashboard_view
def chat(request: HttpRequest, actor: Actor) -> HttpResponse:
    # The playground runs on the person's own keys only (an operator's too): it bills them.
    own_keys = [
        key
        for key in keys_visible_to(actor).filter(owner_id=request.user.pk, revoked_at=None)
        if key.is_active
    ]
    ready = [m.name for m in deployments_visible_to(actor) if m.state == "ready"]
    return _page(request, "dashboard/chat.html", "chat", keys=own_keys, models=ready)


# --- Usage --------------------------------------------------------------------------------------


@dashboard_view
def usage(request: HttpRequest, actor: Actor) -> HttpResponse:
    visible_keys = keys_visible_to(actor).order_by("name", "pk")
    key_choices = [
        (
            str(key.pk),
            f"{key.name} ({key.prefix}…)" + (f" · {key.owner}" if actor.is_operator else ""),
        )
        for key in visible_keys
    ]
    model_names = usage_models(actor=actor)
    form = UsageFilterForm(request.GET or None, keys=key_choices, models=model_names)
    window, key_id, model = "24h", None, None
    if form.is_bound and form.is_valid():
        window = form.cleaned_data["window"] or "24h"
        key_id = form.cleaned_data["key"] or None
        model = form.cleaned_data["model"] or None
    elif form.is_bound:
        return _page(request, "dashboard/usage.html", "usage", status=400, form=form, report=None)
    time_range = TimeRange.parse(None, None, window)
    report = usage_report(actor=actor, time_range=time_range, key_id=key_id, model=model)
    for totals in [report["totals"], *report["keys"]]:
        totals["error_total"] = sum(totals["errors"].values())
    timeline = usage_timeline(actor=actor, time_range=time_range, key_id=key_id, model=model)
    return _page(
        request,
        "dashboard/usage.html",
        "usage",
        form=form,
        report=report,
        timeline=timeline,
        window_label=dict(form.fields["window"].choices).get(window, window),  # type: ignore[attr-defined]
    )
