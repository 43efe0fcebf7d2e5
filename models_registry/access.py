"""Who sees which deployments: operators see the fleet; everyone else sees what they can use."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from infra.errors import NotFound
from keys.access import Actor
from models_registry.models import LIVE_STATES, DeployedModel, ModelState


def deployments_visible_to(
    actor: Actor, *, include_history: bool = False
) -> QuerySet[DeployedModel]:
    models = DeployedModel.objects.select_related("owner")
    if actor.is_operator:
        return models if include_history else models.filter(state__in=LIVE_STATES)
    # Users (and regular keys) see the models they can call, not the fleet's inner workings.
    visible = models.filter(state=ModelState.READY)
    if actor.key is not None and actor.key.allowed_models:
        visible = visible.filter(name__in=actor.key.allowed_models)
    return visible


# How long a stopped or failed deployment stays on an operator's fleet page (then: the admin).
RECENTLY_ENDED = timedelta(hours=24)


def fleet_for(actor: Actor) -> QuerySet[DeployedModel]:
    """The dashboard's fleet: what `deployments_visible_to` shows, and for operators also the
    deployments that stopped or failed lately, so a failure and its reason stay in view."""
    if not actor.is_operator:
        return deployments_visible_to(actor)
    recent = Q(state__in=LIVE_STATES) | Q(updated_at__gte=timezone.now() - RECENTLY_ENDED)
    return deployments_visible_to(actor, include_history=True).filter(recent)


def deployment_get_for(actor: Actor, name: str) -> DeployedModel:
    """The live deployment called `name` (or, for operators, the latest one), else 404."""
    deployments = deployments_visible_to(actor, include_history=True).filter(name=name)
    model = (
        deployments.filter(state__in=LIVE_STATES).first()
        or deployments.order_by("-created_at").first()
    )
    if model is None:
        raise NotFound(f"No deployment named '{name}'.", param="name", code="model_not_found")
    return model
