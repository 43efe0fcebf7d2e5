"""Per-key rate limits: exact under concurrency, one Redis round trip per request.

Each limit is a GCRA (generic cell rate algorithm, the arithmetic form of a token bucket) run in
one Lua script on Redis' own clock: a key with `rpm` requests per minute may burst `rpm` requests
and then gets one more every 60/rpm seconds. The optional token limit works the same with a cost
per request (prompt tokens + the most the reply may use; the unused part is refunded when the
job ends). Both limits are checked and charged together, or neither is.

The limits run inside the gateway's admission script (`inference.admission`), which also
confirms the caller's cache epoch and enqueues the job, so admitting a completion is a single
round trip to Redis. This module holds the limits' keys, their header format, and the
settlement of a token reservation once a job has ended.

Headers (documented in README):
- `X-RateLimit-Limit`: requests per minute.
- `X-RateLimit-Remaining`: requests that could be made right now.
- `X-RateLimit-Reset`: Unix time (seconds, rounded up) when the allowance is full again.
- `x-ratelimit-{limit,remaining,reset}-requests` (and `-tokens` where a token limit applies):
  OpenAI's names; reset is a duration until the allowance is full again, e.g. `6s` or `1m0s`.
- `Retry-After` on 429: whole seconds until the next request will be allowed.
"""

from __future__ import annotations

import redis

from infra.lua import NOW_MS, LuaScript

PERIOD_MS = 60_000


def rpm_key(key_id: int) -> str:
    return f"nebula:rl:{key_id}:r"


def tpm_key(key_id: int) -> str:
    return f"nebula:rl:{key_id}:t"


# Settle a token reservation: ARGV[1] tokens to give back (negative: to charge extra), tpm.
_SETTLE = LuaScript(
    NOW_MS
    + """
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local new = math.max(tat - tonumber(ARGV[1]) * (60000 / tonumber(ARGV[2])), now)
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
end
return 1
"""
)


def format_duration(ms: int) -> str:
    """OpenAI's reset format: `120ms`, `6s`, `1.5s`, `1m0s`."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3f}".rstrip("0").rstrip(".") + "s"


def tpm_settle(
    client: redis.Redis, *, key_id: int, tpm_limit: int, reserved: int, used: int
) -> None:
    """Replace a request's token reservation by what it used: refund the rest, or charge more."""
    if reserved != used:
        _SETTLE(client, [tpm_key(key_id)], [reserved - used, tpm_limit])
