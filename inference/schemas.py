"""The `/v1/chat/completions` request, validated by pydantic against OpenAI's published schema.

Unknown fields are ignored, as OpenAI does. Validation errors become OpenAI-style 400 errors
whose `param` is the JSON path of the offending value (e.g. `messages[0].content`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)

from infra.errors import InvalidRequest

_IGNORE_EXTRA = ConfigDict(extra="ignore", frozen=True)


class TextPart(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["image_url"]
    image_url: dict[str, Any]


class AudioPart(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(BaseModel):
    model_config = _IGNORE_EXTRA
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]
Content = str | list[ContentPart]


class _Message(BaseModel):
    model_config = _IGNORE_EXTRA
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
    model_config = _IGNORE_EXTRA
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = _IGNORE_EXTRA

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

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def token_limit(self) -> int | None:
        """`max_completion_tokens` supersedes the deprecated `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(stop for stop in stops if stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
_DISCRIMINATED = {"messages", "content"}  # the lists whose items are tagged unions


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


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a raw request body, or raise an OpenAI-style 400 for its first problem."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)

        # A bad value in a union field is reported once per branch. Prefer an error that says
        # what is wrong with the value (too long, out of range) over "not of this type", and
        # a deeper location over a shallower one.
        def rank(error: Any) -> tuple[int, int, int]:
            decisive = error["type"] in {"json_invalid", "missing"}
            about_value = not error["type"].endswith(("_type", "_parsing"))
            return (decisive, about_value, len(error.get("loc", ())))

        first = max(reversed(errors), key=rank)
        message, param, code = _describe(dict(first))
        raise InvalidRequest(message, param=param, code=code) from None
