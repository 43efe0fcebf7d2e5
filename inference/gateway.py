"""The /v1 gateway: who is asking (key resolution), may they (model access), and admission.

Every /v1 request and every playground message passes here before anything else happens:
`gateway_identify` resolves the credential once, from this process's cache; `gateway_precheck`
refuses a key this process knows to be over its limit before its body is read; the edge then
reads the body; `gateway_admit` checks the model and runs the admission script (rate limits,
and the enqueue when there is a job), in one round trip to Redis. A refusal is a `NebulaError`;
whoever catches it hands it to `gateway_refusal`, which charges a known key for it (a bad
request counts against the key's rate limit, as OpenAI does) and records or tallies it.

What a refusal may cost is bounded: requests without a usable key are limited per client
address (`NEBULA_UNAUTHENTICATED_RPM`) and tallied, not recorded one by one; a known key's bad
requests are charged before the body is tokenized, so they are bounded by its rate limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from billing.budgets import BudgetCharge, budget_charge, budget_refusal, budgets_warm
from inference.admission import Admission, address_charge, admit
from inference.heartbeats import WORKERS_KEY
from inference.jobs import QUEUE
from infra.epoch import EPOCH_KEY, MISS, EpochCache, current_epoch, observe_epoch
from infra.errors import (
    AuthenticationFailed,
    NebulaError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from infra.redis_client import REDIS_ERRORS, get_async_redis
from keys.auth import (
    INVALID_KEY_MESSAGE,
    KeyInfo,
    key_info_for_id,
    key_info_for_secret,
    key_known,
    parse_bearer,
)
from keys.ratelimit import format_duration
from models_registry.catalog import ModelInfo, catalog_snapshot
from telemetry.events import usage_event
from telemetry.ledger import usage_record
from telemetry.refusals import TALLIED_STATUSES, refusal_tally


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
    # The admission script charged the key for this request (so a refusal need not again).
    charged: bool = False
    # What the job may cost at worst, for budgets: (prompt tokens, the most completion tokens
    # of all its choices). Set by the job builder; without it, budgets price the token cost.
    worst_case_tokens: tuple[int, int] | None = None

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
        if getattr(error, "recorded", False):
            return
        if error.status in TALLIED_STATUSES:
            await refusal_tally(
                key_id=self.key.id if self.key else None,
                key_prefix=self.key.prefix if self.key else "",
                endpoint=self.endpoint,
                model=self.model,
                status=error.status,
                code=error.code or "",
            )
            return
        await self.record(status=error.status, error_code=error.code or "", finish_reason="error")


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


# Client addresses over NEBULA_UNAUTHENTICATED_RPM: address → monotonic time they may retry.
_blocked_addresses: dict[str, float] = {}
_MAX_BLOCKED_ADDRESSES = 10_000
# Keys this process has seen refused by their request limit: key id → (monotonic time of the
# refusal, the refusal). A key's request allowance only grows back with time (nothing refunds
# it), so until the refusal's retry time every request of the key would be refused too, and is,
# without a round trip. Cleared when keys change (the epoch), like every cache here.
_limited_keys: EpochCache[int, tuple[float, Admission]] = EpochCache("rate-limited keys")


def _address_refusal(retry_ms: int) -> RateLimited:
    return RateLimited(
        "Too many requests without a valid API key from this address. Retry after the time in "
        "the Retry-After header.",
        headers={"Retry-After": str(max(1, math.ceil(retry_ms / 1000)))},
    )


async def gateway_identify(
    ctx: RequestContext, *, authorization: str | None, address: str | None
) -> Caller:
    """The caller of a /v1 request from its `Authorization` header, or a refusal: 401, or 429
    for an address that sent too many requests without a usable key."""
    blocked_until = _blocked_addresses.get(address or "")
    if blocked_until is not None:
        left = blocked_until - time.monotonic()
        if left <= 0:
            _blocked_addresses.pop(address or "", None)
        elif not key_known(authorization_secret(authorization)):
            # Refused without a database lookup or a round trip; a key this process knows
            # still gets through.
            raise _address_refusal(int(left * 1000))
    try:
        return await gateway_authenticate(ctx, credential=parse_bearer(authorization))
    except AuthenticationFailed as refusal:
        if address is None:
            raise
        try:
            retry_ms = await address_charge(
                get_async_redis(),
                address=address,
                per_minute=settings.NEBULA_UNAUTHENTICATED_RPM,
            )
        except REDIS_ERRORS:
            raise refusal from None
        if not retry_ms:
            raise
        if len(_blocked_addresses) >= _MAX_BLOCKED_ADDRESSES:
            _blocked_addresses.clear()
        _blocked_addresses[address] = time.monotonic() + retry_ms / 1000
        raise _address_refusal(retry_ms) from None


def authorization_secret(authorization: str | None) -> str:
    """The token an `Authorization` header carries, or "" (no I/O, no validation)."""
    _, _, token = (authorization or "").partition(" ")
    return token.strip()


async def gateway_precheck(ctx: RequestContext, caller: Caller) -> None:
    """Refuse at once a key this process knows to be over its request limit: before its body is
    read or tokenized, with one small round trip (is the key still what this process thinks?
    revoked or re-limited since, it must be answered as it is now)."""
    cached = _limited_keys.get(caller.key.id)
    if cached is MISS:
        return
    at, admission = cached  # type: ignore[misc]
    elapsed_ms = int((time.monotonic() - at) * 1000)
    if elapsed_ms >= admission.rpm_retry_ms:
        return
    try:
        if await _epoch_moved(get_async_redis(), caller.epoch):
            return  # the caches are dropped; the admission script will judge the request
    except REDIS_ERRORS:
        raise _redis_unavailable() from None
    ctx.charged = True
    raise _rate_limited(caller.key, admission.later(elapsed_ms), cost=0)


async def gateway_refusal(
    ctx: RequestContext, caller: Caller | None, error: NebulaError
) -> NebulaError:
    """What a refused request is finally told, once it is charged and recorded.

    A known key's refusal that the admission script has not seen yet (a bad body, a context too
    long) is charged against the key's request limit first, so bad requests cannot flood: past
    the limit, they are 429s. 401s and 429s are tallied, everything else recorded.
    """
    if caller is not None and not ctx.charged and error.status < 500 and error.status != 429:
        try:
            admitted = await gateway_admit(ctx, caller=caller)
        except (RateLimited, AuthenticationFailed) as refusal:
            error = refusal  # over the limit, or the key changed since (revoked, say)
        except NebulaError:
            pass  # Redis is away: the refusal stands as it was
        else:
            error.headers.update(admitted.admission.headers())
    await ctx.record_refusal(error)
    return error


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
            charge: BudgetCharge | None = None
            if refusal is None and build_job is not None and model is not None:
                message, cost = build_job(key, model)
                if key.tpm_limit and cost > key.tpm_limit:
                    too_large = RateLimited(
                        f"Request too large on tokens per min (TPM): Limit {key.tpm_limit}, "
                        f"Requested {cost}. The input or output tokens must be reduced in order "
                        "to run successfully (lower max_tokens or shorten the messages).",
                        code="rate_limit_exceeded",
                    )
                    too_large.type = "tokens"
                    raise too_large
                charge = await budget_charge(
                    request_id=ctx.request_id,
                    key_id=key.id,
                    model=model.name,
                    worst_case_tokens=ctx.worst_case_tokens,
                    token_cost=cost,
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
                budget_keys=charge.script_keys() if charge else (),
                budget_args=charge.script_args() if charge else (),
            )
            if admission.status == "stale":
                observe_epoch(admission.epoch)
                continue
            if admission.status == "budget_cold" and charge is not None:
                await budgets_warm(client, charge, list(admission.budgets_cold))
                continue
            if admission.status in ("ok", "limited", "over_budget"):
                ctx.charged = True
            if admission.status == "no_workers":
                raise ServiceUnavailable(
                    "No inference worker is running. Retry shortly.", code="no_workers_available"
                )
            if admission.status == "limited":
                if admission.rpm_retry_ms > 0:
                    _limited_keys.put(key.id, (time.monotonic(), admission), epoch=key_epoch)
                raise _rate_limited(key, admission, cost=cost)
            if admission.status == "over_budget" and charge is not None:
                over = budget_refusal(
                    charge, index=admission.budget_index, spent_units=admission.budget_spent
                )
                over.headers.update(admission.headers())
                raise over
            if refusal is not None:
                refusal.headers.update(admission.headers())
                raise refusal
            return Admitted(key=key, model=model, admission=admission)
    except REDIS_ERRORS:
        raise _redis_unavailable() from None
    raise _config_changing()


def _rate_limited(key: KeyInfo, admission: Admission, *, cost: int) -> RateLimited:
    """OpenAI's 429 for a limit: which one (type `requests` or `tokens`), and its figures."""
    if admission.rpm_retry_ms >= admission.tpm_retry_ms:
        kind, name, limit = "requests", "requests per min (RPM)", key.rpm_limit
        used, requested, wait = limit - admission.rpm_remaining, 1, admission.rpm_retry_ms
    else:
        kind, name, limit = "tokens", "tokens per min (TPM)", key.tpm_limit or 0
        used, requested, wait = limit - admission.tpm_remaining, cost, admission.tpm_retry_ms
    error = RateLimited(
        f"Rate limit reached for this API key on {name}: Limit {limit}, Used {used}, "
        f"Requested {requested}. Please try again in {format_duration(max(wait, 1))}.",
        headers=admission.headers(),
    )
    error.type = kind
    return error


def _redis_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The service cannot reach its Redis server right now. Retry shortly.",
        code="redis_unavailable",
    )


def _config_changing() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Keys or models are changing right now. Retry the request.", code="config_changing"
    )
