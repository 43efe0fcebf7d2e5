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
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.forms import (
    DeployForm,
    KeyCreateForm,
    KeyEditForm,
    KeyRotateForm,
    MemberAddForm,
    MemberChangeForm,
    ScaleForm,
    TeamCreateForm,
    UpstreamDeployForm,
    UsageFilterForm,
    attach_error,
)
from infra.errors import InvalidRequest, NebulaError, NotFound, PermissionDenied
from keys import services as key_services
from keys.access import (
    Actor,
    actor_for_user,
    authorize_team_management,
    can_change_key,
    can_manage_team,
    key_ceilings,
    key_get_for,
    keys_visible_to,
    require_operator,
    team_get_for,
    team_role,
    teams_visible_to,
)
from keys.models import ApiKey, Team, TeamRole
from keys.reveal import Revealed, secret_claim, secret_stash
from keys.services import CreatedKey
from models_registry import services as model_services
from models_registry.access import deployment_get_for, deployments_visible_to
from models_registry.gpus import GPU_TYPES, MEMORY_HEADROOM
from models_registry.models import ENDED_STATES
from models_registry.services import fleet_gpus, fleet_snapshot
from telemetry.services import (
    TimeRange,
    overview_report,
    usage_models,
    usage_report,
    usage_timeline,
)

View = Callable[..., HttpResponse]


def dashboard_view(view: View) -> View:
    """Login required; the services' "not yours" and "not allowed" become 404 and 403 pages.

    The 403 page is rendered here rather than raised: Django logs a raised PermissionDenied
    with its whole traceback, and a person clicking where they may not is not an error of
    ours. Django's request log still has its one line ("Forbidden: /dashboard/…").
    """

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, actor_for_user(request.user), *args, **kwargs)
        except NotFound as error:
            raise Http404(error.message) from None
        except PermissionDenied as error:
            return render(request, "403.html", {"exception": error.message}, status=403)

    return wrapper


def _page(
    request: HttpRequest, template: str, section: str, status: int = 200, **context: Any
) -> HttpResponse:
    return render(request, template, {"section": section, **context}, status=status)


# The skeleton fleet.js fills in when a deployment appears while the page is open.
_ROW_PLACEHOLDER = {
    "pk": "",
    "name": "__NAME__",
    "kind": "chat",
    "state": "pending",
    "params_billions": 0,
    "gpu_type": "",
    "gpus_per_replica": 1,
    "replicas": 1,
    "capacity": 0,
    "context_length": 0,
    "owner": "",
    "failure_reason": "",
    "queue_reason": "",
    "target_replicas": None,
    "progress": None,
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


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _claim(request: HttpRequest, key_id: int | None = None) -> tuple[Revealed | None, bool]:
    """The secret a redirect brought (once), and whether the page was asked to show one."""
    token = request.GET.get("reveal")
    if not token:
        return None, False
    return secret_claim(token=token, user_id=request.user.pk, key_id=key_id), True


def _reveal_redirect(request: HttpRequest, url: str, created: CreatedKey) -> HttpResponse:
    token = secret_stash(secret=created.secret, user_id=request.user.pk, key_id=created.key.pk)
    return redirect(f"{url}?reveal={token}")


def _team_choices(actor: Actor) -> list[tuple[str, str]]:
    teams = [team for team in teams_visible_to(actor) if can_manage_team(actor, team)]
    return [(str(team.pk), team.name) for team in teams]


def _key_form(actor: Actor, data: Any = None, *, team: str | None = None) -> KeyCreateForm:
    form = KeyCreateForm(data, operator=actor.is_operator, teams=_team_choices(actor))
    if team and "team" in form.fields and data is None:
        form.initial["team"] = team
    return form


def _keys_page(
    request: HttpRequest, actor: Actor, form: KeyCreateForm, *, status: int = 200, **extra: Any
) -> HttpResponse:
    keys = list(keys_visible_to(actor).order_by("revoked_at", "-created_at", "-id"))
    usage = usage_report(actor=actor, time_range=TimeRange.parse(None, None, "24h"))
    by_key = {row["key"]["id"]: row for row in usage["keys"]}
    rows = [
        {"key": key, "usage": by_key.get(key.pk), "can_change": can_change_key(actor, key)}
        for key in keys
    ]
    return _page(
        request, "dashboard/keys.html", "keys", status=status, form=form, rows=rows, **extra
    )


@dashboard_view
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest, actor: Actor) -> HttpResponse:
    if request.method != "POST":
        revealed, asked = _claim(request)
        created = None
        if revealed is not None:
            key = keys_visible_to(actor).filter(pk=revealed.key_id).first()
            created = {"key": key, "secret": revealed.secret} if key else None
        response = _keys_page(
            request,
            actor,
            _key_form(actor, team=request.GET.get("team")),
            created=created,
            reveal_gone=asked and created is None,
        )
        return _no_store(response) if asked else response
    form = _key_form(actor, request.POST)
    if not form.is_valid():
        return _keys_page(request, actor, form, status=400)
    try:
        created_key = key_services.key_create(actor=actor, **form.key_request())
    except NebulaError as error:
        attach_error(form, error)
        return _keys_page(request, actor, form, status=error.status)
    # Post/redirect/get: the secret waits for the next page in a one-time store (not the
    # database, not the session), so reloading that page shows it at most once and can never
    # create a second key.
    return _reveal_redirect(request, reverse("dashboard-keys"), created_key)


def _key_page(
    request: HttpRequest,
    actor: Actor,
    key: ApiKey,
    *,
    form: KeyEditForm | None = None,
    rotate_form: KeyRotateForm | None = None,
    status: int = 200,
    **extra: Any,
) -> HttpResponse:
    usage = usage_report(
        actor=actor, time_range=TimeRange.parse(None, None, "24h"), key_id=str(key.pk)
    )
    return _page(
        request,
        "dashboard/key_detail.html",
        "keys",
        status=status,
        key=key,
        can_change=can_change_key(actor, key),
        form=form or KeyEditForm(key=key),
        rotate_form=rotate_form or KeyRotateForm(),
        ceilings=key_ceilings(key),
        previous_active=key.previous_valid_until is not None
        and key.previous_valid_until > timezone.now(),
        usage=usage["totals"],
        **extra,
    )


@dashboard_view
@require_http_methods(["GET", "POST"])
def key_detail(request: HttpRequest, actor: Actor, key_id: int) -> HttpResponse:
    key = key_get_for(actor, key_id)
    if request.method != "POST":
        revealed, asked = _claim(request, key.pk)
        response = _key_page(
            request,
            actor,
            key,
            created={"key": key, "secret": revealed.secret} if revealed else None,
            reveal_gone=asked and revealed is None,
        )
        return _no_store(response) if asked else response
    form = KeyEditForm(request.POST, key=key)
    if not form.is_valid():
        return _key_page(request, actor, key, form=form, status=400)
    try:
        key = key_services.key_update(actor=actor, key=key, **form.changes())
    except NebulaError as error:
        attach_error(form, error)
        return _key_page(request, actor, key, form=form, status=error.status)
    messages.success(request, f"Saved “{key.name}”. Every web process uses the new settings now.")
    return redirect("dashboard-key", key_id=key.pk)


@dashboard_view
@require_POST
def key_rotate(request: HttpRequest, actor: Actor, key_id: int) -> HttpResponse:
    key = key_get_for(actor, key_id)
    form = KeyRotateForm(request.POST)
    if not form.is_valid():
        return _key_page(request, actor, key, rotate_form=form, status=400)
    try:
        created = key_services.key_rotate(
            actor=actor, key=key, grace_seconds=form.cleaned_data["grace_seconds"]
        )
    except NebulaError as error:
        attach_error(form, error)
        return _key_page(request, actor, key, rotate_form=form, status=error.status)
    return _reveal_redirect(request, reverse("dashboard-key", args=[key.pk]), created)


@dashboard_view
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, actor: Actor, key_id: int) -> HttpResponse:
    key = key_get_for(actor, key_id)
    if request.method != "POST":
        return _page(request, "dashboard/key_revoke.html", "keys", key=key)
    key_services.key_revoke(actor=actor, key=key)
    messages.success(request, f"Revoked “{key.name}”. Requests with it are refused from now on.")
    return redirect("dashboard-keys")


# --- Teams --------------------------------------------------------------------------------------


def _teams_page(
    request: HttpRequest, actor: Actor, form: TeamCreateForm | None, *, status: int = 200
) -> HttpResponse:
    teams = teams_visible_to(actor).annotate(
        member_count=Count("memberships", distinct=True), key_count=Count("api_keys", distinct=True)
    )
    rows = [{"team": team, "role": team_role(actor, team)} for team in teams]
    return _page(request, "dashboard/teams.html", "teams", status=status, rows=rows, form=form)


@dashboard_view
@require_http_methods(["GET", "POST"])
def teams(request: HttpRequest, actor: Actor) -> HttpResponse:
    if request.method != "POST":
        return _teams_page(request, actor, TeamCreateForm() if actor.is_operator else None)
    require_operator(actor)
    form = TeamCreateForm(request.POST)
    if not form.is_valid():
        return _teams_page(request, actor, form, status=400)
    try:
        team = key_services.team_create(
            actor=actor, name=form.cleaned_data["name"], admin=form.cleaned_data["admin"] or None
        )
    except NebulaError as error:
        attach_error(form, error)
        return _teams_page(request, actor, form, status=error.status)
    messages.success(request, f"Created team “{team.name}”.")
    return redirect("dashboard-team", team_id=team.pk)


def _team_page(
    request: HttpRequest,
    actor: Actor,
    team: Team,
    *,
    member_form: MemberAddForm | None = None,
    member_error: dict[str, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    team_keys = list(keys_visible_to(actor).filter(team=team).order_by("revoked_at", "name"))
    usage = usage_report(actor=actor, time_range=TimeRange.parse(None, None, "24h"))
    by_key = {row["key"]["id"]: row for row in usage["keys"]}
    return _page(
        request,
        "dashboard/team_detail.html",
        "teams",
        status=status,
        team=team,
        role=team_role(actor, team),
        manage=can_manage_team(actor, team),
        members=team.memberships.select_related("user").order_by("user__username"),
        key_rows=[{"key": key, "usage": by_key.get(key.pk)} for key in team_keys],
        member_form=member_form or MemberAddForm(),
        member_error=member_error,
        roles=TeamRole.choices,
    )


@dashboard_view
def team_detail(request: HttpRequest, actor: Actor, team_id: int) -> HttpResponse:
    return _team_page(request, actor, team_get_for(actor, team_id))


@dashboard_view
@require_POST
def team_member_add(request: HttpRequest, actor: Actor, team_id: int) -> HttpResponse:
    team = team_get_for(actor, team_id)
    authorize_team_management(actor, team)  # before a member is told their form is incomplete
    form = MemberAddForm(request.POST)
    if not form.is_valid():
        return _team_page(request, actor, team, member_form=form, status=400)
    try:
        key_services.team_member_add(
            actor=actor,
            team=team,
            user=form.cleaned_data["username"],
            role=form.cleaned_data["role"],
        )
    except NebulaError as error:
        attach_error(form, error)
        return _team_page(request, actor, team, member_form=form, status=error.status)
    messages.success(request, f"Added {form.cleaned_data['username']} to “{team.name}”.")
    return redirect("dashboard-team", team_id=team.pk)


@dashboard_view
@require_POST
def team_member_change(
    request: HttpRequest, actor: Actor, team_id: int, username: str
) -> HttpResponse:
    team = team_get_for(actor, team_id)
    form = MemberChangeForm(request.POST)
    try:
        if not form.is_valid():
            raise InvalidRequest("Choose a role, or remove the member.", param="role")
        if form.cleaned_data["action"] == "remove":
            key_services.team_member_remove(actor=actor, team=team, user=username)
            done = f"Removed {username} from “{team.name}”."
        else:
            key_services.team_member_set_role(
                actor=actor, team=team, user=username, role=form.cleaned_data["role"]
            )
            done = f"{username} is now {form.cleaned_data['role']} of “{team.name}”."
    except NebulaError as error:
        return _team_page(
            request,
            actor,
            team,
            member_error={"username": username, "message": error.message},
            status=error.status,
        )
    messages.success(request, done)
    if form.cleaned_data["action"] == "remove" and username == request.user.get_username():
        return redirect("dashboard-teams")  # they left: the team page is no longer theirs
    return redirect("dashboard-team", team_id=team.pk)


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
        catalogue={"gpus": catalogue, "headroom": MEMORY_HEADROOM, "inventory": fleet_gpus()},
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
            model = model_services.model_deploy(actor=actor, **form.deployment())
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
        model = model_services.model_scale(
            actor=actor, model=model, replicas=form.cleaned_data["replicas"]
        )
    except NebulaError as error:
        typed = request.POST.get("replicas", "")
        return _models_page(
            request,
            actor,
            status=400,
            scale_error={"name": name, "value": typed, "message": error.message},
        )
    if model.target_replicas:
        messages.success(
            request,
            f"Loading {model.target_replicas - model.replicas} more replica(s) of {model.name}; "
            f"it serves on {model.replicas} until they are ready.",
        )
    else:
        messages.success(request, f"{model.name} now runs {model.replicas} replica(s).")
    return redirect("dashboard-models")


@dashboard_view
@require_http_methods(["GET", "POST"])
def model_undeploy(request: HttpRequest, actor: Actor, name: str) -> HttpResponse:
    """Undeploy a live deployment; delete a stopped or failed one from the fleet."""
    require_operator(actor)
    model = deployment_get_for(actor, name)
    ended = model.state in ENDED_STATES
    if request.method != "POST":
        return _page(request, "dashboard/model_undeploy.html", "models", model=model, ended=ended)
    try:
        if ended:
            model_services.model_delete(actor=actor, model=model)
        else:
            model = model_services.model_undeploy(actor=actor, model=model)
    except NebulaError as error:
        messages.error(request, error.message)
    else:
        if ended:
            messages.success(request, f"Deleted {model.name} from the fleet.")
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
    # Chat models only: an embedding model cannot answer a conversation.
    ready = [
        m.name
        for m in deployments_visible_to(actor)
        if m.state == "ready" and m.kind != "embedding"
    ]
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
