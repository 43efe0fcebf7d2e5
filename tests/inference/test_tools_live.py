"""Tool calling against the live stack (daphne + Celery workers), through the official `openai`
client, sync and async, streaming and not, and through LangChain's `ChatOpenAI.bind_tools`."""

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from tests.support.openai_schema import validate

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "format": "date"}},
    "required": ["timezone"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time", "parameters": TIME},
    },
]
SCHEMAS: dict[str, dict] = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris this week?"}]


@pytest.fixture
def setup(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=10_000)
    return secret


def _valid(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_tool_choice_returns_calls_whose_arguments_validate(live, setup, openai_client):
    raw = openai_client(setup).chat.completions.with_raw_response.create(
        model="nebula-7b", messages=ASK, tools=TOOLS, tool_choice="required", seed=1
    )
    validate("CreateChatCompletionResponse", json.loads(raw.text))
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        _valid(call.function.name, call.function.arguments)
    # The calls' tokens are billed as completion tokens.
    assert completion.usage.completion_tokens >= len(choice.message.tool_calls) * 5


def test_a_named_function_is_the_one_called_once(live, setup, openai_client):
    completion = openai_client(setup).chat.completions.create(
        model="nebula-7b",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = completion.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["get_time"]
    _valid("get_time", calls[0].function.arguments)


def test_tool_choice_none_answers_in_text(live, setup, openai_client):
    completion = openai_client(setup).chat.completions.create(
        model="nebula-7b", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=20
    )
    choice = completion.choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")


def test_parallel_tool_calls_false_makes_at_most_one_call(live, setup, openai_client):
    client = openai_client(setup)
    counts = set()
    for seed in range(12):
        completion = client.chat.completions.create(
            model="nebula-7b",
            messages=[{"role": "user", "content": "weather and time please"}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            seed=seed,
        )
        counts.add(len(completion.choices[0].message.tool_calls))
    assert counts == {1}


def test_streamed_calls_reassemble_into_the_non_streamed_ones(live, setup, openai_client):
    client = openai_client(setup)
    options = {"model": "nebula-7b", "messages": ASK, "tools": TOOLS, "seed": 5, "n": 2}
    whole = client.chat.completions.create(**options, tool_choice="required")
    expected = {
        (choice.index, position): (c.id, c.function.name, c.function.arguments)
        for choice in whole.choices
        for position, c in enumerate(choice.message.tool_calls)
    }
    with httpx.stream(
        "POST",
        live.url + "/v1/chat/completions",
        json={**options, "tool_choice": "required", "stream": True},
        headers={"Authorization": f"Bearer {setup}"},
        timeout=30,
    ) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    calls: dict[tuple[int, int], dict] = {}
    finish: dict[int, list] = {0: [], 1: []}
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        for choice in chunk["choices"]:
            finish[choice["index"]].append(choice["finish_reason"])
            for part in choice["delta"].get("tool_calls") or []:
                key = (choice["index"], part["index"])
                if key not in calls:
                    # A call's first delta: its id, type and name, with empty arguments.
                    assert part["id"] and part["type"] == "function"
                    assert part["function"]["name"] and part["function"]["arguments"] == ""
                    calls[key] = {"id": part["id"], **part["function"]}
                else:
                    assert "id" not in part
                    calls[key]["arguments"] += part["function"]["arguments"]
    assert all([f for f in reasons if f] == ["tool_calls"] for reasons in finish.values())
    assert {key: (c["id"], c["name"], c["arguments"]) for key, c in calls.items()} == expected
    for call in calls.values():
        _valid(call["name"], call["arguments"])


def test_the_async_client_gets_tool_calls_whole_and_streamed(live, setup):
    async def run():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=setup, max_retries=0)
        whole = await client.chat.completions.create(
            model="nebula-7b", messages=ASK, tools=TOOLS, tool_choice="required"
        )
        for call in whole.choices[0].message.tool_calls:
            _valid(call.function.name, call.function.arguments)
        stream = await client.chat.completions.create(
            model="nebula-7b", messages=ASK, tools=TOOLS, tool_choice="required", stream=True
        )
        calls: dict[int, dict] = {}
        reasons = []
        async for chunk in stream:
            choice = chunk.choices[0]
            reasons.append(choice.finish_reason)
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"name": "", "arguments": ""})
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
        await client.close()
        return calls, reasons

    calls, reasons = asyncio.run(run())
    assert calls and reasons[-1] == "tool_calls"
    for call in calls.values():
        _valid(call["name"], call["arguments"])


def test_an_agent_loop_answers_in_text_after_the_tools_result(live, setup, openai_client):
    client = openai_client(setup)
    first = client.chat.completions.create(
        model="nebula-7b", messages=ASK, tools=TOOLS, tool_choice="auto", seed=2
    )
    message = first.choices[0].message
    assert message.tool_calls  # the user's words point at get_weather
    answers = [
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'}
        for call in message.tool_calls
    ]
    second = client.chat.completions.create(
        model="nebula-7b",
        messages=[*ASK, message.model_dump(exclude_none=True), *answers],
        tools=TOOLS,
    )
    assert second.choices[0].message.content and second.choices[0].finish_reason == "stop"


def test_a_tool_message_answering_no_call_is_a_400(live, setup, openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(setup).chat.completions.create(
            model="nebula-7b",
            messages=[*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}],
            tools=TOOLS,
        )
    assert caught.value.body["param"] == "messages[1]"


def test_a_named_function_that_is_not_offered_is_a_400(live, setup, openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(setup).chat.completions.create(
            model="nebula-7b",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    assert caught.value.body["param"] == "tool_choice"


def test_legacy_functions_answer_with_function_call(live, setup, openai_client):
    options = {
        "model": "nebula-7b",
        "messages": ASK,
        "functions": [t["function"] for t in TOOLS],
        "function_call": {"name": "get_weather"},
        "seed": 4,
    }
    completion = openai_client(setup).chat.completions.create(**options)
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    _valid("get_weather", choice.message.function_call.arguments)
    with httpx.stream(
        "POST",
        live.url + "/v1/chat/completions",
        json={**options, "stream": True},
        headers={"Authorization": f"Bearer {setup}"},
        timeout=30,
    ) as response:
        chunks = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    parts = [c["choices"][0]["delta"].get("function_call") for c in chunks]
    name = "".join(p.get("name", "") for p in parts if p)
    arguments = "".join(p.get("arguments", "") for p in parts if p)
    assert name == "get_weather" and arguments == choice.message.function_call.arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


def test_langchain_bind_tools_returns_tool_calls_with_valid_args(live, setup):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, days: int) -> str:
        """The weather forecast in a city for a number of days."""
        return "sunny"

    model = ChatOpenAI(
        model="nebula-7b", base_url=live.url + "/v1", api_key=setup, max_retries=0
    ).bind_tools([get_weather], tool_choice="required")
    reply = model.invoke("What is the weather in Paris?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    args = reply.tool_calls[0]["args"]
    jsonschema.validate(args, get_weather.args_schema.model_json_schema())
    assert get_weather.invoke(args) == "sunny"
