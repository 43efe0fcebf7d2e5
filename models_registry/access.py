"""Who sees which deployments: operators see the fleet; everyone else sees what they can use."""

from __future__ import annotations

from django.db.models import Max, QuerySet

from infra.errors import NotFound
from keys.access import Actor
from models_registry.models import DeployedModel, ModelState


def _latest_per_name() -> QuerySet[DeployedModel]:
    """One deployment per name: the live one, or else the latest that ended. So a listing never
    shows two rows with one `id`, and a stopped or failed deployment stays in view (with its
    reason) until it is deleted or its name deployed again."""
    latest = DeployedModel.objects.values("name").annotate(latest=Max("pk")).values("latest")
    return DeployedModel.objects.filter(pk__in=latest)


def deployments_visible_to(actor: Actor) -> QuerySet[DeployedModel]:
    if actor.is_operator:
        return _latest_per_name().select_related("owner")
    # Users (and regular keys) see the models they can call, not the fleet's inner workings.
    visible = DeployedModel.objects.select_related("owner").filter(state=ModelState.READY)
    if actor.key is not None and actor.key.allowed_models:
        visible = visible.filter(name__in=actor.key.allowed_models)
    return visible


def fleet_for(actor: Actor) -> QuerySet[DeployedModel]:
    """The dashboard's fleet: what `deployments_visible_to` shows, in the fleet table's order."""
    return deployments_visible_to(actor).order_by("name")


def deployment_get_for(actor: Actor, name: str) -> DeployedModel:
    """The deployment called `name` (for operators, the one listed under it), else 404."""
    model = deployments_visible_to(actor).filter(name=name).first()
    if model is None:
        raise NotFound(f"No deployment named '{name}'.", param="name", code="model_not_found")
    return model
