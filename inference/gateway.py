"""The /v1 gateway: who is asking (key resolution), may they (model access), and admission.

Every /v1 request and every playground message passes here before anything else happens:
`gateway_authenticate` resolves the credential once, from this process's cache; the edge then
reads the body; `gateway_admit` checks the model and runs the admission script (rate limits,
and the enqueue when there is a job), in one round trip to Redis. A refusal is a `NebulaError`;
whoever catches it records it through the request's `RequestContext`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.admission import Admission, admit
from inference.heartbeats import WORKERS_KEY
from inference.jobs import QUEUE
from infra.epoch import EPOCH_KEY, current_epoch, observe_epoch
from infra.errors import (
    AuthenticationFailed,
    NebulaError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from infra.redis_client import REDIS_ERRORS, get_async_redis
from keys.auth import INVALID_KEY_MESSAGE, KeyInfo, key_info_for_id, key_info_for_secret
from models_registry.catalog import ModelInfo, catalog_snapshot
from telemetry.events import usage_event
from telemetry.ledger import usage_record


@dataclass
class RequestContext:
    """What we know about a request so far; enough to write its usage record at any point."""

    request_id: str
    endpoint: str
    client: str = "api"
    stream: bool = False
    started: float = field(default_factory=time.time)
    key: KeyInfo | None = None
    model: str = ""

    async def record(
        self,
        *,
        status: int,
        error_code: str = "",
        finish_reason: str = "",
        **extra: Any,
    ) -> None:
        """Write the record of a request no model served (so no tokens are billed)."""
        await usage_record(
            usage_event(
                request_id=self.request_id,
                key_id=self.key.id if self.key else None,
                key_prefix=self.key.prefix if self.key else "",
                model=self.model,
                endpoint=self.endpoint,
                client=self.client,
                status=status,
                error_code=error_code,
                finish_reason=finish_reason,
                stream=self.stream,
                latency_ms=(time.time() - self.started) * 1000,
                created_at=self.started,
                **extra,
            )
        )

    async def record_refusal(self, error: NebulaError) -> None:
        if not getattr(error, "recorded", False):
            await self.record(
                status=error.status, error_code=error.code or "", finish_reason="error"
            )


@dataclass(frozen=True)
class KeyById:
    """A credential from the dashboard: the key's id, on behalf of its logged-in owner."""

    key_id: int
    user_id: int


Credential = str | KeyById
# Builds the job once the key and the model are known: (Celery message, token cost).
JobBuilder = Callable[[KeyInfo, ModelInfo], tuple[bytes, int]]


@dataclass(frozen=True)
class Caller:
    """A resolved credential: the key, and the cache epoch that answer is valid for."""

    credential: Credential
    key: KeyInfo
    epoch: str | None


@dataclass(frozen=True)
class Admitted:
    key: KeyInfo
    model: ModelInfo | None
    admission: Admission


async def _resolve(credential: Credential) -> tuple[KeyInfo | None, str | None]:
    if isinstance(credential, str):
        return await key_info_for_secret(credential)
    epoch = current_epoch()
    info = await key_info_for_id(credential.key_id)
    if info is not None and info.owner_id != credential.user_id:
        info = None
    return info, epoch


async def _epoch_moved(client: Any, epoch: str | None) -> bool:
    """True if the caches that produced a refusal are out of date (then refresh and retry)."""
    current = await client.get(EPOCH_KEY)
    if current is None or current.decode() != epoch:
        observe_epoch(current.decode() if current else "")
        return True
    return False


async def gateway_authenticate(ctx: RequestContext, *, credential: Credential) -> Caller:
    """The key behind `credential`, usable right now, or 401. Unknown keys are refused before
    anything looks at the body, as OpenAI does. A revoked or expired answer from the cache is
    confirmed against the epoch first (the key may have been restored since)."""
    try:
        for _ in range(4):
            key, epoch = await _resolve(credential)
            if key is None:
                raise AuthenticationFailed(INVALID_KEY_MESSAGE)
            ctx.key = key
            try:
                key.check_usable()
            except AuthenticationFailed:
                if await _epoch_moved(get_async_redis(), epoch):
                    continue
                raise
            return Caller(credential=credential, key=key, epoch=epoch)
    except REDIS_ERRORS:
        raise _redis_unavailable() from None
    raise _config_changing()


def _model_refusal(key: KeyInfo, model_name: str, model: ModelInfo | None) -> NebulaError | None:
    if model is None or not model.is_ready:
        state = f" (it is {model.state})" if model is not None else ""
        return NotFound(
            f"The model '{model_name}' does not exist or is not ready{state}.",
            param="model",
            code="model_not_found",
        )
    if not key.may_use(model_name):
        return PermissionDenied(
            f"This API key is not allowed to use the model '{model_name}'.",
            param="model",
            code="model_not_allowed",
        )
    return None


async def gateway_admit(
    ctx: RequestContext,
    *,
    caller: Caller,
    model_name: str | None = None,
    build_job: JobBuilder | None = None,
) -> Admitted:
    """Check the model, rate-limit and (with `build_job`) enqueue: one Redis trip.

    Answers come from this process's caches; the admission script confirms they are current
    (the epoch), and on a mismatch the caches are dropped and the whole check runs again.
    """
    client = get_async_redis()
    key, key_epoch = caller.key, caller.epoch
    try:
        for attempt in range(4):
            if attempt:
                caller = await gateway_authenticate(ctx, credential=caller.credential)
                key, key_epoch = caller.key, caller.epoch
            refusal: NebulaError | None = None
            model: ModelInfo | None = None
            epoch = key_epoch
            if model_name is not None:
                catalog, catalog_epoch = await catalog_snapshot()
                epoch = key_epoch if key_epoch == catalog_epoch else None
                model = catalog.get(model_name)
                refusal = _model_refusal(key, model_name, model)
            message, cost = b"", 0
            if refusal is None and build_job is not None and model is not None:
                message, cost = build_job(key, model)
                if key.tpm_limit and cost > key.tpm_limit:
                    raise RateLimited(
                        f"Request too large: it may use up to {cost} tokens, but this key allows "
                        f"{key.tpm_limit} tokens per minute. Lower max_tokens or shorten the "
                        "messages.",
                        code="tokens_exceeded",
                    )
            admission = await admit(
                client,
                key_id=key.id,
                expected_epoch=epoch,
                rpm_limit=key.rpm_limit,
                tpm_limit=key.tpm_limit if message else None,
                token_cost=cost,
                worker_ttl_ms=int(settings.NEBULA_WORKER_TTL * 1000) if message else 0,
                workers_key=WORKERS_KEY,
                queue=QUEUE,
                message=message,
            )
            if admission.status == "stale":
                observe_epoch(admission.epoch)
                continue
            if admission.status == "no_workers":
                raise ServiceUnavailable(
                    "No inference worker is running. Retry shortly.", code="no_workers_available"
                )
            if admission.status == "limited":
                raise RateLimited(
                    "Rate limit reached for this API key "
                    f"({key.rpm_limit} requests per minute"
                    + (f", {key.tpm_limit} tokens per minute" if key.tpm_limit else "")
                    + "). Retry after the time in the Retry-After header.",
                    headers=admission.headers(),
                )
            if refusal is not None:
                refusal.headers.update(admission.headers())
                raise refusal
            return Admitted(key=key, model=model, admission=admission)
    except REDIS_ERRORS:
        raise _redis_unavailable() from None
    raise _config_changing()


def _redis_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The service cannot reach its Redis server right now. Retry shortly.",
        code="redis_unavailable",
    )


def _config_changing() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Keys or models are changing right now. Retry the request.", code="config_changing"
    )
