"""What a deployment's kind asks of its spec: a chat model is anything the simulated engine (or
an upstream) can serve; an embedding model is a real model whose files Nebula has
(`models_registry.embedding_models`), named after it, served by the Celery workers."""

from __future__ import annotations

from typing import Any

from infra.errors import InvalidRequest
from models_registry.embedding_models import EMBEDDING_MODELS, embedding_model
from models_registry.models import Backend, ModelKind


def kind_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its kind's defaults filled in (an embedding model's size and sequence
    length are the real model's), or 400 naming what its kind does not allow."""
    kind = spec.get("kind", ModelKind.CHAT)
    if kind not in ModelKind.values:
        raise InvalidRequest(f"kind must be one of: {', '.join(ModelKind.values)}.", param="kind")
    if kind != ModelKind.EMBEDDING:
        return spec
    model = embedding_model(str(spec.get("name") or ""))
    if model is None:
        raise InvalidRequest(
            f"'{spec.get('name')}' is not an embedding model Nebula has. An embedding "
            f"deployment is named after its model: {', '.join(EMBEDDING_MODELS)}.",
            param="name",
            code="unknown_embedding_model",
        )
    if spec.get("backend", Backend.SIMULATED) != Backend.SIMULATED:
        raise InvalidRequest(
            "An embedding model runs on Nebula's own workers: leave backend out (or "
            f"'{Backend.SIMULATED}').",
            param="backend",
        )
    context = spec.get("context_length", model.max_seq_length)
    if isinstance(context, int) and context > model.max_seq_length:
        raise InvalidRequest(
            f"{model.name} reads at most {model.max_seq_length} tokens per input; "
            f"context_length cannot be {context}.",
            param="context_length",
        )
    if spec.get("params_billions") is not None:
        raise InvalidRequest(
            f"{model.name} is a real model of {model.parameters:,} parameters: leave "
            "params_billions out.",
            param="params_billions",
        )
    return {
        **spec,
        "params_billions": model.parameters / 1e9,
        "context_length": context,
    }
