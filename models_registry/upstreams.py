"""Deployments served by an OpenAI-compatible engine (vLLM, SGLang, llama.cpp, Ollama, TGI):
their configuration, the health of each replica, and which replica a request goes to.

- **Configuration** (`upstream_validate`, `upstream_create`, `upstream_target`): replica base
  URLs, the engine's model name, an optional API key (encrypted at rest, `infra.crypto`; workers
  decrypt it themselves, nothing else ever sees it again), timeouts.
- **Health** (`upstream_probe_round`, run by one worker at a time): every replica is asked for
  `/health`, `/v1/models` and, where it has one (vLLM), its Prometheus `/metrics` (requests
  running and waiting, KV-cache use). What it says goes to Redis; a replica that fails leaves the
  rotation, and comes back by itself once it answers again. The deployment's capacity (GPU
  slots, `inference.slots`) follows the replicas that are up.
- **Routing** (`replica_pick`): the least-loaded healthy replica, by Nebula's own requests in
  flight on it and the engine's reported queue, in one Redis script (so a burst spreads out).

Redis keys, per deployment id: `nebula:upstream:{id}:health` (replica id → 1 up / 0 down),
`…:load` (replica id → the engine's running + waiting), `…:status` (replica id → JSON for
people), and per replica `nebula:upstream-inflight:{replica id}` (request ids, scored by lease
expiry, like GPU slots).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from inference.slots import CAPACITY_KEY, lease_ms
from infra import aio
from infra.crypto import InvalidToken, secret_decrypt, secret_encrypt
from infra.errors import InvalidRequest
from infra.events import FLEET_GROUP, broadcast
from infra.lua import NOW_MS, LuaScript
from infra.redis_client import REDIS_ERRORS, get_async_redis, get_redis
from models_registry.models import (
    Backend,
    DeployedModel,
    ModelState,
    UpstreamConfig,
    UpstreamReplica,
)

logger = logging.getLogger(__name__)

MAX_UPSTREAM_REPLICAS = 64
MAX_TIMEOUT_SECONDS = 3600.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
PROBE_LOCK_KEY = "nebula:upstream-probe-lock"
# The engine's Prometheus gauges the router and the dashboard read (vLLM's names; newer vLLM
# calls the KV-cache gauge kv_cache_usage_perc).
METRIC_RUNNING = "vllm:num_requests_running"
METRIC_WAITING = "vllm:num_requests_waiting"
METRICS_KV_CACHE = ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc")


# --- configuration -------------------------------------------------------------------------------


class UpstreamSpec(TypedDict, total=False):
    """What an operator gives for an openai-compatible deployment (besides name and limits)."""

    upstream_urls: list[str]
    upstream_model: str
    upstream_api_key: str
    connect_timeout: float
    read_timeout: float


@dataclass(frozen=True)
class CleanUpstream:
    urls: tuple[str, ...]
    model_name: str
    api_key: str = field(repr=False)
    connect_timeout: float
    read_timeout: float


def normalize_url(raw: object) -> str:
    """An engine's base URL as stored: scheme, host, port and path, without a trailing `/v1`
    (people paste the URL they would give an OpenAI client). Refuses credentials in the URL:
    they would be shown to every operator and logged; the API key field is for that."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("an upstream URL must be a non-empty string")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'{raw}' is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("put credentials in upstream_api_key, not in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"'{raw}' has a query or fragment; give the engine's base URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"'{raw}' has an invalid port") from None
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1").rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))


def _timeout(spec: UpstreamSpec, name: str, default: float) -> float:
    value = spec.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT_SECONDS
    ):
        raise InvalidRequest(
            f"{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS:g}.",
            param=name,
        )
    return float(value)


def upstream_validate(spec: UpstreamSpec, *, deployment_name: str) -> CleanUpstream:
    """The upstream part of a deployment request, checked; 400 naming the first bad field."""
    urls = spec.get("upstream_urls")
    if isinstance(urls, str):
        urls = [line for line in urls.replace(",", "\n").splitlines() if line.strip()]
    if not isinstance(urls, list) or not urls:
        raise InvalidRequest(
            "An openai-compatible deployment needs upstream_urls: one base URL per replica, "
            "e.g. ['http://10.0.0.5:8000'].",
            param="upstream_urls",
        )
    if len(urls) > MAX_UPSTREAM_REPLICAS:
        raise InvalidRequest(
            f"At most {MAX_UPSTREAM_REPLICAS} upstream URLs.", param="upstream_urls"
        )
    clean: list[str] = []
    for index, raw in enumerate(urls):
        try:
            url = normalize_url(raw)
        except ValueError as error:
            raise InvalidRequest(
                f"upstream_urls[{index}]: {error}.", param="upstream_urls"
            ) from None
        if url in clean:
            raise InvalidRequest(f"upstream_urls[{index}] repeats {url}.", param="upstream_urls")
        clean.append(url)
    model_name = spec.get("upstream_model") or deployment_name
    if not isinstance(model_name, str) or not 0 < len(model_name) <= 256:
        raise InvalidRequest(
            "upstream_model must be the engine's model name (1-256 characters).",
            param="upstream_model",
        )
    api_key = spec.get("upstream_api_key") or ""
    if not isinstance(api_key, str) or len(api_key) > 4096 or any(c in api_key for c in "\r\n"):
        raise InvalidRequest(
            "upstream_api_key must be a string of at most 4096 characters on one line.",
            param="upstream_api_key",
        )
    return CleanUpstream(
        urls=tuple(clean),
        model_name=model_name,
        api_key=api_key,
        connect_timeout=_timeout(spec, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_timeout(spec, "read_timeout", DEFAULT_READ_TIMEOUT),
    )


def upstream_create(*, model: DeployedModel, upstream: CleanUpstream) -> None:
    """Store a validated upstream for a new deployment (inside the caller's transaction)."""
    UpstreamConfig.objects.create(
        deployment=model,
        model_name=upstream.model_name,
        api_key_encrypted=secret_encrypt(upstream.api_key) if upstream.api_key else "",
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
    )
    UpstreamReplica.objects.bulk_create(
        UpstreamReplica(deployment=model, url=url, position=index)
        for index, url in enumerate(upstream.urls)
    )


@dataclass(frozen=True, slots=True)
class Replica:
    id: int
    url: str


@dataclass(frozen=True)
class UpstreamTarget:
    """Everything a worker needs to send a deployment's requests upstream."""

    deployment_id: int
    name: str  # the deployment's (Nebula's) model name
    model_name: str  # the engine's
    api_key: str = field(repr=False)
    connect_timeout: float
    read_timeout: float
    max_concurrent_seqs: int
    replicas: tuple[Replica, ...]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _target_from(model: DeployedModel) -> UpstreamTarget | None:
    config = UpstreamConfig.objects.filter(deployment=model).first()
    if config is None:
        return None
    api_key = ""
    if config.api_key_encrypted:
        try:
            api_key = secret_decrypt(config.api_key_encrypted)
        except InvalidToken:
            # NEBULA_ENCRYPTION_KEY (or SECRET_KEY) changed: say so, and go on without the key
            # (the engine's 401 then tells the operator the same).
            logger.error(
                "the upstream API key of %s cannot be decrypted with NEBULA_ENCRYPTION_KEY",
                model.name,
            )
    replicas = tuple(
        Replica(id=r.pk, url=r.url) for r in UpstreamReplica.objects.filter(deployment=model)
    )
    return UpstreamTarget(
        deployment_id=model.pk,
        name=model.name,
        model_name=config.model_name,
        api_key=api_key,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_concurrent_seqs=model.max_concurrent_seqs,
        replicas=replicas,
    )


# deployment id → (target, loaded at). A deployment's upstream never changes once created, so
# the backstop TTL only bounds how long a deleted one lingers.
_targets: dict[int, tuple[UpstreamTarget, float]] = {}


def upstream_target(deployment_id: int, *, name: str) -> UpstreamTarget | None:
    """The upstream of deployment `deployment_id` called `name`, from this process's cache or
    the database (sync code). The name guards against a database that reuses ids."""
    cached = _targets.get(deployment_id)
    if (
        cached is not None
        and cached[0].name == name
        and cached[1] > time.monotonic() - settings.NEBULA_CACHE_TTL
    ):
        return cached[0]
    model = DeployedModel.objects.filter(pk=deployment_id).first()
    target = _target_from(model) if model is not None else None
    if target is not None:
        if len(_targets) > 1000:
            _targets.clear()
        _targets[deployment_id] = (target, time.monotonic())
    return target


# --- replica state in Redis ----------------------------------------------------------------------


def health_key(deployment_id: int) -> str:
    return f"nebula:upstream:{deployment_id}:health"


def load_key(deployment_id: int) -> str:
    return f"nebula:upstream:{deployment_id}:load"


def status_key(deployment_id: int) -> str:
    return f"nebula:upstream:{deployment_id}:status"


def inflight_key(replica_id: int) -> str:
    return f"nebula:upstream-inflight:{replica_id}"


def _state_ttl() -> int:
    # Without a prober (no worker running), what it last said expires: health is then unknown.
    return max(int(settings.NEBULA_UPSTREAM_PROBE_INTERVAL * 10), 30)


class ReplicaStatus(TypedDict):
    healthy: bool
    latency_ms: float | None
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    checked_at: float
    error: str


# KEYS: health, load, then the in-flight set of each replica. ARGV: request id, lease ms, then
# the replica ids in the same order. Returns replica ids, best first: replicas not known to be
# down before those that are, then by load (Nebula's requests in flight there, or the engine's
# own running + waiting count if higher: others may use the engine too), then by position. The
# request takes a lease on the first one.
_PICK = LuaScript(
    NOW_MS
    + """
local order = {}
for i = 3, #KEYS do
  local rid = ARGV[i]
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local inflight = redis.call('ZCARD', KEYS[i])
  local reported = tonumber(redis.call('HGET', KEYS[2], rid) or '0') or 0
  local down = 0
  if redis.call('HGET', KEYS[1], rid) == '0' then down = 1 end
  table.insert(order, {down, math.max(inflight, reported), i, rid})
end
table.sort(order, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end)
redis.call('ZADD', KEYS[order[1][3]], now + tonumber(ARGV[2]), ARGV[1])
local ids = {}
local downs = {}
for _, entry in ipairs(order) do
  table.insert(ids, entry[4])
  table.insert(downs, entry[1])
end
return {ids, downs}
"""
)

# KEYS: the in-flight set to leave ('' = none), the one to join. ARGV: request id, lease ms.
_MOVE = LuaScript(
    NOW_MS
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

_RENEW = LuaScript(
    NOW_MS
    + """
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
"""
)


@dataclass(frozen=True)
class Route:
    """Where to send a request: replicas in the order to try them."""

    candidates: tuple[Replica, ...]


async def replica_pick(target: UpstreamTarget, *, request_id: str) -> Route:
    """The replicas to try for a request, best first; the request now counts against the first.
    Replicas known to be down are only tried when every replica is down (the prober may be
    behind, and trying costs a refused connection)."""
    by_id = {str(r.id): r for r in target.replicas}
    ids, downs = await _PICK.acall(
        get_async_redis(),
        [
            health_key(target.deployment_id),
            load_key(target.deployment_id),
            *(inflight_key(r.id) for r in target.replicas),
        ],
        [request_id, lease_ms(), *(str(r.id) for r in target.replicas)],
    )
    ordered = [by_id[raw.decode()] for raw in ids]
    up = [replica for replica, down in zip(ordered, downs, strict=True) if not int(down)]
    return Route(candidates=tuple(up or ordered))


async def replica_switch(*, old: Replica, new: Replica, request_id: str) -> None:
    await _MOVE.acall(
        get_async_redis(), [inflight_key(old.id), inflight_key(new.id)], [request_id, lease_ms()]
    )


async def replica_renew(replica: Replica, *, request_id: str) -> None:
    await _RENEW.acall(get_async_redis(), [inflight_key(replica.id)], [request_id, lease_ms()])


async def replica_release(replica: Replica, *, request_id: str) -> None:
    await get_async_redis().zrem(inflight_key(replica.id), request_id)


def _status_down(error: str) -> ReplicaStatus:
    return {
        "healthy": False,
        "latency_ms": None,
        "running": None,
        "waiting": None,
        "kv_cache_usage": None,
        "checked_at": time.time(),
        "error": error,
    }


async def replica_mark_down(target: UpstreamTarget, replica: Replica, *, error: str) -> None:
    """A request found the replica failing: out of the rotation now, not at the next probe."""
    status = _status_down(error)
    client = get_async_redis()
    pipe = client.pipeline(transaction=False)
    pipe.hset(health_key(target.deployment_id), str(replica.id), "0")
    pipe.hset(status_key(target.deployment_id), str(replica.id), orjson.dumps(status))
    await pipe.execute()


# --- probing -------------------------------------------------------------------------------------


def describe_http_error(error: BaseException) -> str:
    """A short reason for a failed request to an engine, for operators (never the key)."""
    if isinstance(error, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(error, httpx.ConnectError):
        return f"could not connect ({error or 'refused'})"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection broke off"
    return f"{type(error).__name__}: {error}"[:300]


def _metric_sums(text: str) -> dict[str, float]:
    wanted = {METRIC_RUNNING, METRIC_WAITING, *METRICS_KV_CACHE}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums


async def replica_probe(target: UpstreamTarget, replica: Replica) -> ReplicaStatus:
    """Ask one replica how it is. Healthy: `/health` answers 200 (engines without one: 404)
    and `/v1/models` answers and, if it lists models, lists ours."""
    client = aio.http_client()
    timeout = httpx.Timeout(settings.NEBULA_UPSTREAM_PROBE_TIMEOUT)
    status = _status_down("")  # until it says otherwise
    try:
        started = time.perf_counter()
        health = await client.get(replica.url + "/health", timeout=timeout)
        status["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if health.status_code not in (200, 404, 405):
            status["error"] = f"/health answered {health.status_code}"
            return status
        models = await client.get(
            replica.url + "/v1/models", headers=target.headers, timeout=timeout
        )
        if models.status_code != 200:
            status["error"] = f"/v1/models answered {models.status_code}"
            return status
        try:
            served = [str(m.get("id")) for m in models.json().get("data", [])]
        except (ValueError, AttributeError):
            status["error"] = "/v1/models answered something that is not a model list"
            return status
        if served and target.model_name not in served:
            shown = ", ".join(served[:5]) + (" …" if len(served) > 5 else "")
            status["error"] = f"does not serve '{target.model_name}' (it serves: {shown})"
            return status
        status["healthy"] = True
        metrics = await client.get(replica.url + "/metrics", timeout=timeout)
        if metrics.status_code == 200:
            try:
                sums = _metric_sums(metrics.text)
            except ValueError:
                sums = {}  # not Prometheus text: the engine has no such metrics
            status["running"] = sums.get(METRIC_RUNNING)
            status["waiting"] = sums.get(METRIC_WAITING)
            kv = [sums[name] for name in METRICS_KV_CACHE if name in sums]
            status["kv_cache_usage"] = kv[0] if kv else None
    except httpx.HTTPError as error:
        status["healthy"] = False
        status["error"] = describe_http_error(error)
    return status


async def probe_target(target: UpstreamTarget) -> tuple[dict[int, ReplicaStatus], bool]:
    """Probe every replica of a deployment at once and store what they said. Returns the
    statuses by replica id, and whether any replica changed between up and down."""
    results = await asyncio.gather(*(replica_probe(target, r) for r in target.replicas))
    statuses = {
        replica.id: status for replica, status in zip(target.replicas, results, strict=True)
    }
    client = get_async_redis()
    ttl = _state_ttl()
    before = await client.hgetall(health_key(target.deployment_id))
    health = {str(rid): "1" if s["healthy"] else "0" for rid, s in statuses.items()}
    load = {str(rid): int((s["running"] or 0) + (s["waiting"] or 0)) for rid, s in statuses.items()}
    pipe = client.pipeline(transaction=False)
    pipe.hset(health_key(target.deployment_id), mapping=health)  # type: ignore[arg-type]
    pipe.hset(load_key(target.deployment_id), mapping=load)  # type: ignore[arg-type]
    pipe.hset(
        status_key(target.deployment_id),
        mapping={str(rid): orjson.dumps(s) for rid, s in statuses.items()},
    )
    for key in (health_key, load_key, status_key):
        pipe.expire(key(target.deployment_id), ttl)
    await pipe.execute()
    previous = {_text(k): _text(v) for k, v in before.items()}
    changed = previous != health
    return statuses, changed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def capacity_for(target: UpstreamTarget, statuses: dict[int, ReplicaStatus]) -> int:
    """GPU slots: the replicas that are up, each `max_concurrent_seqs`. With none up, all of
    them: requests then fail at once with `upstream_unavailable` instead of queueing."""
    up = sum(1 for status in statuses.values() if status["healthy"])
    return (up or len(target.replicas)) * target.max_concurrent_seqs


async def _probe_all(targets: list[UpstreamTarget]) -> list[str]:
    outcomes = await asyncio.gather(*(probe_target(t) for t in targets), return_exceptions=True)
    changed: list[str] = []
    capacities: dict[str, int] = {}
    for target, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.warning("probing %s failed: %r", target.name, outcome)
            continue
        statuses, flipped = outcome
        capacities[target.name] = capacity_for(target, statuses)
        if flipped:
            changed.append(target.name)
    if capacities:
        await get_async_redis().hset(CAPACITY_KEY, mapping=capacities)  # type: ignore[arg-type]
    return changed


def upstream_targets_live() -> list[UpstreamTarget]:
    """Fresh from the database: every ready deployment served by an upstream."""
    models = DeployedModel.objects.filter(backend=Backend.OPENAI_COMPATIBLE, state=ModelState.READY)
    return [target for model in models if (target := _target_from(model)) is not None]


def upstream_probe_round() -> int:
    """One round of the prober (a worker's background thread): probe every ready upstream
    deployment, publish capacities, and tell dashboards about replicas that went up or down.
    Returns how many deployments were probed."""
    targets = upstream_targets_live()
    if not targets:
        return 0
    changed = aio.run(_probe_all(targets))
    for name in changed:
        broadcast(FLEET_GROUP, {"type": "fleet.model", "model": {"id": name, "name": name}})
    return len(targets)


def upstream_wait_ready(
    *, model: DeployedModel, still_loading: Callable[[], bool], poll: float = 1.0
) -> tuple[bool | None, str]:
    """A new upstream deployment's "loading": probe its replicas until one answers.

    Returns (True, note) once a replica is healthy, (False, reason) if none was within
    NEBULA_UPSTREAM_LOAD_TIMEOUT, (None, "") if the deployment stopped loading meanwhile.
    """
    target = _target_from(model)
    if target is None or not target.replicas:
        return False, "The deployment has no upstream configured."
    deadline = time.monotonic() + settings.NEBULA_UPSTREAM_LOAD_TIMEOUT
    while True:
        try:
            statuses, _ = aio.run(probe_target(target))
        except REDIS_ERRORS:
            statuses = {}
        healthy = [(r, statuses[r.id]) for r in target.replicas if r.id in statuses]
        healthy = [(r, status) for r, status in healthy if status["healthy"]]
        if healthy:
            replica, status = healthy[0]
            return True, (
                f"{len(healthy)} of {len(target.replicas)} upstream replica(s) answering "
                f"({replica.url} in {status['latency_ms']} ms)"
            )
        if time.monotonic() >= deadline:
            reasons = "; ".join(
                f"{r.url}: {statuses[r.id]['error'] if r.id in statuses else 'not probed'}"
                for r in target.replicas
            )
            return False, (
                f"No upstream replica answered within "
                f"{settings.NEBULA_UPSTREAM_LOAD_TIMEOUT:g} s. {reasons}"
            )
        time.sleep(min(poll, max(deadline - time.monotonic(), 0)))
        if not still_loading():
            return None, ""


# --- what operators see --------------------------------------------------------------------------


def _summary(health: str, status: dict[str, Any], in_flight: int) -> str:
    """One line for people: "healthy · 3.1 ms · 2 running, 0 waiting · KV 41% · 1 in flight"."""
    parts = [health]
    if status.get("latency_ms") is not None:
        parts.append(f"{status['latency_ms']:.1f} ms")
    if status.get("running") is not None:
        parts.append(f"{status['running']:g} running, {status.get('waiting') or 0:g} waiting")
    if status.get("kv_cache_usage") is not None:
        parts.append(f"KV {status['kv_cache_usage'] * 100:.0f}%")
    parts.append(f"{in_flight} in flight")
    return " · ".join(parts)


def upstream_serialize(model: DeployedModel) -> dict[str, Any] | None:
    """The upstream of a deployment, with each replica's health, for operators. Never the key."""
    if model.backend != Backend.OPENAI_COMPATIBLE:
        return None
    config = UpstreamConfig.objects.filter(deployment=model).first()
    replicas = list(UpstreamReplica.objects.filter(deployment=model))
    raw: dict[bytes, bytes] = {}
    inflight: list[int] = [0] * len(replicas)
    try:
        client = get_redis()
        raw = client.hgetall(status_key(model.pk))  # type: ignore[assignment]
        pipe = client.pipeline(transaction=False)
        now_ms = time.time() * 1000
        for replica in replicas:
            pipe.zcount(inflight_key(replica.pk), now_ms, "+inf")
        inflight = [int(n) for n in pipe.execute()]
    except REDIS_ERRORS:
        pass
    rows = []
    for replica, in_flight in zip(replicas, inflight, strict=True):
        blob = raw.get(str(replica.pk).encode())
        status: dict[str, Any] = orjson.loads(blob) if blob else {}
        health = "unknown" if not status else ("healthy" if status.get("healthy") else "down")
        rows.append(
            {
                "id": replica.pk,
                "url": replica.url,
                "health": health,
                "summary": _summary(health, status, in_flight),
                "latency_ms": status.get("latency_ms"),
                "running": status.get("running"),
                "waiting": status.get("waiting"),
                "kv_cache_usage": status.get("kv_cache_usage"),
                "in_flight": in_flight,
                "checked_at": status.get("checked_at"),
                "error": status.get("error") or None,
            }
        )
    return {
        "model": config.model_name if config else None,
        "has_api_key": bool(config and config.api_key_encrypted),
        "connect_timeout": config.connect_timeout if config else None,
        "read_timeout": config.read_timeout if config else None,
        "replicas": rows,
    }
