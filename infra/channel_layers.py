"""The Channels layer configuration, shared by the settings and the tests that need a real one.

Kept out of settings.py so a test can build the same layer against another Redis (a proxy it
cuts, a short timeout) instead of a copy that could drift from what production runs.
"""

from __future__ import annotations

from typing import Any

# How long channels-redis blocks in BZPOPMIN waiting for a consumer's next message
# (`RedisChannelLayer.brpop_timeout`; tests/dashboard/test_consumers.py checks it still is).
CHANNELS_REDIS_BRPOP_TIMEOUT = 5.0


def redis_channel_layer(
    redis_url: str, *, redis_timeout: float, prefix: str = "nebula-asgi"
) -> dict[str, Any]:
    """channels-redis on `redis_url`, counting Redis as lost after `redis_timeout` seconds of
    silence beyond what a consumer's blocking wait for its next message may take."""
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": redis_url,
                    # Every idle consumer sits in a BZPOPMIN of up to 5 s. A read timeout below
                    # that fails the wait of a quiet socket (a playground with nothing else
                    # open in its web process) and closes it mid-reply; so the read timeout is
                    # the wait plus the usual allowance. A dead Redis still shows at once (the
                    # connection drops) and a hung one within that sum.
                    "socket_timeout": CHANNELS_REDIS_BRPOP_TIMEOUT + redis_timeout,
                    "socket_connect_timeout": min(1.0, redis_timeout),
                }
            ],
            "prefix": prefix,
            # Dashboard events are small and bursty (a deploy emits several state changes); the
            # default capacity of 100 silently drops group messages past it.
            "capacity": 1000,
            "expiry": 30,
        },
    }
