"""The dashboard's forms. They parse what a person typed; the services decide what is allowed
(their `InvalidRequest.param` names the field an error belongs to, see `attach_error`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.utils import timezone

from infra.errors import NebulaError
from keys.models import ApiKey, TeamRole
from models_registry.gpus import GPU_TYPES
from models_registry.models import ModelKind

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]
GRACE_CHOICES = [
    ("0", "At once"),
    ("300", "In 5 minutes"),
    ("3600", "In an hour"),
    ("86400", "In 24 hours"),
    ("604800", "In 7 days"),
]
WINDOW_CHOICES = [
    ("15m", "Last 15 minutes"),
    ("1h", "Last hour"),
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
]


def attach_error(form: forms.Form, error: NebulaError) -> None:
    """Show a service's refusal next to the field it is about (or above the form)."""
    field = error.param
    form.add_error(field if field in form.fields else None, error.message)


def _style(form: forms.Form) -> None:
    for field in form.fields.values():
        field.widget.attrs.setdefault("class", "input")


def _model_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _tpm_field() -> forms.IntegerField:
    return forms.IntegerField(
        label="Tokens per minute", required=False, help_text="Empty means no token limit."
    )


def _allowed_models_field() -> forms.CharField:
    return forms.CharField(
        label="Allowed models",
        required=False,
        help_text="Comma-separated model names. Empty allows every ready model.",
    )


class KeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="Something that tells you where it is used, like “billing-worker”.",
    )
    rpm_limit = forms.IntegerField(
        label="Requests per minute",
        required=False,
        help_text="Leave empty for the default.",
    )
    tpm_limit = _tpm_field()
    allowed_models = _allowed_models_field()
    expires_in = forms.ChoiceField(label="Expires", choices=EXPIRY_CHOICES, required=False)

    def __init__(
        self,
        *args: Any,
        operator: bool = False,
        teams: list[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.operator = operator
        if teams:
            self.fields["team"] = forms.ChoiceField(
                label="Team",
                choices=[("", "None (a personal key)"), *teams],
                required=False,
                help_text="A team key is seen by the team and managed by its admins.",
            )
        if operator:
            users = get_user_model().objects.filter(is_active=True).order_by("username")
            self.fields["owner"] = forms.ChoiceField(
                label="Owner",
                choices=[("", "Me")] + [(u.get_username(), u.get_username()) for u in users],
                required=False,
                help_text="Operators can create keys for anyone.",
            )
            self.fields["is_admin"] = forms.BooleanField(
                label="Admin key (manages keys and models like an operator)", required=False
            )
        _style(self)
        self.fields["name"].widget.attrs.update(placeholder="my-app", autocomplete="off")
        self.fields["allowed_models"].widget.attrs.update(placeholder="nebula-7b, nebula-70b")

    def clean_allowed_models(self) -> list[str]:
        return _model_names(self.cleaned_data.get("allowed_models") or "")

    def key_request(self) -> dict[str, Any]:
        """The keyword arguments of `keys.services.key_create`."""
        data = self.cleaned_data
        return {
            "name": data["name"],
            "owner": data.get("owner") or None,
            "team": data.get("team") or None,
            "rpm_limit": data.get("rpm_limit"),
            "tpm_limit": data.get("tpm_limit"),
            "allowed_models": data["allowed_models"],
            "expires_at": self.expires_at(),
            "is_admin": bool(data.get("is_admin")),
        }

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None


class KeyEditForm(forms.Form):
    """A key's name and limits. Only what changed is sent to the service, so a field left as it
    was is never "set" (an owner cannot widen a limit by saving it unchanged)."""

    name = forms.CharField(max_length=100)
    rpm_limit = forms.IntegerField(label="Requests per minute")
    tpm_limit = _tpm_field()
    allowed_models = _allowed_models_field()
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        help_text="Empty: never.",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def __init__(self, data: Any = None, *, key: ApiKey) -> None:
        initial = {
            "name": key.name,
            "rpm_limit": key.rpm_limit,
            "tpm_limit": key.tpm_limit,
            "allowed_models": ", ".join(key.allowed_models or []),
            "expires_at": key.expires_at,
        }
        super().__init__(data, initial=initial)
        _style(self)

    def clean_allowed_models(self) -> list[str]:
        return _model_names(self.cleaned_data.get("allowed_models") or "")

    def changes(self) -> dict[str, Any]:
        """The keyword arguments of `keys.services.key_update`: the changed fields only."""
        changed = set(self.changed_data)
        if "allowed_models" in changed and self.cleaned_data["allowed_models"] == _model_names(
            str(self.initial.get("allowed_models") or "")
        ):
            changed.discard("allowed_models")  # the same names, typed differently
        return {name: self.cleaned_data[name] for name in self.fields if name in changed}


class KeyRotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(
        label="The old secret stops working",
        choices=GRACE_CHOICES,
        coerce=int,
        initial="3600",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _style(self)


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="E.g. the project or department.")
    admin = forms.CharField(
        label="First admin",
        max_length=150,
        required=False,
        help_text="Username of the team's first admin (optional).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _style(self)
        self.fields["name"].widget.attrs.update(autocomplete="off")


class MemberAddForm(forms.Form):
    username = forms.CharField(label="Username", max_length=150)
    role = forms.ChoiceField(
        label="Role", choices=TeamRole.choices, initial=TeamRole.MEMBER, required=False
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _style(self)
        self.fields["username"].widget.attrs.update(autocomplete="off")

    def clean_role(self) -> str:
        return self.cleaned_data.get("role") or TeamRole.MEMBER


class MemberChangeForm(forms.Form):
    action = forms.ChoiceField(choices=[("role", "role"), ("remove", "remove")])
    role = forms.ChoiceField(choices=TeamRole.choices, required=False)


class DeployForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="How clients call it, e.g. nebula-7b.")
    kind = forms.ChoiceField(
        label="Serves",
        choices=ModelKind.choices,
        initial=ModelKind.CHAT,
        required=False,
        help_text="An embedding model is real and named after it: all-minilm-l6-v2.",
    )
    # Required for a chat model (the service says so); an embedding model's size is its own.
    params_billions = forms.FloatField(
        label="Size (billions of parameters)", help_text="7 for a 7B model.", required=False
    )
    gpu_type = forms.ChoiceField(
        label="GPU type",
        choices=[(gpu.key, f"{gpu.name} · {gpu.memory_gb:g} GB") for gpu in GPU_TYPES.values()],
    )
    gpus_per_replica = forms.IntegerField(label="GPUs per replica", initial=1)
    replicas = forms.IntegerField(label="Replicas", initial=1)
    max_concurrent_seqs = forms.IntegerField(
        label="Concurrent sequences per replica", initial=8, required=False
    )
    # Blank: the kind's default (8192 for a chat model, the embedding model's own length).
    context_length = forms.IntegerField(label="Context length", required=False)
    queue = forms.BooleanField(
        label="If its GPUs are busy, wait for them (queue it)", required=False
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if name != "queue":
                field.widget.attrs.setdefault("class", "input")
        self.fields["name"].widget.attrs.update(placeholder="nebula-7b", autocomplete="off")
        self.fields["params_billions"].widget.attrs.update(placeholder="7", step="any")
        self.fields["context_length"].widget.attrs.update(placeholder="8192")

    def deployment(self) -> dict[str, Any]:
        """The service's keyword arguments; blank optional fields take the service's defaults."""
        data = dict(self.cleaned_data)
        return {name: value for name, value in data.items() if value not in (None, "")}


class UpstreamDeployForm(forms.Form):
    """A deployment served by an engine the operator runs (vLLM, llama.cpp, …)."""

    name = forms.CharField(
        label="Deployment", max_length=64, help_text="How clients call it, e.g. llama-8b."
    )
    upstream_urls = forms.CharField(
        label="Engine URLs",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One base URL per replica, one per line, e.g. http://10.0.0.5:8000.",
    )
    upstream_model = forms.CharField(
        label="Model at the engine",
        max_length=256,
        required=False,
        help_text="What the engine serves it as; empty: the deployment's.",
    )
    # Never rendered back into the page, not even after a form error.
    upstream_api_key = forms.CharField(
        label="Engine API key",
        required=False,
        max_length=4096,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown again.",
    )
    max_concurrent_seqs = forms.IntegerField(
        label="Concurrent sequences per replica", initial=8, required=False
    )
    context_length = forms.IntegerField(label="Context length", initial=8192, required=False)
    connect_timeout = forms.FloatField(label="Connect timeout (s)", initial=5, required=False)
    read_timeout = forms.FloatField(label="Read timeout (s)", initial=60, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Its own ids: it shares the page (and field names) with the deploy form.
        kwargs.setdefault("auto_id", "connect_%s")
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "input")
        self.fields["name"].widget.attrs.update(placeholder="llama-8b", autocomplete="off")
        self.fields["upstream_urls"].widget.attrs.update(placeholder="http://10.0.0.5:8000")
        self.fields["upstream_api_key"].widget.attrs.update(autocomplete="new-password")

    def deployment(self) -> dict[str, Any]:
        """The service's keyword arguments; blank optional fields take the service's defaults."""
        data = {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}
        data["upstream_urls"] = [
            line.strip() for line in data.get("upstream_urls", "").splitlines() if line.strip()
        ]
        return {"backend": "openai-compatible", **data}


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(label="Replicas")


class _KeyAndModelFilters(forms.Form):
    """A filter form with `key` and `model` choices: the keys and models the reader may see."""

    def __init__(
        self, *args: Any, keys: list[tuple[str, str]], models: list[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        key_field = self.fields["key"]
        model_field = self.fields["model"]
        assert isinstance(key_field, forms.ChoiceField)
        assert isinstance(model_field, forms.ChoiceField)
        key_field.choices = [("", "All keys"), *keys]
        model_field.choices = [("", "All models")] + [(m, m) for m in models]
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "input")


class UsageFilterForm(_KeyAndModelFilters):
    window = forms.ChoiceField(
        label="Time range", choices=WINDOW_CHOICES, required=False, initial="24h"
    )
    key = forms.ChoiceField(label="API key", required=False)
    model = forms.ChoiceField(label="Model", required=False)


STATUS_CHOICES = [
    ("", "Any status"),
    ("2xx", "Succeeded (2xx)"),
    ("4xx", "Client errors (4xx)"),
    ("5xx", "Server errors (5xx)"),
    ("429", "Rate limited (429)"),
    ("499", "Client went away (499)"),
]


class RequestLogFilterForm(_KeyAndModelFilters):
    """Renders the request log's filters. Parsing is `telemetry.requestlog.RequestQuery.parse`,
    the API's own, so the page, the API and the CSV mean the same by each filter."""

    key = forms.ChoiceField(label="API key", required=False)
    model = forms.ChoiceField(label="Model", required=False)
    status = forms.ChoiceField(label="Status", choices=STATUS_CHOICES, required=False)
    since = forms.CharField(
        label="From (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    until = forms.CharField(
        label="Until (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
