"""A NUL character in a URL is a 400, on every chain: PostgreSQL refuses NUL in text."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    ["/apikeys?owner=a%00b", "/requests?model=%00", "/models/x%00y", "/v1/models/m%00"],
)
def test_a_nul_in_the_url_is_a_400_in_openai_format(client, operator, url):
    client.force_login(operator)
    response = client.get(url)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("invalid_value", "invalid_request_error")


def test_a_url_without_nul_is_served(client, operator):
    client.force_login(operator)
    assert client.get("/apikeys?owner=someone").status_code == 200
