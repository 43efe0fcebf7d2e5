"""The `/v1/completions` request validator: the prompt forms it reads, and under hypothesis,
whatever the body, a request or one OpenAI-style 400 naming the problem (never a 500)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.text_schemas import ENDOFTEXT, parse_completion_request
from infra.errors import InvalidRequest

CODES = {
    "invalid_json",
    "missing_required_parameter",
    "invalid_value",
    "invalid_type",
    "unknown_parameter",
    "unsupported_parameter",
}


def parse(**body: Any):
    return parse_completion_request(json.dumps({"model": "m", **body}).encode())


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (None, [ENDOFTEXT]),
    ],
)
def test_every_prompt_form_reads_as_a_list_of_prompts(prompt, prompts):
    assert parse(prompt=prompt).prompts == prompts


def test_max_tokens_is_sixteen_unless_given():
    assert parse(prompt="x").token_limit == 16
    assert parse(prompt="x", max_tokens=0).token_limit == 0


def test_an_unknown_field_is_named():
    with pytest.raises(InvalidRequest) as caught:
        parse(prompt="x", frobnicate=1)
    assert (caught.value.param, caught.value.code) == ("frobnicate", "unknown_parameter")


def test_no_op_values_of_unsupported_parameters_are_accepted():
    request = parse(
        prompt="x", suffix="", frequency_penalty=0, presence_penalty=0.0, logit_bias={}, best_of=1
    )
    assert request.prompts == ["x"]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
fields = {
    name: json_values
    for name in (
        "max_tokens",
        "n",
        "best_of",
        "stop",
        "stream",
        "stream_options",
        "echo",
        "suffix",
        "logprobs",
        "temperature",
        "top_p",
        "seed",
        "user",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "unknown",
    )
}
bodies = st.fixed_dictionaries(
    {
        "model": st.text(max_size=8) | json_values,
        "prompt": json_values | st.lists(st.integers(0, 9), max_size=3),
    },
    optional=fields,
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(bodies, json_values))
def test_any_body_is_a_request_or_a_400(body):
    refusal: InvalidRequest | None = None
    try:
        request = parse_completion_request(json.dumps(body).encode())
    except InvalidRequest as error:
        refusal = error
    if refusal is None:
        orjson.dumps(request.model_dump())  # it travels as JSON
        assert request.prompts and request.token_limit >= 0
        return
    assert refusal.status == 400 and refusal.code in CODES, refusal.body()
