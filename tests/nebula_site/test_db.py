import asyncio
import threading

import pytest

from infra.db import SingleFlight
from keys.auth import key_info_for_secret


def test_concurrent_callers_share_one_computation():
    calls = []

    async def main():
        flight = SingleFlight()

        async def slow():
            calls.append(1)
            await asyncio.sleep(0.05)
            return "value"

        return await asyncio.gather(*(flight.run("k", slow) for _ in range(50)))

    assert asyncio.run(main()) == ["value"] * 50
    assert calls == [1]


def test_one_caller_going_away_does_not_cancel_the_others():
    async def main():
        flight = SingleFlight()

        async def slow():
            await asyncio.sleep(0.05)
            return 42

        first = asyncio.ensure_future(flight.run("k", slow))
        second = asyncio.ensure_future(flight.run("k", slow))
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert asyncio.run(main()) == 42


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_cache_misses_for_one_key_reads_the_database_once(alice, make_key, monkeypatch):
    from keys import auth

    _, secret = make_key(alice)
    reads = []
    load = auth._load_by_digest

    def counting_load(digest):
        reads.append(threading.current_thread().name)
        return load(digest)

    monkeypatch.setattr(auth, "_load_by_digest", counting_load)

    async def burst():
        return await asyncio.gather(*(key_info_for_secret(secret) for _ in range(100)))

    results = asyncio.run(burst())
    assert {info.prefix for info, _ in results} == {secret[:11]}
    assert len(reads) == 1
    assert reads[0].startswith("nebula-db")  # on the bounded pool, not a thread per request
