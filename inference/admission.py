"""Admitting a request at the gateway: one Lua script, one round trip to Redis.

The script (1) confirms that the caches the caller answered from are current (the epoch, see
`infra.epoch`), (2) checks that a worker is alive when the request needs one (or that Redis
restarted too recently for their heartbeats to be back), (3) charges the key's rate limits
(GCRA, see `keys.ratelimit`) and the budgets that apply (their worst-case reservation, see
`billing.lua`), and (4) enqueues the job, all or nothing: a request is never queued without
being charged, nor charged for a job that was not queued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from billing import lua as budget_lua
from infra.epoch import EPOCH_KEY
from infra.lua import NOW_MS, LuaScript
from keys.ratelimit import format_duration, rpm_key, tpm_key

# KEYS: epoch, rpm TAT, tpm TAT, workers zset, queue list, then the budgets' (billing.lua)
# ARGV: expected epoch, rpm, tpm (0 = none), token cost, worker ttl ms (0 = no check), message,
# then the budgets'
_ADMIT = LuaScript(
    NOW_MS
    + """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = 'r' .. __t[1] .. __t[2]
  redis.call('SET', KEYS[1], epoch)
end
if epoch ~= ARGV[1] then return {'stale', epoch} end
local worker_ttl = tonumber(ARGV[5])
if worker_ttl > 0 and redis.call('ZCOUNT', KEYS[4], now - worker_ttl, '+inf') == 0 then
  -- No heartbeat within the TTL. If Redis itself has been up for less than that, the workers
  -- have not had the time to beat: a restarted Redis (empty, or replaying its append-only file)
  -- lost or outdated their heartbeats. Not knowing is not "none": queue the job (the watchdog
  -- still gives up on it after the queue timeout if no worker comes).
  local info = redis.pcall('INFO', 'server')
  local uptime = type(info) == 'string' and tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if not uptime or uptime * 1000 >= worker_ttl then
    return {'no_workers', epoch}
  end
end
local period = 60000
local rpm = tonumber(ARGV[2])
local r_interval = period / rpm
local r_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now)
local r_new = r_tat + r_interval
local ok = (r_new - now) <= period
local tpm = tonumber(ARGV[3])
local t_tat, t_new, t_interval = now, now, 0
if tpm > 0 then
  t_interval = period / tpm
  t_tat = math.max(tonumber(redis.call('GET', KEYS[3]) or now), now)
  t_new = t_tat + tonumber(ARGV[4]) * t_interval
  if (t_new - now) > period then ok = false end
end
"""
    + budget_lua.CHECK
    + """
local r_retry, t_retry = 0, 0
if over > 0 then
  -- Over budget: refused, but the request still counts against the request rate limit, as
  -- every refusal of a known key does (inference.gateway).
  redis.call('SET', KEYS[2], tostring(r_new), 'PX', math.ceil(r_new - now) + 1000)
  r_tat = r_new
end
if ok then"""
    + budget_lua.CHARGE
    + """
  redis.call('SET', KEYS[2], tostring(r_new), 'PX', math.ceil(r_new - now) + 1000)
  if tpm > 0 then
    redis.call('SET', KEYS[3], tostring(t_new), 'PX', math.ceil(t_new - now) + 1000)
  end
  r_tat, t_tat = r_new, t_new
  if ARGV[6] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[6]) end
else
  r_retry = math.max(r_new - period - now, 0)
  if tpm > 0 then t_retry = math.max(t_new - period - now, 0) end
end
local r_remaining = math.floor((period - (r_tat - now)) / r_interval)
local t_remaining = 0
if tpm > 0 then t_remaining = math.floor((period - (t_tat - now)) / t_interval) end
local status = ok and 'ok' or (over > 0 and 'over_budget' or 'limited')
return {status, epoch, r_remaining, math.ceil(r_tat - now),
        math.ceil(math.max(r_retry, t_retry)), t_remaining, math.ceil(t_tat - now), now,
        math.ceil(r_retry), math.ceil(t_retry), over, string.format('%.0f', over_spent)}
"""
)


@dataclass(frozen=True, slots=True)
class Admission:
    status: str  # ok, limited, over_budget, budget_cold, stale, no_workers
    epoch: str
    rpm_limit: int = 0
    rpm_remaining: int = 0
    rpm_reset_ms: int = 0
    retry_after_ms: int = 0
    tpm_limit: int | None = None
    tpm_remaining: int = 0
    tpm_reset_ms: int = 0
    now_ms: int = 0
    # When limited: how long until each limit alone would let this request through (0: that
    # limit was not what refused it).
    rpm_retry_ms: int = 0
    tpm_retry_ms: int = 0
    # over_budget: which budget refused (1-based, as passed) and what it had spent; budget_cold:
    # the budgets whose spend Redis does not know (billing.budgets.budgets_warm).
    budget_index: int = 0
    budget_spent: int = 0
    budgets_cold: tuple[int, ...] = ()

    @property
    def admitted(self) -> bool:
        return self.status == "ok"

    def later(self, elapsed_ms: int) -> Admission:
        """The same refusal, `elapsed_ms` later, assuming no admission happened meanwhile (how
        a process answers a key it knows to be limited without asking Redis again)."""
        return replace(
            self,
            now_ms=self.now_ms + elapsed_ms,
            rpm_reset_ms=max(self.rpm_reset_ms - elapsed_ms, 0),
            tpm_reset_ms=max(self.tpm_reset_ms - elapsed_ms, 0),
            retry_after_ms=max(self.retry_after_ms - elapsed_ms, 0),
            rpm_retry_ms=max(self.rpm_retry_ms - elapsed_ms, 0),
            tpm_retry_ms=max(self.tpm_retry_ms - elapsed_ms, 0),
        )

    def headers(self) -> dict[str, str]:
        if self.status not in ("ok", "limited", "over_budget"):
            return {}
        reset_at = math.ceil((self.now_ms + self.rpm_reset_ms) / 1000)
        headers = {
            "X-RateLimit-Limit": str(self.rpm_limit),
            "X-RateLimit-Remaining": str(self.rpm_remaining),
            "X-RateLimit-Reset": str(reset_at),
            "x-ratelimit-limit-requests": str(self.rpm_limit),
            "x-ratelimit-remaining-requests": str(self.rpm_remaining),
            "x-ratelimit-reset-requests": format_duration(self.rpm_reset_ms),
        }
        if self.tpm_limit:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm_limit)
            headers["x-ratelimit-remaining-tokens"] = str(self.tpm_remaining)
            headers["x-ratelimit-reset-tokens"] = format_duration(self.tpm_reset_ms)
        if self.status == "limited":
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_ms / 1000)))
        return headers


async def admit(
    client: aioredis.Redis,
    *,
    key_id: int,
    expected_epoch: str | None,
    rpm_limit: int,
    tpm_limit: int | None = None,
    token_cost: int = 0,
    worker_ttl_ms: int = 0,
    workers_key: str = "",
    queue: str = "",
    message: bytes = b"",
    budget_keys: Sequence[str] = (),
    budget_args: Sequence[int] = (),
) -> Admission:
    result = await _ADMIT.acall(
        client,
        [
            *(EPOCH_KEY, rpm_key(key_id), tpm_key(key_id), workers_key or "-", queue or "-"),
            *budget_keys,
        ],
        [
            *(expected_epoch or "", rpm_limit, tpm_limit or 0, token_cost, worker_ttl_ms, message),
            *budget_args,
        ],
    )
    status = result[0].decode()
    epoch = result[1].decode()
    if status in ("stale", "no_workers"):
        return Admission(status=status, epoch=epoch)
    if status == "budget_cold":
        return Admission(status=status, epoch=epoch, budgets_cold=tuple(map(int, result[2:])))
    return Admission(
        status=status,
        epoch=epoch,
        rpm_limit=rpm_limit,
        rpm_remaining=int(result[2]),
        rpm_reset_ms=int(result[3]),
        retry_after_ms=int(result[4]),
        tpm_limit=tpm_limit,
        tpm_remaining=int(result[5]),
        tpm_reset_ms=int(result[6]),
        now_ms=int(result[7]),
        rpm_retry_ms=int(result[8]),
        tpm_retry_ms=int(result[9]),
        budget_index=int(result[10]),
        budget_spent=int(result[11]),
    )


# Refusals of requests that name no usable key, per client address: a GCRA of `ARGV[1]` a
# minute. KEYS: the address's TAT. Returns {1 if still allowed, ms until the next is allowed}.
_ADDRESS = LuaScript(
    NOW_MS
    + """
local interval = 60000 / tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local new = tat + interval
if new - now > 60000 then return {0, math.ceil(new - 60000 - now)} end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return {1, 0}
"""
)


def address_key(address: str) -> str:
    return f"nebula:rl:addr:{address}"


async def address_charge(client: aioredis.Redis, *, address: str, per_minute: int) -> int:
    """Count one refused request without a usable key from `address`. Returns 0 while the
    address is within `per_minute`, else the milliseconds until it is again."""
    allowed, retry_ms = await _ADDRESS.acall(client, [address_key(address)], [per_minute])
    return 0 if int(allowed) else max(int(retry_ms), 1)
