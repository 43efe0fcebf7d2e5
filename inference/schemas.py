"""The `/v1/chat/completions` request, validated by pydantic against OpenAI's published schema.

Strict, as OpenAI is: a field the API does not know is a 400 naming it (`unknown_parameter`),
a field of OpenAI's API that Nebula does not implement is a 400 saying so
(`unsupported_parameter`, see `UNSUPPORTED`) unless its value asks for nothing, and values are
never coerced (`"stream": "yes"`, `"max_tokens": true` are 400s). vLLM's extra sampling
parameters (`ignore_eos`, `min_tokens`) are accepted by name while `NEBULA_ACCEPT_VLLM_EXTRAS`
is on. Validation errors become OpenAI-style 400 errors whose `param` is the JSON path of the
offending value (e.g. `messages[0].content`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from inference.engine.structured import SchemaRefused, check_schema
from infra.errors import InvalidRequest

# Unknown fields are refused, and JSON values are taken as they are: `"1"` is not a number.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
# The configuration's former name, for models written against it on other branches: strict too.
_IGNORE_EXTRA = _STRICT


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = _STRICT
    type: Literal["image_url"]
    image_url: dict[str, Any]


class AudioPart(BaseModel):
    model_config = _STRICT
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(BaseModel):
    model_config = _STRICT
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(BaseModel):
    model_config = _STRICT
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]
Content = str | list[ContentPart]


class _Message(BaseModel):
    model_config = _STRICT
    name: str | None = None

    def text(self) -> str:
        content = getattr(self, "content", None)
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(
            part.text if isinstance(part, TextPart) else getattr(part, "refusal", "")
            for part in content
        )


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


# --- Tools (functions the model may call) ---------------------------------------------------------

FunctionName = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = _IGNORE_EXTRA
    name: FunctionName
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema (checked in inference.toolcalls)
    strict: StrictBool | None = None


class FunctionTool(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _IGNORE_EXTRA
    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


class FunctionCall(BaseModel):
    model_config = _IGNORE_EXTRA
    name: StrictStr
    arguments: StrictStr


class AssistantToolCall(BaseModel):
    model_config = _IGNORE_EXTRA
    id: Annotated[StrictStr, Field(min_length=1)]
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None
    refusal: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    function_call: FunctionCall | None = None
    # What a reply's message carries besides (the openai client sends a reply's message back
    # as it came: `messages.append(completion.choices[0].message)`): taken, and not read.
    # Nebula's replies have no audio, so only a null one can be one of them.
    annotations: list[dict[str, Any]] | None = None
    audio: None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: StrictStr


class FunctionMessage(_Message):
    role: Literal["function"]
    content: str | None


Message = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


def _never(value: Any) -> bool:
    return False


def _is(*neutral: Any) -> Callable[[Any], bool]:
    """A value that asks for nothing beyond what Nebula does anyway (OpenAI's default)."""
    return lambda value: any(type(value) is type(n) and value == n for n in neutral)


def _text_only(value: Any) -> bool:
    return isinstance(value, list) and all(item == "text" for item in value)


_NO_CACHE = "Prompt caching is not supported by Nebula"
_NO_TOOLS = "Tool calling is not supported by Nebula"
# Every field of OpenAI's CreateChatCompletionRequest that Nebula does not implement, with the
# values that ask for nothing (which are accepted: null always is). Anything else is a 400: a
# parameter accepted and ignored would mislead every framework built on the API. A name that
# is also a field of ChatCompletionRequest is implemented, and this entry no longer applies.
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (_never, "Audio output is not supported: Nebula's models produce text only"),
    "modalities": (_text_only, 'Nebula\'s models produce text only: modalities: ["text"]'),
    "prediction": (_never, "Predicted Outputs are not supported by Nebula"),
    "store": (_is(False), "Stored completions are not supported by Nebula"),
    "metadata": (_is({}), "Metadata is kept with stored completions, which Nebula does not keep"),
    "frequency_penalty": (_is(0, 0.0), "frequency_penalty is not supported by Nebula"),
    "presence_penalty": (_is(0, 0.0), "presence_penalty is not supported by Nebula"),
    "logit_bias": (_is({}), "logit_bias is not supported: Nebula's tokenizer has no token ids"),
    "web_search_options": (_never, "Web search is not supported by Nebula"),
    "reasoning_effort": (_never, "Nebula's models are not reasoning models"),
    "verbosity": (_never, "verbosity is not supported by Nebula"),
    "service_tier": (_is("auto", "default"), "Nebula serves the default service tier only"),
    "moderation": (_never, "Moderation is not supported by Nebula"),
    "prompt_cache_key": (_never, _NO_CACHE),
    "prompt_cache_retention": (_never, _NO_CACHE),
    "prompt_cache_options": (_never, _NO_CACHE),
    "tools": (_is([]), _NO_TOOLS),
    "tool_choice": (_is("none"), _NO_TOOLS),
    "parallel_tool_calls": (_never, _NO_TOOLS),
    "functions": (_never, _NO_TOOLS),
    "function_call": (_is("none"), _NO_TOOLS),
}
# vLLM's extra sampling parameters, not OpenAI's: unknown parameters unless the setting
# NEBULA_ACCEPT_VLLM_EXTRAS (validation context `accept_vllm_extras`) accepts them.
VLLM_EXTRAS = frozenset({"ignore_eos", "min_tokens"})


class ResponseFormatText(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class ResponseFormatJsonObject(BaseModel):
    model_config = _STRICT
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    # `schema` would shadow pydantic's own attribute: the field takes the name as an alias.
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_is_supported(self) -> JsonSchemaFormat:
        """OpenAI's rules for the schema: valid JSON Schema, and its subset in strict mode."""
        try:
            check_schema(self.schema_ or {"type": "object"}, strict=bool(self.strict))
        except SchemaRefused as refused:
            raise PydanticCustomError(
                "invalid_json_schema",
                "Invalid schema for response_format '{name}': {reason}.",
                {
                    "name": self.name,
                    "reason": str(refused),
                    "param": "response_format.json_schema.schema",
                    "keyword": refused.keyword,
                },
            ) from None
        return self


class ResponseFormatJsonSchema(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class ChatCompletionRequest(BaseModel):
    model_config = _STRICT

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    # OpenAI's bounds (int64); the job travels as JSON, which must represent it exactly.
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=512)] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # An identifier, like `user`: nothing to do with it but pass it on to an engine.
    safety_identifier: Annotated[str, Field(max_length=64)] | None = None
    # vLLM's extra sampling parameters: keep generating past the model's natural end.
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    # Tool calling (inference.toolcalls checks how they fit together and with the messages).
    tools: Annotated[list[FunctionTool], Field(min_length=1, max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: Annotated[list[FunctionDefinition], Field(min_length=1, max_length=128)] | None = (
        None
    )
    function_call: FunctionCallChoice | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_and_supported(cls, data: Any, info: ValidationInfo) -> Any:
        """Refuse what Nebula does not know or does not do, before looking at any value."""
        if not isinstance(data, dict):
            return data
        extras = (info.context or {}).get("accept_vllm_extras", True)
        accepted = dict(data)
        for name, value in data.items():
            if name in cls.model_fields and (extras or name not in VLLM_EXTRAS):
                continue
            if name in UNSUPPORTED and name not in cls.model_fields:
                neutral, reason = UNSUPPORTED[name]
                if value is None or neutral(value):
                    del accepted[name]  # asks for nothing: as if absent
                    continue
                raise PydanticCustomError(
                    "unsupported_parameter",
                    "Unsupported parameter: '{param}'. {reason}.",
                    {"param": name, "reason": reason},
                )
            raise PydanticCustomError(
                "unknown_parameter",
                "Unrecognized request argument supplied: {param}",
                {"param": name},
            )
        return accepted

    @model_validator(mode="after")
    def _parameters_agree(self) -> ChatCompletionRequest:
        """Parameters that only make sense with others (OpenAI's rules)."""
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.output_format == "json_object" and not any(
            "json" in message.text().lower() for message in self.messages
        ):
            # OpenAI's rule, kept so that a request that works here works there too.
            raise PydanticCustomError(
                "invalid_value",
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                {"param": "messages"},
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError(
                "invalid_value",
                "Invalid value for 'top_logprobs': 'logprobs' must be true to use top_logprobs.",
                {"param": "top_logprobs"},
            )
        return self

    @property
    def output_format(self) -> str:
        """What the engine must produce: text, json_object or json_schema."""
        return self.response_format.type if self.response_format else "text"

    @property
    def token_limit(self) -> int | None:
        """`max_completion_tokens` supersedes the deprecated `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return stop_sequences(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
_DISCRIMINATED = {"messages", "content"}  # the lists whose items are tagged unions
_FORMAT_TYPES = {"text", "json_object", "json_schema"}


def _param(location: tuple[int | str, ...]) -> str | None:
    """`('messages', 0, 'user', 'content')` → `messages[0].content`.

    pydantic puts the name of the union branch it tried into the location: a discriminator tag
    right after a list index (`'user'`, `'text'`) or a type name (`'str'`, `'list[str]'`).
    """
    path = ""
    previous: int | str | None = None
    field: str | None = None  # the last field name in the path
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and field in _DISCRIMINATED and part in _ROLES | _PART_TYPES:
            pass  # a discriminator tag (`function` elsewhere is a field: tools[0].function)
        elif previous == "response_format" and part in _FORMAT_TYPES:
            pass  # response_format's discriminator tag
        elif "[" in part or part in {"str", "int", "float", "bool"} or part[:1].isupper():
            pass  # a union branch's type or model name (fields are lower case)
        else:
            path += f".{part}" if path else part
            field = part
        previous = part
    return path or None


def _describe(error: dict[str, Any]) -> tuple[str, str | None, str]:
    kind = error["type"]
    param = _param(tuple(error.get("loc", ())))
    if kind in {"unknown_parameter", "unsupported_parameter", "invalid_json_schema"} or (
        "param" in error.get("ctx", {})
    ):
        return str(error["msg"]), str(error["ctx"]["param"]), kind
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param, "unknown_parameter"
    if kind == "json_invalid":
        return (
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
            "invalid_json",
        )
    if kind == "model_type" and param is None:
        return "The request body must be a JSON object.", None, "invalid_json"
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        expected = error.get("ctx", {}).get("expected_tags", "")
        tag = "role" if "role" in str(error.get("ctx", {}).get("discriminator", "")) else "type"
        where = f"{param}.{tag}" if param else tag
        return f"Invalid value for '{where}': expected one of {expected}.", where, "invalid_value"
    if kind == "value_error" and param is None:
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        culprit = "stream_options" if "stream_options" in message else None
        return f"Invalid request: {message}.", culprit, "invalid_value"
    message = str(error.get("msg", "invalid value"))
    given = error.get("input")
    shown = repr(given) if isinstance(given, int | float | bool) else None
    suffix = f" (got {shown})" if shown is not None else ""
    code = (
        "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
    )
    return f"Invalid '{param}': {message[0].lower() + message[1:]}{suffix}.", param, code


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of the non-empty sequences (OpenAI takes a string or a list)."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(sequence for sequence in stops if sequence)


def validation_refusal(exc: ValidationError) -> InvalidRequest:
    """The OpenAI-style 400 for a request body pydantic refused (any endpoint's): its most
    telling problem, with `param` the JSON path of the offending value."""
    errors = exc.errors(include_url=False)

    # A bad value in a union field is reported once per branch. Prefer an error that says what
    # is wrong with the value (too long, out of range) over "not of this type", and a deeper
    # location over a shallower one.
    def rank(error: Any) -> tuple[int, int, int]:
        decisive = error["type"] in {"json_invalid", "missing", "extra_forbidden"}
        about_value = not error["type"].endswith(("_type", "_parsing"))
        return (decisive, about_value, len(error.get("loc", ())))

    first = max(reversed(errors), key=rank)
    message, param, code = _describe(dict(first))
    return InvalidRequest(message, param=param, code=code)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a raw request body, or raise an OpenAI-style 400 for its first problem."""
    try:
        return ChatCompletionRequest.model_validate_json(
            body, context={"accept_vllm_extras": settings.NEBULA_ACCEPT_VLLM_EXTRAS}
        )
    except ValidationError as exc:
        raise validation_refusal(exc) from None
