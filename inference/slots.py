"""GPU slots: a model serves at most `replicas × max_concurrent_seqs` sequences at once, counted
across every worker on every machine in Redis.

A running sequence holds a lease in `nebula:slots:{model}` (a sorted set scored by lease expiry),
renewed by its worker's heartbeat, so a worker that dies frees its slots within NEBULA_WORKER_TTL.
A job generating `n` choices runs `n` sequences and holds `n` slots: its request id, then
`{request id}#2` … `#n` (`slot_members`). Jobs that find too few free slots wait in line
(`nebula:waiting:{model}`, scored by arrival) and are admitted first come, first served, none
overtaking a larger job ahead of it; a waiter that stops polling drops out of line.
"""

from __future__ import annotations

import redis
from django.conf import settings

from inference.heartbeats import WORKERS_KEY
from infra.lua import NOW_MS, LuaScript
from infra.redis_client import get_redis

CAPACITY_KEY = "nebula:capacity"


def slots_key(model: str) -> str:
    return f"nebula:slots:{model}"


def waiting_key(model: str) -> str:
    return f"nebula:waiting:{model}"


def waiter_leases_key(model: str) -> str:
    return f"nebula:waiting-leases:{model}"


def waiter_sizes_key(model: str) -> str:
    return f"nebula:waiting-sizes:{model}"


def slot_members(request_id: str, sequences: int) -> list[str]:
    """The slot members of a job running `sequences` sequences (the first is its request id)."""
    return [request_id, *(f"{request_id}#{k}" for k in range(2, sequences + 1))]


# The same, in Lua, for the scripts that take, free or renew a job's slots.
SLOT_MEMBERS_LUA = """
local function slot_members(rid, n)
  local members = {rid}
  for k = 2, n do members[#members + 1] = rid .. '#' .. k end
  return members
end
"""


def lease_ms() -> int:
    return int(settings.NEBULA_WORKER_TTL * 1000)


# What `slot_acquire` returns.
SLOT_TAKEN = 1  # the job now runs here (and the start message, if any, reached its listener)
SLOT_WAIT = 0  # no free slot yet: poll again
JOB_GONE = -1  # the job no longer wants a slot (abandoned or cancelled while waiting)
ALREADY_CLAIMED = -2  # with `claim`: another delivery of this job got there first
NO_LISTENER = -3  # the slot is taken, but nobody received the start message: the web process
# that asked is gone, so the job must end (it is `running`, and holds the slot until it does)
ORPHANED = -4  # with `claim`: the job is claimed, unfinished, by a run whose worker is dead (a
# redelivery after a crash): it must be settled, not dropped (`inference.jobs.SETTLE_ORPHAN`)

# KEYS: slots, waiting, waiter leases, job, capacity hash, workers (heartbeats), waiter sizes
# ARGV: request id, fallback capacity, lease ms, worker id, arrival ms, model name,
#       claim ('1' on the first try), job ttl seconds, reply channel, start message ('' = none),
#       worker ttl ms, sequences
# Claiming the job, taking the slot and telling the web process it started are one script, so
# a worker starts a job in one round trip to Redis instead of three (`make bench`).
_ACQUIRE = LuaScript(
    NOW_MS
    + SLOT_MEMBERS_LUA
    + """
local rid = ARGV[1]
local lease = tonumber(ARGV[3])
local size = tonumber(ARGV[12])
if ARGV[7] == '1' then
  if redis.call('EXISTS', KEYS[4]) == 1 then
    local state = redis.call('HGET', KEYS[4], 'state')
    local owner = redis.call('HGET', KEYS[4], 'worker') or ''
    local process = string.match(owner, '^(.*)/') or owner
    local seen = tonumber(redis.call('ZSCORE', KEYS[6], process) or '0')
    local unfinished = state == 'waiting' or state == 'running'
      or (state == 'cancelled' and redis.call('HGET', KEYS[4], 'ended') ~= '1')
    if unfinished and seen < now - tonumber(ARGV[11]) then return -4 end
    return -2
  end
  redis.call('HSET', KEYS[4], 'state', 'waiting', 'worker', ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
local function leave_line(member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
  redis.call('HDEL', KEYS[7], member)
end
if redis.call('HGET', KEYS[4], 'state') ~= 'waiting'
    or redis.call('HGET', KEYS[4], 'worker') ~= ARGV[4] then
  leave_line(rid)
  return -1
end
local capacity = tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[2], 'NX', ARGV[5], rid)
redis.call('HSET', KEYS[3], rid, now + lease)
redis.call('HSET', KEYS[7], rid, size)
local free = capacity - redis.call('ZCARD', KEYS[1])
if free <= 0 then return 0 end
for _ = 1, 100 do
  -- Walk the line from its head: each waiter needs its size in free slots, and nobody
  -- overtakes a waiter ahead of it. At most `free` waiters can fit.
  local head = redis.call('ZRANGE', KEYS[2], 0, free - 1)
  local clean = true
  local needed = 0
  for _, member in ipairs(head) do
    local until_ms = tonumber(redis.call('HGET', KEYS[3], member) or '0')
    if until_ms < now then
      leave_line(member)
      clean = false
      break
    end
    needed = needed + tonumber(redis.call('HGET', KEYS[7], member) or '1')
    if needed > free then return 0 end
    if member == rid then
      leave_line(rid)
      local entries = {}
      for _, slot in ipairs(slot_members(rid, size)) do
        entries[#entries + 1] = now + lease
        entries[#entries + 1] = slot
      end
      redis.call('ZADD', KEYS[1], unpack(entries))
      redis.call('HSET', KEYS[4], 'state', 'running')
      if ARGV[10] ~= '' and redis.call('PUBLISH', ARGV[9], ARGV[10]) == 0 then return -3 end
      return 1
    end
  end
  if clean then return 0 end
end
return 0
"""
)


def slot_acquire(
    client: redis.Redis,
    *,
    model: str,
    request_id: str,
    job_key: str,
    capacity: int,
    worker_id: str,
    arrival_ms: int,
    claim: bool = False,
    job_ttl: int = 0,
    reply_to: str = "",
    start_message: bytes = b"",
    sequences: int = 1,
) -> int:
    """Try to take a GPU slot for a job (see the return values above). With `claim`, first
    claim the job for this worker; with `start_message`, publish it to `reply_to` once the
    slot is taken."""
    return int(
        _ACQUIRE(
            client,
            [
                slots_key(model),
                waiting_key(model),
                waiter_leases_key(model),
                job_key,
                CAPACITY_KEY,
                WORKERS_KEY,
                waiter_sizes_key(model),
            ],
            [
                request_id,
                capacity,
                lease_ms(),
                worker_id,
                arrival_ms,
                model,
                "1" if claim else "0",
                job_ttl,
                reply_to,
                start_message,
                lease_ms(),
                sequences,
            ],
        )
    )


# KEYS: the slots of each held job. ARGV: lease ms, then each job's request id and sequences.
_RENEW = LuaScript(
    NOW_MS
    + SLOT_MEMBERS_LUA
    + """
for i, key in ipairs(KEYS) do
  for _, slot in ipairs(slot_members(ARGV[2 * i], tonumber(ARGV[2 * i + 1]))) do
    redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), slot)
  end
end
return #KEYS
"""
)


def slots_renew(client: redis.Redis, held: list[tuple[str, str, int]]) -> None:
    """Extend the leases of the slots of (model, request id, sequences) a live worker holds.

    On Redis' clock, like every other lease: a worker whose clock runs behind must not let its
    leases look expired (web processes take an expired lease for a dead job).
    """
    if not held:
        return
    _RENEW(
        client,
        [slots_key(model) for model, _, _ in held],
        [lease_ms(), *(part for _, request_id, n in held for part in (request_id, n))],
    )


_COUNT_LIVE = LuaScript(
    NOW_MS
    + """
return {redis.call('ZCOUNT', KEYS[1], now, '+inf'), redis.call('ZCARD', KEYS[2])}
"""
)


def slot_usage(model: str) -> tuple[int, int]:
    """(sequences running, sequences waiting) for `model`, fleet-wide."""
    running, waiting = _COUNT_LIVE(get_redis(), [slots_key(model), waiting_key(model)])
    return int(running), int(waiting)


def slots_in_use(model: str) -> int:
    return slot_usage(model)[0]


def capacity_publish(capacities: dict[str, int]) -> None:
    """Tell waiting jobs the current capacity of each model (after a deploy or a scale)."""
    client = get_redis()
    pipe = client.pipeline(transaction=True)
    pipe.delete(CAPACITY_KEY)
    if capacities:
        pipe.hset(CAPACITY_KEY, mapping=capacities)  # type: ignore[arg-type]
    pipe.execute()
