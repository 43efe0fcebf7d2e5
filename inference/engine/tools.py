"""Tool calling on the simulated engine: whether the model calls a function, which, and with
what arguments. No Django.

The decision and the arguments come from the choice's seeded random generator, so the same
request with the same seed calls the same functions with the same arguments. Arguments are
generated from the function's JSON Schema `parameters` (`arguments_for`) and always validate
against it; schemas that use keywords the generator cannot satisfy (`pattern`, `not`, ...) are
refused before the job is admitted (`unsupported_keyword`), so a worker never meets one.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema

from inference.engine.textgen import topic_of

# Keywords whose constraints the generator cannot meet by construction.
UNSUPPORTED_KEYWORDS = (
    "pattern",
    "patternProperties",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "prefixItems",
)

FINISH_TOOL_CALLS = "tool_calls"
FINISH_FUNCTION_CALL = "function_call"

# Most calls one choice makes at once when parallel calls are allowed.
MAX_PARALLEL_CALLS = 3
_ATTEMPTS = 8
_MAX_DEPTH = 24
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a request offers the model: its functions and how it may use them.

    `choice` is 'auto', 'required' or 'none'; `name` forces one call of that function.
    `legacy` requests (`functions` / `function_call`) get one call, as `function_call`.
    `answered` says the conversation ends with a tool's result: under 'auto' the model then
    answers in text, as a model in an agent loop does.
    """

    functions: tuple[tuple[str, str, dict[str, Any]], ...]  # (name, description, parameters)
    choice: str = "auto"
    name: str | None = None
    parallel: bool = True
    legacy: bool = False
    answered: bool = False

    @property
    def finish_reason(self) -> str:
        return FINISH_FUNCTION_CALL if self.legacy else FINISH_TOOL_CALLS


@dataclass(frozen=True, slots=True)
class PlannedCall:
    id: str
    name: str
    arguments: str  # JSON text


def unsupported_keyword(schema: Any) -> str | None:
    """The first keyword of `schema` (anywhere in it) that the generator cannot satisfy."""
    if isinstance(schema, list):
        for item in schema:
            found = unsupported_keyword(item)
            if found:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    for keyword in UNSUPPORTED_KEYWORDS:
        if keyword in schema:
            return keyword
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return "$ref"
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for sub in value.values():
                found = unsupported_keyword(sub)
                if found:
                    return found
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            found = unsupported_keyword(value)
            if found:
                return found
    return None


def _relevance(spec_function: tuple[str, str, dict[str, Any]], user_text: str) -> int:
    name, description, _ = spec_function
    said = {word.lower() for word in _WORD.findall(user_text) if len(word) > 3}
    offered = {word.lower() for word in _WORD.findall(name.replace("_", " "))}
    offered |= {word.lower() for word in _WORD.findall(description) if len(word) > 3}
    return len(said & offered)


def plan_calls(spec: ToolSpec, *, rng: random.Random, user_text: str) -> list[PlannedCall]:
    """The calls the model makes for one choice (none: it answers in text)."""
    by_name = {function[0]: function for function in spec.functions}
    if spec.choice == "none" or not spec.functions:
        return []
    if spec.name is not None:
        chosen = [by_name[spec.name]]
    else:
        ranked = sorted(spec.functions, key=lambda f: -_relevance(f, user_text))
        if spec.choice == "auto":
            if spec.answered:
                return []
            # A function the user's words point at is called; otherwise the seed decides.
            if _relevance(ranked[0], user_text) == 0 and rng.random() < 0.5:
                return []
        count = 1
        if spec.parallel and not spec.legacy and len(ranked) > 1:
            count = min(rng.choice([1, 1, 2, MAX_PARALLEL_CALLS]), len(ranked))
        # The functions the user's words point at first, then any, drawn by the seed.
        relevant = [f for f in ranked if _relevance(f, user_text) > 0][:count]
        rest = [f for f in ranked if f not in relevant]
        chosen = relevant + rng.sample(rest, k=count - len(relevant))
    # String arguments pick up what the user talked about.
    words = [word.strip(".") for word in topic_of(user_text).split() if len(word) > 2]
    return [
        PlannedCall(
            id="call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24)),
            name=name,
            arguments=json.dumps(valid_arguments(parameters, rng=rng, words=words)),
        )
        for name, _, parameters in chosen
    ]


def valid_arguments(schema: dict[str, Any], *, rng: random.Random, words: list[str]) -> Any:
    """Arguments that the `jsonschema` library (the reference validator) accepts for `schema`:
    the generator's rare miss (unique items it could not find, say) is drawn again."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    value: Any = {}
    for _ in range(_ATTEMPTS):
        try:
            value = arguments_for(schema, rng=rng, words=words)
        except (UnsatisfiableSchema, TypeError, ValueError):
            continue  # the web side refuses such schemas; a worker never fails on one
        if validator.is_valid(value):
            break
    return value


# --- JSON from a JSON Schema ---------------------------------------------------------------------


def arguments_for(
    schema: dict[str, Any] | None, *, rng: random.Random, words: list[str] | None = None
) -> Any:
    """A value that validates against `schema` (a function's `parameters`): its required
    properties always, optional ones by chance. No schema: an empty object."""
    if not schema:
        return {}
    return _value(schema, schema, rng, words or ["example"], depth=0)


def _resolve(root: dict[str, Any], ref: Any) -> dict[str, Any]:
    node: Any = root
    for part in str(ref).removeprefix("#").strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict) or part.replace("~1", "/").replace("~0", "~") not in node:
            raise UnsatisfiableSchema(f"'$ref' {ref} points at nothing")
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node if isinstance(node, dict) else {}


class UnsatisfiableSchema(ValueError):
    """The generator cannot make a value for this schema (a dangling or endless $ref, ...)."""


def _value(
    schema: Any, root: dict[str, Any], rng: random.Random, words: list[str], depth: int
) -> Any:
    if depth > _MAX_DEPTH:
        raise UnsatisfiableSchema("the schema nests too deep")
    if schema is True or not isinstance(schema, dict):
        return rng.choice(words)
    if "$ref" in schema:
        return _value(_resolve(root, schema["$ref"]), root, rng, words, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        if options:
            # oneOf wants exactly one match: the first option is the least likely to overlap.
            option = rng.choice(options) if keyword == "anyOf" else options[0]
            merged = {k: v for k, v in schema.items() if k != keyword}
            return _value({**merged, **option}, root, rng, words, depth + 1)
    if schema.get("allOf"):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if "$ref" in part else part
            props = {**merged.get("properties", {}), **part.get("properties", {})}
            required = [*merged.get("required", []), *part.get("required", [])]
            merged = {**merged, **part, "properties": props, "required": required}
        return _value(merged, root, rng, words, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        # Prefer a type that carries information over null.
        kinds = [k for k in kind if k != "null"] or kind
        kind = rng.choice(kinds)
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return _object(schema, root, rng, words, depth)
    if kind == "array":
        low = int(schema.get("minItems", 1 if depth < 3 else 0))
        high = int(schema.get("maxItems", max(low, 3)))
        # Deep down, the fewest items allowed: a recursive schema ends.
        count = rng.randint(low, max(low, min(high, low + 3))) if depth < 3 else low
        items = schema.get("items", {"type": "string"})
        values: list[Any] = []
        for _ in range(count * 4):
            if len(values) == count:
                break
            value = _value(items, root, rng, words, depth + 1)
            if not schema.get("uniqueItems") or value not in values:
                values.append(value)
        return values
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng, words)


def _object(
    schema: dict[str, Any], root: dict[str, Any], rng: random.Random, words: list[str], depth: int
) -> dict[str, Any]:
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    result: dict[str, Any] = {}
    for name, sub in properties.items():
        if name in required or (depth < 3 and rng.random() < 0.5):
            result[name] = _value(sub, root, rng, words, depth + 1)
    for name in required - set(result):  # required but not described: any value will do
        result[name] = rng.choice(words)
    low = int(schema.get("minProperties", 0))
    extra = schema.get("additionalProperties", True)
    index = 0
    while len(result) < low and extra is not False:
        result[f"{rng.choice(words).lower()}_{index}"] = _value(
            extra if isinstance(extra, dict) else {"type": "string"}, root, rng, words, depth + 1
        )
        index += 1
    return result


def _integer(schema: dict[str, Any], rng: random.Random) -> int:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMinimum" in schema:
        low = int(schema["exclusiveMinimum"]) + 1
    if "exclusiveMaximum" in schema:
        high = int(schema["exclusiveMaximum"]) - 1
    low = int(-(-low // 1)) if low is not None else (0 if high is None or high >= 0 else high - 100)
    high = int(high // 1) if high is not None else low + 100
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        first = -(-low // step) * step
        if first <= high:
            return int(first + step * rng.randint(0, (high - first) // step))
    return rng.randint(low, max(low, high))


def _number(schema: dict[str, Any], rng: random.Random) -> float | int:
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low = float(schema.get("minimum", exclusive_low if exclusive_low is not None else 0.0))
    default_high = exclusive_high if exclusive_high is not None else low + 100.0
    high = float(schema.get("maximum", default_high))
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        first, last = math.ceil(low / step), math.floor(high / step)
        if exclusive_low is not None and first * step <= exclusive_low:
            first += 1
        if exclusive_high is not None and last * step >= exclusive_high:
            last -= 1
        multiple = rng.randint(first, max(first, last)) * step
        return int(multiple) if isinstance(step, int) else multiple
    value = round(rng.uniform(low, high), 2)
    too_low = value < low or (exclusive_low is not None and value <= exclusive_low)
    too_high = value > high or (exclusive_high is not None and value >= exclusive_high)
    return (low + high) / 2 if too_low or too_high else value


_FORMATS = {
    "date": lambda rng: f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    "date-time": lambda rng: f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
    "time": lambda rng: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
    "email": lambda rng: f"user{rng.randint(1, 999)}@example.com",
    "uri": lambda rng: f"https://example.com/{rng.randint(1, 999)}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
}


def _string(schema: dict[str, Any], rng: random.Random, words: list[str]) -> str:
    made = _FORMATS.get(str(schema.get("format")))
    text = made(rng) if made else " ".join(rng.sample(words, k=min(len(words), rng.randint(1, 2))))
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", max(len(text), low)))
    while len(text) < low:
        text += " " + rng.choice(words)
    return text[: max(high, low)] if len(text) > high else text
