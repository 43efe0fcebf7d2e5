"""Keys and teams in Django's admin: every change goes through the same services as the API and
the dashboard (so the same checks and the same audit entries)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from infra.errors import NebulaError
from keys import services
from keys.access import Actor, actor_for_user
from keys.models import ApiKey, Team, TeamMembership
from keys.reveal import secret_claim, secret_stash

REVEAL_PARAM = "reveal"
CREATE_FIELDS: tuple[str, ...] = ("owner", "team", "name", "rpm_limit", "tpm_limit")
CREATE_FIELDS += ("allowed_models", "expires_at", "is_admin")


def _actor(request: HttpRequest) -> Actor:
    return actor_for_user(request.user)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = [
        "name",
        "owner",
        "team",
        "prefix",
        "state",
        "is_admin",
        "rpm_limit",
        "tpm_limit",
        "created_at",
        "last_used_at",
    ]
    list_filter = ["is_admin", "team", ("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "prefix", "owner__username", "team__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at", "rotated_at"]
    fields = [
        "name",
        "owner",
        "team",
        "prefix",
        "rpm_limit",
        "tpm_limit",
        "allowed_models",
        "expires_at",
        "is_admin",
        "created_at",
        "last_used_at",
        "rotated_at",
        "revoked_at",
    ]
    autocomplete_fields = ["owner"]
    actions = ["revoke_keys"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        return obj.state

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)

        class CheckedForm(form):  # type: ignore[misc, valid-type]
            """Runs the service's checks, so a refusal is shown on the form, not as a 500."""

            def clean(self) -> dict[str, Any]:
                data: dict[str, Any] = super().clean()
                if self.errors:
                    return data
                try:
                    if obj is None:
                        request_: dict[str, Any] = {f: data[f] for f in CREATE_FIELDS if f in data}
                        services.check_key_create(actor=_actor(request), **request_)
                    elif "expires_at" in self.changed_data:
                        services.check_key_expiry(data.get("expires_at"))
                except NebulaError as error:
                    field = error.param if error.param in self.fields else None
                    self.add_error(field, error.message)
                return data

        return CheckedForm

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        # Who owns a key and what it may do are fixed at creation (revoke and create another).
        fixed = ["owner", "team", "is_admin"] if obj is not None else []
        return [*self.readonly_fields, *fixed]

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.key_revoke(actor=_actor(request), key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        actor = _actor(request)
        if change:
            editable = ("name", "rpm_limit", "tpm_limit", "allowed_models", "expires_at")
            changes = {name: getattr(obj, name) for name in editable if name in form.changed_data}
            services.key_update(actor=actor, key=obj, **changes)
            return
        created = services.key_create(
            actor=actor,
            owner=obj.owner,
            team=obj.team,
            name=obj.name,
            rpm_limit=obj.rpm_limit,
            tpm_limit=obj.tpm_limit,
            allowed_models=obj.allowed_models,
            expires_at=obj.expires_at,
            is_admin=obj.is_admin,
        )
        obj.pk = created.key.pk
        obj.prefix = created.key.prefix
        # Shown once, on the page the redirect lands on: never in a flash message (those live in
        # the session, in the database) and never in a page a reload would post again.
        request._nebula_reveal = secret_stash(  # type: ignore[attr-defined]
            secret=created.secret, user_id=request.user.pk, key_id=created.key.pk
        )

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        token = getattr(request, "_nebula_reveal", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        url = reverse("admin:keys_apikey_change", args=[obj.pk])
        return HttpResponseRedirect(f"{url}?{REVEAL_PARAM}={token}")

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        token = request.GET.get(REVEAL_PARAM)
        secret = None
        if token and request.method == "GET" and str(object_id).isdigit():
            revealed = secret_claim(token=token, user_id=request.user.pk, key_id=int(object_id))
            secret = revealed.secret if revealed else None
        context = {**(extra_context or {}), "revealed_secret": secret, "reveal_asked": bool(token)}
        response = super().change_view(request, object_id, form_url, context)
        return response  # the admin's pages are never cached (no-store) anyway

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Keys are revoked, not deleted: usage records keep pointing at them.
        return False


class MembershipFormSet(BaseInlineFormSet[TeamMembership, Team, Any]):
    """Members added, re-roled or removed in the admin go through the team services."""

    def save(self, commit: bool = True) -> list[TeamMembership]:
        actor = _actor(self.request)  # type: ignore[attr-defined]
        team = self.instance
        saved: list[TeamMembership] = []
        # What the admin's change message reads (BaseModelFormSet.save would set these).
        self.new_objects, self.changed_objects, self.deleted_objects = [], [], []
        for form in self.deleted_forms:
            if form.instance.pk:
                services.team_member_remove(actor=actor, team=team, user=form.instance.user)
                self.deleted_objects.append(form.instance)
        for form in self.forms:
            if form in self.deleted_forms or not form.has_changed():
                continue
            data = form.cleaned_data
            if form.instance.pk:
                membership = services.team_member_set_role(
                    actor=actor, team=team, user=form.instance.user, role=data["role"]
                )
                self.changed_objects.append((membership, form.changed_data))
            elif data.get("user"):
                membership = services.team_member_add(
                    actor=actor, team=team, user=data["user"], role=data["role"]
                )
                self.new_objects.append(membership)
            else:
                continue
            saved.append(membership)
        return saved


class MembershipInline(admin.TabularInline[TeamMembership, Team]):
    model = TeamMembership
    formset = MembershipFormSet
    extra = 1
    fields = ["user", "role", "joined_at"]
    readonly_fields = ["joined_at"]
    autocomplete_fields = ["user"]

    def get_formset(self, request: HttpRequest, obj: Team | None = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        formset.request = request  # type: ignore[attr-defined]
        return formset

    def get_readonly_fields(self, request: HttpRequest, obj: Team | None = None) -> Any:
        return ["joined_at"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin[Team]):
    list_display = ["name", "member_count", "created_at"]
    search_fields = ["name"]
    fields = ["name", "created_at"]
    readonly_fields = ["created_at"]
    inlines = [MembershipInline]

    @admin.display(description="members")
    def member_count(self, obj: Team) -> int:
        return obj.memberships.count()

    def save_model(self, request: HttpRequest, obj: Team, form: Any, change: bool) -> None:
        # The form has checked the name (unique, not blank): what is left cannot fail.
        if change:
            services.team_rename(actor=_actor(request), team=obj, name=obj.name)
        else:
            created = services.team_create(actor=_actor(request), name=obj.name)
            obj.pk = created.pk
            obj.created_at = created.created_at

    def has_delete_permission(self, request: HttpRequest, obj: Team | None = None) -> bool:
        # A team owns keys (and their usage history): it is not deleted.
        return False
