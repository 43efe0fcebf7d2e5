"""The budget fragment of the admission script (`inference.admission`), and its settlement.

At admission a request reserves its worst-case cost against every budget that applies to it,
in the same script and round trip as the rate limits and the enqueue, so concurrent requests
cannot spend past a budget: each sees the reservations of all admitted before it. The
reservation is written down in a hold (`nebula:budget:hold:{request id}`: the amount, the
token prices it was computed with, the spend keys it was charged to); whoever ends the job
settles the hold to the real cost (`SETTLE`) and deletes it, so a hold settles once however
many try.

Spend per budget and period is an integer of `billing.units.UNIT`s in one Redis key whose TTL
ends with the period. A missing key is not "nothing spent": the script refuses to guess and
answers `budget_cold`, and the web process rebuilds the key from the database
(`billing.budgets.budgets_warm`) and tries again.

The fragments use the admission script's KEYS and ARGV from `FIRST_KEY` and `FIRST_ARG` on:
KEYS: the hold, then one spend key per budget; ARGV: the reservation (units), the prompt and
completion token prices (units), the hold's TTL (s), then one amount (units) per budget.
"""

from __future__ import annotations

from infra.lua import LuaScript

FIRST_KEY = 6  # the hold; the budgets' spend keys follow
FIRST_ARG = 7  # reservation, prompt price, completion price, hold ttl; amounts follow

# After the rate limits are judged (`ok`): are the budgets known, and does the request fit all?
# Sets `over` (the 1-based budget that refused, 0: none) and `over_spent`.
CHECK = f"""
local over, over_spent = 0, 0
if ok and #KEYS > {FIRST_KEY} then
  local reserve = tonumber(ARGV[{FIRST_ARG}])
  local cold = {{}}
  for i = {FIRST_KEY + 1}, #KEYS do
    local spent = redis.call('GET', KEYS[i])
    if not spent then
      table.insert(cold, i - {FIRST_KEY})
    elseif over == 0 and reserve > 0
        and tonumber(spent) + reserve > tonumber(ARGV[i + {FIRST_ARG + 3 - FIRST_KEY}]) then
      over, over_spent = i - {FIRST_KEY}, tonumber(spent)
    end
  end
  if #cold > 0 then return {{'budget_cold', epoch, unpack(cold)}} end
  if over > 0 then ok = false end
end
"""

# Inside the admitted branch: reserve against every budget, and write the hold.
CHARGE = f"""
if #KEYS > {FIRST_KEY} then
  local spend_keys = {{}}
  for i = {FIRST_KEY + 1}, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[{FIRST_ARG}])
    table.insert(spend_keys, KEYS[i])
  end
  redis.call('HSET', KEYS[{FIRST_KEY}], 'r', ARGV[{FIRST_ARG}], 'pp', ARGV[{FIRST_ARG + 1}],
             'cp', ARGV[{FIRST_ARG + 2}], 'keys', table.concat(spend_keys, ' '))
  redis.call('EXPIRE', KEYS[{FIRST_KEY}], ARGV[{FIRST_ARG + 3}])
end
"""


def hold_key(request_id: str) -> str:
    return f"nebula:budget:hold:{request_id}"


# KEYS: the hold. ARGV: prompt tokens, completion tokens. Replaces the reservation by the real
# cost in every spend key it was charged to that still exists (one whose period ended is gone:
# the new period owes nothing for it). Returns the real cost in units, or -1 if there was no
# hold (settled already, or the request reserved nothing).
SETTLE = LuaScript(
    """
local hold = redis.call('HMGET', KEYS[1], 'r', 'pp', 'cp', 'keys')
if not hold[1] then return -1 end
redis.call('DEL', KEYS[1])
local real = tonumber(ARGV[1]) * tonumber(hold[2]) + tonumber(ARGV[2]) * tonumber(hold[3])
local delta = real - tonumber(hold[1])
if delta ~= 0 then
  for key in string.gmatch(hold[4], '%S+') do
    if redis.call('EXISTS', key) == 1 then
      redis.call('INCRBY', key, string.format('%.0f', delta))
    end
  end
end
return string.format('%.0f', real)
"""
)
