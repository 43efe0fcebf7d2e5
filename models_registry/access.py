"""Who sees which deployments: operators see the fleet; everyone else sees what they can use."""

from __future__ import annotations

from django.db.models import QuerySet

from keys.access import Actor
from models_registry.models import LIVE_STATES, DeployedModel, ModelState
from nebula_site.errors import NotFound


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
