"""Structured output for the simulated engine: JSON mode and JSON Schema (`response_format`).

Two halves:

- `check_schema` refuses a schema the way OpenAI's Structured Outputs do: it must be a valid
  JSON Schema (checked by `jsonschema`'s meta-schema), and with `strict: true` it must stay
  inside OpenAI's supported subset (an object at the root; every object with
  `additionalProperties: false` and every property required; only the keywords listed in
  `_STRICT_KEYWORDS`; at most 10 levels of nesting, 5000 properties and 1000 enum values).
- `json_pieces` generates one JSON document for a schema (or any JSON object, for
  `json_object`), deterministically from the choice's random generator, as the pieces the
  engine then tokenizes and streams. Free text inside strings comes from the same word model
  as ordinary replies, and every piece carries the distribution it was sampled from (`Scored`),
  so logprobs are the sampler's own figures here too.

No Django here: the engine runs inside workers.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import rstr
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from inference.engine.textgen import Scored, generate_scored_words, topic_of

# What OpenAI's strict mode supports (Structured Outputs guide, "Supported schemas").
_ANNOTATIONS = {"title", "description", "$comment", "examples", "default", "$schema", "$id"}
_STRICT_KEYWORDS = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
}
_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
MAX_DEPTH = 10
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
# Past this depth a recursive schema takes its shortest way out (no optional items, a
# non-recursive anyOf branch), so every document ends.
_DEEP = 6


class SchemaRefused(ValueError):
    """A schema outside what Nebula (like OpenAI) can enforce; `keyword` names the culprit."""

    def __init__(self, message: str, *, keyword: str, path: tuple[str | int, ...] = ()) -> None:
        where = "/".join(str(part) for part in path) or "(root)"
        super().__init__(f"{message} (at {where})")
        self.keyword = keyword
        self.path = path


def check_schema(schema: Mapping[str, Any], *, strict: bool) -> None:
    """Raise SchemaRefused if `schema` is not a JSON Schema, or (strict) is outside the subset."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        path = tuple(error.absolute_path)
        names = [part for part in path if isinstance(part, str)]
        raise SchemaRefused(
            f"Invalid JSON Schema: {error.message}",
            keyword=names[-1] if names else str(error.validator),
            path=path,
        ) from None
    if strict:
        if schema.get("type") != "object" or "anyOf" in schema:
            raise SchemaRefused(
                "In strict mode the root schema must be an object (type: 'object'), not anyOf",
                keyword="type",
            )
        counts = {"properties": 0}
        _check_strict(schema, (), depth=1, counts=counts, root=schema)
        try:
            # Every strict schema must have a document the generator reaches: a required
            # property that refers back to its own object has none.
            _Writer(random.Random(0), schema, "").value(schema, depth=0)  # noqa: S311
        except RecursionError:
            raise SchemaRefused(
                "The schema has no finite instance: a required '$ref' recurses forever",
                keyword="$ref",
            ) from None


def _check_strict(
    node: Any,
    path: tuple[str | int, ...],
    *,
    depth: int,
    counts: dict[str, int],
    root: Mapping[str, Any],
) -> None:
    if isinstance(node, bool) or not isinstance(node, Mapping):
        raise SchemaRefused(
            "In strict mode every schema must be an object", keyword="schema", path=path
        )
    for keyword in node:
        if keyword not in _STRICT_KEYWORDS:
            raise SchemaRefused(
                f"'{keyword}' is not supported in strict mode", keyword=keyword, path=path
            )
    if depth > MAX_DEPTH:
        raise SchemaRefused(
            f"A strict schema may nest at most {MAX_DEPTH} levels", keyword="properties", path=path
        )
    kinds = node.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds else []:
        if kind not in _TYPES:
            raise SchemaRefused(f"Unknown type '{kind}'", keyword="type", path=path)
    if "format" in node and node["format"] not in _FORMATS:
        raise SchemaRefused(
            f"format '{node['format']}' is not supported in strict mode (supported: "
            f"{', '.join(sorted(_FORMATS))})",
            keyword="format",
            path=path,
        )
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as error:
            raise SchemaRefused(
                f"pattern is not a regular expression Nebula can generate: {error}",
                keyword="pattern",
                path=path,
            ) from None
    if "enum" in node and len(node["enum"]) > MAX_ENUM_VALUES:
        raise SchemaRefused(
            f"An enum may have at most {MAX_ENUM_VALUES} values", keyword="enum", path=path
        )
    is_object = kinds == "object" or (isinstance(kinds, list) and "object" in kinds)
    if is_object or "properties" in node:
        properties = node.get("properties", {})
        if node.get("additionalProperties") is not False:
            raise SchemaRefused(
                "In strict mode 'additionalProperties' must be false on every object",
                keyword="additionalProperties",
                path=path,
            )
        missing = [name for name in properties if name not in node.get("required", [])]
        if missing:
            raise SchemaRefused(
                f"In strict mode every property must be required; 'required' lacks '{missing[0]}'",
                keyword="required",
                path=path,
            )
        counts["properties"] += len(properties)
        if counts["properties"] > MAX_PROPERTIES:
            raise SchemaRefused(
                f"A strict schema may have at most {MAX_PROPERTIES} properties",
                keyword="properties",
                path=path,
            )
        for name, child in properties.items():
            where = (*path, "properties", name)
            _check_strict(child, where, depth=depth + 1, counts=counts, root=root)
    if "items" in node:
        where = (*path, "items")
        _check_strict(node["items"], where, depth=depth + 1, counts=counts, root=root)
    for index, branch in enumerate(node.get("anyOf", [])):
        _check_strict(branch, (*path, "anyOf", index), depth=depth, counts=counts, root=root)
    for defs in ("$defs", "definitions"):
        for name, child in node.get(defs, {}).items():
            _check_strict(child, (*path, defs, name), depth=depth, counts=counts, root=root)
    ref = node.get("$ref")
    if ref is not None and not (ref == "#" or ref.startswith(("#/$defs/", "#/definitions/"))):
        raise SchemaRefused(
            "In strict mode '$ref' may only point inside the schema ('#', '#/$defs/...')",
            keyword="$ref",
            path=path,
        )
    if ref is not None and _target(root, ref) is None:
        raise SchemaRefused(f"'$ref' points at nothing: '{ref}'", keyword="$ref", path=path)
    if "pattern" in node:
        pattern = node["pattern"]
        try:  # whatever the generator cannot follow, it must say so here, not in a worker
            rngs = (random.Random(seed) for seed in range(3))  # noqa: S311
            follows = all(re.search(pattern, _matching(pattern, rng)) for rng in rngs)
        except Exception:
            follows = False
        if not follows:
            raise SchemaRefused(
                "pattern uses a construct Nebula cannot generate strings for",
                keyword="pattern",
                path=path,
            )


def _matching(pattern: str, rng: random.Random) -> str:
    """A string `pattern` matches, from rstr (which ignores lookarounds: try a few)."""
    generate = rstr.Rstr(rng).xeger
    text = generate(pattern)
    for _ in range(10):
        if re.search(pattern, text):
            break
        text = generate(pattern)
    return text


def _target(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    """What a local `$ref` ('#', '#/$defs/name') points at, or None."""
    target: Any = root
    if ref != "#":
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(target, Mapping):
                return None
            target = target.get(part.replace("~1", "/").replace("~0", "~"))
    return target if isinstance(target, Mapping) else None


# --- generation ----------------------------------------------------------------------------------

Piece = tuple[str, Scored | None]  # a piece of the document, and what it was sampled from


class _Writer:
    """Generates one document; `pieces` is what the engine streams."""

    def __init__(self, rng: random.Random, root: Mapping[str, Any], user_text: str) -> None:
        self.rng = rng
        self.root = root
        self.user_text = user_text
        self.words = generate_scored_words(
            rng=rng, user_text=user_text, temperature=1.0, top_p=1.0, opener=False
        )
        self.pieces: list[Piece] = []

    def put(self, text: str, scored: Scored | None = None) -> None:
        self.pieces.append((text, scored))

    def choose(self, values: list[Any]) -> Any:
        """A uniform choice among `values`, noted with its distribution."""
        value = values[self.rng.randrange(len(values))] if len(values) > 1 else values[0]
        texts = [json.dumps(v) for v in values]
        self.put(json.dumps(value), Scored.uniform(texts) if len(values) > 1 else None)
        return value

    def resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        target = _target(self.root, ref)
        if target is None:
            raise KeyError(ref)
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return self.resolve(merged) if "$ref" in merged and merged["$ref"] != ref else merged

    def value(self, node: Any, depth: int) -> None:
        if not isinstance(node, Mapping):
            self.text_string()  # `true` or `{}`: anything goes
            return
        node = self.resolve(node)
        if "const" in node:
            self.put(json.dumps(node["const"]))
            return
        if "enum" in node:
            self.choose(list(node["enum"]))
            return
        if "anyOf" in node:
            branches = list(node["anyOf"])
            if depth >= _DEEP:
                flat = [b for b in branches if "$ref" not in json.dumps(b)]
                branches = flat or branches
            self.value(branches[self.rng.randrange(len(branches))], depth)
            return
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] if depth >= _DEEP else list(kind)
            kind = (kinds or ["null"])[self.rng.randrange(len(kinds or ["null"]))]
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else "string"
        getattr(self, f"_{kind}")(node, depth)

    def _object(self, node: Mapping[str, Any], depth: int) -> None:
        properties: Mapping[str, Any] = node.get("properties", {})
        self.put("{")
        for index, (name, child) in enumerate(properties.items()):
            self.put(("" if index == 0 else ", ") + json.dumps(name) + ": ")
            self.value(child, depth + 1)
        self.put("}")

    def _array(self, node: Mapping[str, Any], depth: int) -> None:
        low = int(node.get("minItems", 0 if depth >= _DEEP else 1))
        high = int(node.get("maxItems", low + (0 if depth >= _DEEP else 2)))
        count = low if depth >= _DEEP else self.rng.randint(low, max(low, high))
        self.put("[")
        for index in range(count):
            if index:
                self.put(", ")
            self.value(node.get("items", {}), depth + 1)
        self.put("]")

    def _string(self, node: Mapping[str, Any], depth: int) -> None:
        if "format" in node:
            self.put(json.dumps(_formatted(node["format"], self.rng)))
        elif "pattern" in node:
            self.put(json.dumps(_matching(node["pattern"], self.rng)))
        else:
            self.text_string()

    def text_string(self) -> None:
        """A few words of the model's prose, each with its distribution."""
        self.put('"')
        for index in range(self.rng.randint(2, 6)):
            word, scored = next(self.words)
            if index == 0:
                word = word.lstrip()
                scored = scored.stripped() if scored else None
            if word in {".", "!", "?"} and index == 0:
                continue
            self.put(json.dumps(word)[1:-1], scored)
        self.put('"')

    def _integer(self, node: Mapping[str, Any], depth: int) -> None:
        low, high = _bounds(node, default=(0, 100), integer=True)
        step = node.get("multipleOf")
        if step:
            first, last = -(-low // step), high // step
            value = int(step * self.rng.randint(int(first), int(max(first, last))))
        else:
            value = self.rng.randint(int(low), int(max(low, high)))
        self.put(json.dumps(value))

    def _number(self, node: Mapping[str, Any], depth: int) -> None:
        low, high = _bounds(node, default=(0.0, 100.0), integer=False)
        step = node.get("multipleOf")
        if step:
            first = int(-(-low // step))
            last = int(max(first, high // step))
            value: float = step * self.rng.randint(first, last)
        else:
            value = round(self.rng.uniform(low, high), 2)
            if not low <= value <= high:
                value = (low + high) / 2
        self.put(json.dumps(value))

    def _boolean(self, node: Mapping[str, Any], depth: int) -> None:
        self.choose([True, False])

    def _null(self, node: Mapping[str, Any], depth: int) -> None:
        self.put("null")


def _bounds(
    node: Mapping[str, Any], *, default: tuple[float, float], integer: bool
) -> tuple[float, float]:
    """[low, high] inside the schema's bounds; exclusive bounds move in by 1 (or a hair)."""
    nudge = 1 if integer else 0.01
    given_low: float | None = node.get("minimum")
    if given_low is None and "exclusiveMinimum" in node:
        given_low = node["exclusiveMinimum"] + nudge
    given_high: float | None = node.get("maximum")
    if given_high is None and "exclusiveMaximum" in node:
        given_high = node["exclusiveMaximum"] - nudge
    span = default[1] - default[0]
    if given_low is None and given_high is None:
        low, high = default
    elif given_low is None:
        assert given_high is not None
        low, high = min(default[0], given_high - span), given_high
    elif given_high is None:
        low, high = given_low, given_low + span
    else:
        low, high = given_low, given_high
    if integer:
        low, high = -(-low // 1), high // 1
    return low, max(low, high)


def _formatted(kind: str, rng: random.Random) -> str:
    moment = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(3 * 365 * 86400))
    word = rng.choice(["alpha", "nova", "delta", "orbit", "gpu", "cloud"])
    values = {
        "date-time": moment.isoformat().replace("+00:00", "Z"),
        "date": moment.date().isoformat(),
        "time": moment.time().isoformat() + "Z",
        "duration": f"PT{rng.randint(1, 59)}M",
        "email": f"{word}{rng.randint(1, 99)}@example.com",
        "hostname": f"{word}.example.com",
        "ipv4": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
        "ipv6": ":".join(f"{rng.randrange(65536):x}" for _ in range(8)),
        "uuid": str(_uuid(rng)),
    }
    return values.get(kind, word)


def _uuid(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    digits = digits[:12] + "4" + digits[13:16] + "89ab"[rng.randrange(4)] + digits[17:]
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def json_pieces(
    *, rng: random.Random, user_text: str, schema: Mapping[str, Any] | None
) -> list[Piece]:
    """One JSON document as pieces: an instance of `schema`, or (None) a JSON object about the
    user's topic. Deterministic for a given generator state."""
    if schema is None:
        topic = topic_of(user_text) or "your question"
        schema = {
            "type": "object",
            "properties": {
                "topic": {"const": topic},
                "answer": {"type": "string"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
        }
    writer = _Writer(rng, schema, user_text)
    try:
        writer.value(schema, depth=0)
    except Exception:
        # OpenAI does not promise adherence without strict: answer with a plain object.
        return json_pieces(rng=rng, user_text=user_text, schema=None)
    return writer.pieces
