"""A framework that sits on the openai client: LangChain's ChatOpenAI, whose structured output
and logprobs must survive Nebula's strict parameters."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest
from langchain_openai import ChatOpenAI


class Cluster(pydantic.BaseModel):
    name: str
    gpus: int
    vendor: Literal["nvidia", "amd"]
    notes: list[str]


@pytest.fixture
def chat(live, alice, make_key, ready_model):
    ready_model("nebula-7b")
    _, secret = make_key(alice, rpm_limit=10_000)

    def make(**options):
        return ChatOpenAI(
            model="nebula-7b", base_url=live.url + "/v1", api_key=secret, max_retries=0, **options
        )

    return make


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_with_structured_output_returns_the_model(chat, method):
    structured = chat(seed=3).with_structured_output(Cluster, method=method, include_raw=True)
    result = structured.invoke("Describe a GPU cluster as JSON with name, gpus, vendor, notes.")
    if method == "json_schema":
        assert isinstance(result["parsed"], Cluster), result
    else:
        # JSON mode promises JSON, not the schema: LangChain parses what it can.
        assert result["raw"].content.startswith("{")


def test_streaming_structured_output_and_logprobs(chat):
    structured = chat(seed=5).with_structured_output(Cluster, method="json_schema")
    parts = list(structured.stream("A GPU cluster, please, as JSON."))
    assert parts and isinstance(parts[-1], Cluster)
    message = chat(seed=5, logprobs=True, top_logprobs=2).invoke("Hello there")
    entries = message.response_metadata["logprobs"]["content"]
    assert "".join(entry["token"] for entry in entries) == message.content
