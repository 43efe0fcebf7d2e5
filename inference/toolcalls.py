"""Tool calling, web side: how a request's tools, its tool choice and its conversation fit
together, checked before the job is admitted, and what the worker's engine gets of them.

What pydantic cannot say about a request (inference.schemas) is checked here, each refusal an
OpenAI-style 400 naming the parameter: a named function that is not offered, a tool message
that answers no call made earlier, a `parameters` schema that is not a JSON Schema of an object
(checked with the `jsonschema` library, the reference implementation, rather than by hand), or
one using keywords the simulated model cannot satisfy.
"""

from __future__ import annotations

import json
import random

import jsonschema
from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from inference.engine import count_tokens
from inference.engine.tools import UnsatisfiableSchema, arguments_for, unsupported_keyword
from inference.jobs import ToolFunction, ToolsJob
from inference.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCallChoice,
    FunctionDefinition,
    FunctionMessage,
    NamedFunction,
    NamedToolChoice,
    ToolChoice,
    ToolMessage,
)
from infra.errors import InvalidRequest


def _only_with(param: str, needs: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for '{param}': '{param}' is only allowed when '{needs}' are specified.",
        param=param,
        code="invalid_value",
    )


def _check_function(function: FunctionDefinition, param: str) -> ToolFunction:
    schema = function.parameters
    if schema is not None:
        where = f"{param}.parameters"
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except SchemaError as error:
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': {error.message}.",
                param=where,
                code="invalid_function_parameters",
            ) from None
        if schema and schema.get("type", "object") != "object":
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': schema must be a JSON Schema "
                f"of 'type: \"object\"', got 'type: {json.dumps(schema.get('type'))}'.",
                param=where,
                code="invalid_function_parameters",
            )
        keyword = unsupported_keyword(schema)
        if keyword is not None:
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': Nebula's simulated models "
                f"cannot generate arguments for the keyword '{keyword}'.",
                param=where,
                code="unsupported_schema_keyword",
            )
        # The generator covers what is left; a schema whose constraints contradict each other
        # (minLength over maxLength, say) is refused here rather than answered invalidly.
        validator = jsonschema.validators.validator_for(schema)(schema)
        try:
            valid = validator.is_valid(arguments_for(schema, rng=random.Random(0)))  # noqa: S311
            reason = "no arguments Nebula's simulated models generate satisfy it"
        except (UnsatisfiableSchema, TypeError, ValueError, Unresolvable) as error:
            valid, reason = False, str(error)
        if not valid:
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': {reason}.",
                param=where,
                code="invalid_function_parameters",
            )
    return {
        "name": function.name,
        "description": function.description or "",
        "parameters": schema or {},
    }


def _check_conversation(request: ChatCompletionRequest) -> None:
    """A tool's result must answer a call the assistant made earlier in the conversation."""
    calls: set[str] = set()
    functions_called = False
    for index, message in enumerate(request.messages):
        if isinstance(message, AssistantMessage):
            calls.update(call.id for call in message.tool_calls or [])
            functions_called = functions_called or message.function_call is not None
        elif isinstance(message, ToolMessage) and message.tool_call_id not in calls:
            raise InvalidRequest(
                f"Invalid parameter: messages[{index}] with role 'tool' must be a response to "
                f"a preceding assistant message's tool call; no call has the id "
                f"'{message.tool_call_id}'.",
                param=f"messages[{index}]",
                code="invalid_tool_call_id",
            )
        elif isinstance(message, FunctionMessage):
            if not message.name:
                raise InvalidRequest(
                    f"Missing required parameter: 'messages[{index}].name'.",
                    param=f"messages[{index}].name",
                    code="missing_required_parameter",
                )
            if not functions_called:
                raise InvalidRequest(
                    f"Invalid parameter: messages[{index}] with role 'function' must be a "
                    "response to a preceding assistant message's function_call.",
                    param=f"messages[{index}]",
                    code="invalid_value",
                )


def tools_check(request: ChatCompletionRequest) -> ToolsJob | None:
    """Check the request's tools against each other and its conversation; what the engine
    gets of them (None: the request offers none). Raises InvalidRequest."""
    _check_conversation(request)
    if request.tools is not None and request.functions is not None:
        raise InvalidRequest(
            "Invalid request: 'functions' and 'tools' cannot both be specified; use 'tools'.",
            param="functions",
            code="invalid_value",
        )
    if request.tools is None:
        for param in ("tool_choice", "parallel_tool_calls"):
            if getattr(request, param) is not None:
                raise _only_with(param, "tools")
    if request.functions is None and request.function_call is not None:
        raise _only_with("function_call", "functions")
    legacy = request.functions is not None
    choice: ToolChoice | FunctionCallChoice | None
    if legacy:
        definitions = list(request.functions or [])
        params = [f"functions[{i}]" for i in range(len(definitions))]
        choice, choice_param = request.function_call, "function_call"
    elif request.tools:
        definitions = [tool.function for tool in request.tools]
        params = [f"tools[{i}].function" for i in range(len(definitions))]
        choice, choice_param = request.tool_choice, "tool_choice"
    else:
        return None
    functions: list[ToolFunction] = []
    for definition, param in zip(definitions, params, strict=True):
        if any(f["name"] == definition.name for f in functions):
            raise InvalidRequest(
                f"Invalid '{param}.name': the function name '{definition.name}' is used twice.",
                param=f"{param}.name",
                code="invalid_value",
            )
        functions.append(_check_function(definition, param))
    name: str | None = None
    mode = "auto"
    if isinstance(choice, NamedToolChoice | NamedFunction):
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
        if all(f["name"] != name for f in functions):
            offered = "tools" if choice_param == "tool_choice" else "functions"
            raise InvalidRequest(
                f"Invalid value for '{choice_param}': function '{name}' is not one of the "
                f"'{offered}' of this request.",
                param=choice_param,
                code="invalid_value",
            )
    elif choice is not None:
        mode = choice
    last = request.messages[-1]
    return {
        "functions": functions,
        "choice": mode,
        "name": name,
        "parallel": request.parallel_tool_calls is not False,
        "legacy": legacy,
        "answered": isinstance(last, ToolMessage | FunctionMessage),
    }


def tools_prompt_tokens(tools: ToolsJob | None) -> int:
    """What the function definitions add to the prompt (models read them as text)."""
    if tools is None:
        return 0
    return sum(
        count_tokens(f"{f['name']}\n{f['description']}\n{json.dumps(f['parameters'])}")
        for f in tools["functions"]
    )
