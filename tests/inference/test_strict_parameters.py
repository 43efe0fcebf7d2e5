"""Strict parameters, as OpenAI's API has them: an unknown field is a 400 naming it, a value of
the wrong type is never coerced, and a parameter of OpenAI's API that Nebula does not implement
is a 400 saying so (unless its value asks for nothing), never silently dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference.schemas import UNSUPPORTED, ChatCompletionRequest, parse_chat_request
from inference.services import _check_size
from infra.errors import InvalidRequest
from tests.support.openai_schema import spec_request_fields

BASE = {"model": "nebula-7b", "messages": [{"role": "user", "content": "Hi"}]}


def refusal(**fields: Any) -> dict[str, Any]:
    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(json.dumps({**BASE, **fields}).encode())
    assert refused.value.status == 400
    error = refused.value.body()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_an_unknown_field_is_refused_by_name():
    error = refusal(frobnicate=True)
    assert error["param"] == "frobnicate" and error["code"] == "unknown_parameter"
    assert "frobnicate" in error["message"]


def test_an_unknown_field_inside_a_message_is_refused_by_its_path():
    error = refusal(messages=[{"role": "user", "content": "Hi", "mood": "happy"}])
    assert error["param"] == "messages[0].mood" and error["code"] == "unknown_parameter"


def test_an_unknown_field_in_stream_options_is_refused():
    error = refusal(stream=True, stream_options={"include_usage": True, "extra": 1})
    assert error["param"] == "stream_options.extra"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", True),
        ("max_tokens", 1.0),
        ("max_tokens", "10"),
        ("stream", "yes"),
        ("stream", 1),
        ("temperature", "1"),
        ("n", 2.0),
        ("seed", "7"),
        ("stop", 5),
        ("user", 12),
        ("ignore_eos", "true"),
    ],
)
def test_a_value_of_the_wrong_type_is_not_coerced(field, value):
    error = refusal(**{field: value})
    assert error["param"] == field and error["code"] == "invalid_type", error


def test_integers_are_numbers():
    request = parse_chat_request(json.dumps({**BASE, "temperature": 1, "top_p": 0}).encode())
    assert request.temperature == 1.0 and request.top_p == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "Hello"}),
        ("store", True),
        ("metadata", {"team": "a"}),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("logit_bias", {"1234": 5}),
        ("web_search_options", {}),
        ("reasoning_effort", "high"),
        ("verbosity", "low"),
        ("service_tier", "flex"),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("prompt_cache_key", "k"),
    ],
)
def test_a_parameter_nebula_does_not_implement_is_refused_saying_so(field, value):
    error = refusal(**{field: value})
    assert error["param"] == field and error["code"] == "unsupported_parameter", error
    assert f"Unsupported parameter: '{field}'" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", None),
        ("modalities", ["text"]),
        ("store", False),
        ("frequency_penalty", 0),
        ("presence_penalty", 0.0),
        ("logit_bias", {}),
        ("service_tier", "auto"),
        ("metadata", None),
    ],
)
def test_a_value_that_asks_for_nothing_is_accepted(field, value):
    request = parse_chat_request(json.dumps({**BASE, field: value}).encode())
    assert request.model == "nebula-7b"


def test_zero_is_not_false():
    # `store: 0` is not the boolean its default is: refused like any other value.
    assert refusal(store=0)["code"] == "unsupported_parameter"


def test_every_field_of_openais_request_is_implemented_or_refused():
    """Going through CreateChatCompletionRequest: each field is ours, or refused by name."""
    for name in spec_request_fields():
        assert name in ChatCompletionRequest.model_fields or name in UNSUPPORTED, name


def test_vllm_extras_are_accepted_by_name_while_the_setting_is_on(settings):
    settings.NEBULA_ACCEPT_VLLM_EXTRAS = True
    request = parse_chat_request(json.dumps({**BASE, "ignore_eos": True, "min_tokens": 5}).encode())
    assert request.ignore_eos is True and request.min_tokens == 5


def test_vllm_extras_are_unknown_parameters_with_the_setting_off(settings):
    settings.NEBULA_ACCEPT_VLLM_EXTRAS = False
    for field, value in (("ignore_eos", True), ("min_tokens", 3)):
        error = refusal(**{field: value})
        assert error["param"] == field and error["code"] == "unknown_parameter"


def test_image_parts_are_refused_by_the_text_only_models():
    request = parse_chat_request(
        json.dumps(
            {
                **BASE,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ],
            }
        ).encode()
    )
    with pytest.raises(InvalidRequest) as refused:
        _check_size(request)
    assert refused.value.code == "unsupported_content"
    assert "image_url" in refused.value.message and "text only" in refused.value.message


def test_json_mode_needs_the_conversation_to_ask_for_json():
    error = refusal(response_format={"type": "json_object"})
    assert error["param"] == "messages" and "json" in error["message"]
    asked = {
        **BASE,
        "messages": [{"role": "system", "content": "Reply in JSON."}, *BASE["messages"]],
    }
    request = parse_chat_request(
        json.dumps({**asked, "response_format": {"type": "json_object"}}).encode()
    )
    assert request.output_format == "json_object"


def test_a_response_format_nobody_knows_is_refused():
    error = refusal(response_format={"type": "xml"})
    assert error["param"] == "response_format.type" and error["code"] == "invalid_value"
    error = refusal(response_format={"type": "json_schema", "json_schema": {"name": "x", "foo": 1}})
    assert error["param"] == "response_format.json_schema.foo"
    assert error["code"] == "unknown_parameter"


def test_top_logprobs_needs_logprobs():
    error = refusal(top_logprobs=2)
    assert error["param"] == "top_logprobs" and "logprobs" in error["message"]
    assert refusal(logprobs=True, top_logprobs=21)["param"] == "top_logprobs"
    assert parse_chat_request(json.dumps({**BASE, "logprobs": True, "top_logprobs": 20}).encode())
