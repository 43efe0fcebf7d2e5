from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_budget_spend_from_earlier_tests() -> None:
    """Budget ids start again in each test's fresh tables: forget the spend of an earlier
    test's budget that had the same id, and this process's price tables."""
    from billing.prices import price_tables_forget
    from infra.redis_client import get_redis

    client = get_redis()
    for key in client.scan_iter(match="nebula:budget:*", count=1000):
        client.delete(key)
    price_tables_forget()


@pytest.fixture
def carol(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("carol", password="carol-pass-123")
