"""The simulated inference engine: what a request generates, step by step. No Django, no Celery.

`Generation` is a pure iterator of decode steps; the caller paces it with `HardwareSpec` timings
(and a time scale), so tests can run it instantly and a real backend could replace it later.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.engine.logprobs import TokenLogprob, document_logprobs, piece_logprobs
from inference.engine.structured import Piece, json_pieces
from inference.engine.textgen import generate_scored_words, natural_length, seed_for
from inference.engine.tokenizer import count_tokens, iter_tokens
from inference.engine.tools import PlannedCall, ToolSpec, plan_calls

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt_text: str  # the whole conversation, flattened: seeds the generator
    user_text: str  # the last user message: gives the reply its topic
    prompt_tokens: int
    context_length: int
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    # vLLM's extensions: never end naturally, or not before this many tokens.
    ignore_eos: bool = False
    min_tokens: int = 0
    tools: ToolSpec | None = None  # the functions the model may call
    # Text completions with several prompts: each choice's own (prompt, its tokens).
    choice_prompts: tuple[tuple[str, int], ...] = ()
    # OpenAI's response_format: "text", "json_object" or "json_schema" (with its schema).
    response_format: str = "text"
    json_schema: Mapping[str, Any] | None = None
    # Per-token log probabilities, with this many alternatives each.
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def token_budget(self) -> int:
        """Most tokens one choice may generate: max_tokens, and what is left of the context."""
        return self.budget_for(0)

    def budget_for(self, index: int) -> int:
        prompt_tokens = self.choice_prompts[index][1] if self.choice_prompts else self.prompt_tokens
        room = max(self.context_length - prompt_tokens, 0)
        return room if self.max_tokens is None else min(self.max_tokens, room)


@dataclass(slots=True)
class _Choice:
    index: int
    tokens: Iterator[tuple[str, TokenLogprob | None]]
    target: int
    # Structured output: the document's length in tokens, where the model's reply ends.
    eos_at: int | None = None
    held: str = ""
    text: str = ""
    generated: int = 0
    finish_reason: str | None = None
    # A choice that calls functions streams their fragments instead of text: (fragment, tokens).
    fragments: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # Logprob entries of the held text's tokens (start, end in `held`), and of the emitted text.
    pending: list[tuple[int, int, TokenLogprob]] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Step:
    """One decode step: the text each unfinished choice adds, and the choices that just finished."""

    deltas: tuple[tuple[int, str], ...]
    finished: tuple[tuple[int, str], ...] = ()
    # Streaming `delta.tool_calls` entries (OpenAI's shape), per choice index.
    tool_deltas: tuple[tuple[int, dict[str, Any]], ...] = ()
    # With logprobs: each choice's entries for the tokens of its delta.
    logprobs: tuple[tuple[int, tuple[TokenLogprob, ...]], ...] = ()


@dataclass
class Generation:
    request: GenerationRequest
    choices: list[_Choice] = field(init=False)

    def __post_init__(self) -> None:
        req = self.request
        self.choices = []
        for index in range(req.n):
            prompt, user_text = req.prompt_text, req.user_text
            if req.choice_prompts:
                prompt = user_text = req.choice_prompts[index][0]
            rng = random.Random(  # noqa: S311 - simulated text, not security
                seed_for(
                    model=req.model,
                    prompt=prompt,
                    seed=req.seed,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    choice=index,
                )
            )
            calls = plan_calls(req.tools, rng=rng, user_text=user_text) if req.tools else []
            if req.response_format == "text" or calls:
                words = generate_scored_words(
                    rng=rng, user_text=user_text, temperature=req.temperature, top_p=req.top_p
                )
                choice = _Choice(
                    index=index, tokens=self._tokens(words), target=natural_length(rng)
                )
                choice.fragments = _fragments(calls)
                self.choices.append(choice)
                continue
            # Structured output: one JSON document, then (ignore_eos, min_tokens) whitespace,
            # which keeps it valid JSON.
            pieces = json_pieces(
                rng=rng,
                user_text=user_text,
                schema=req.json_schema if req.response_format == "json_schema" else None,
            )
            document = self._document_tokens(pieces)
            padding = self._tokens(itertools.repeat((" ", None)))
            self.choices.append(
                _Choice(
                    index=index,
                    tokens=itertools.chain(document, padding),
                    target=len(document),
                    eos_at=len(document),
                )
            )

    def _document_tokens(self, pieces: list[Piece]) -> list[tuple[str, TokenLogprob | None]]:
        """A JSON document's tokens, as the tokenizer splits the whole text (so usage counts
        what a re-count of the reply would), with the logprobs of the pieces they are made of
        (`logprobs.document_logprobs`)."""
        text = "".join(piece for piece, _ in pieces)
        if not self.request.logprobs:
            return [(token, None) for token in iter_tokens(text)]
        return document_logprobs(text, list(self._tokens(pieces)), self.request.top_logprobs)

    def _tokens(self, pieces: Iterable[Piece]) -> Iterator[tuple[str, TokenLogprob | None]]:
        if not self.request.logprobs:
            for text, _ in pieces:
                for token in iter_tokens(text):
                    yield token, None
            return
        for text, scored in pieces:
            yield from piece_logprobs(text, scored, self.request.top_logprobs)

    @property
    def completion_tokens(self) -> int:
        return sum(choice.generated for choice in self.choices)

    @property
    def done(self) -> bool:
        return all(choice.finish_reason is not None for choice in self.choices)

    def texts(self) -> list[str]:
        return [choice.text for choice in self.choices]

    def finish_reasons(self) -> list[str | None]:
        return [choice.finish_reason for choice in self.choices]

    def tool_calls(self) -> list[list[dict[str, Any]] | None]:
        """Each choice's calls as OpenAI's `message.tool_calls` (None: it answered in text)."""
        return [choice.tool_calls or None for choice in self.choices]

    def logprobs(self) -> list[list[TokenLogprob] | None]:
        """Each choice's `logprobs.content` (None without logprobs)."""
        if not self.request.logprobs:
            return [None] * len(self.choices)
        return [choice.logprobs for choice in self.choices]

    def steps(self) -> Iterator[Step]:
        budgets = [self.request.budget_for(choice.index) for choice in self.choices]
        if all(budget <= 0 for budget in budgets):
            for choice in self.choices:
                choice.finish_reason = FINISH_LENGTH
            yield Step(deltas=(), finished=tuple((c.index, FINISH_LENGTH) for c in self.choices))
            return
        while not self.done:
            deltas: list[tuple[int, str]] = []
            finished: list[tuple[int, str]] = []
            tool_deltas: list[tuple[int, dict[str, Any]]] = []
            logprobs: list[tuple[int, tuple[TokenLogprob, ...]]] = []
            for choice in self.choices:
                if choice.finish_reason is not None:
                    continue
                budget = budgets[choice.index]
                if choice.fragments:
                    fragment, reason = self._advance_call(choice, budget)
                    tool_deltas.append((choice.index, fragment))
                    if reason is not None:
                        finished.append((choice.index, reason))
                    continue
                emitted = len(choice.logprobs)
                delta, reason = self._advance(choice, budget)
                if delta:
                    deltas.append((choice.index, delta))
                if reason is not None:
                    finished.append((choice.index, reason))
                if len(choice.logprobs) > emitted:
                    logprobs.append((choice.index, tuple(choice.logprobs[emitted:])))
            yield Step(
                deltas=tuple(deltas),
                finished=tuple(finished),
                tool_deltas=tuple(tool_deltas),
                logprobs=tuple(logprobs),
            )

    def _advance_call(self, choice: _Choice, budget: int) -> tuple[dict[str, Any], str | None]:
        """The next fragment of the choice's calls: a call's header (id, type, name and empty
        arguments), or a token of its arguments."""
        fragment, tokens = choice.fragments.pop(0)
        choice.generated += tokens
        function = fragment["function"]
        if "id" in fragment:
            choice.tool_calls.append(
                {"id": fragment["id"], "type": "function", "function": dict(function)}
            )
        else:
            choice.tool_calls[-1]["function"]["arguments"] += function["arguments"]
        if not choice.fragments:
            spec = self.request.tools
            choice.finish_reason = spec.finish_reason if spec else FINISH_STOP
        elif choice.generated >= budget:
            choice.finish_reason = FINISH_LENGTH
            choice.fragments = []
        return fragment, choice.finish_reason

    def _advance(self, choice: _Choice, budget: int) -> tuple[str, str | None]:
        token, entry = next(choice.tokens)
        choice.generated += 1
        if entry is not None:
            choice.pending.append((len(choice.held), len(choice.held) + len(token), entry))
        choice.held += token
        stops = self.request.stop
        if stops:
            hits = [(choice.held.find(stop), stop) for stop in stops if stop in choice.held]
            if hits:
                at = min(position for position, _ in hits)
                return self._emit(choice, choice.held[:at], FINISH_STOP)
        if choice.generated >= budget:
            return self._emit(choice, choice.held, FINISH_LENGTH)
        natural_end = not self.request.ignore_eos and choice.generated >= max(
            choice.target, self.request.min_tokens
        )
        if natural_end and (choice.eos_at is not None or token.strip() in {".", "!", "?"}):
            return self._emit(choice, choice.held, FINISH_STOP)
        # Hold back a tail that could still grow into a stop sequence; emit the rest.
        keep = _longest_stop_prefix_suffix(choice.held, stops)
        ready = choice.held[: len(choice.held) - keep]
        self._release(choice, len(ready), cut=False)
        choice.held = choice.held[len(ready) :]
        choice.text += ready
        return ready, None

    @classmethod
    def _emit(cls, choice: _Choice, text: str, reason: str) -> tuple[str, str]:
        cls._release(choice, len(text), cut=True)
        choice.text += text
        choice.held = ""
        choice.finish_reason = reason
        return text, reason

    @staticmethod
    def _release(choice: _Choice, length: int, *, cut: bool) -> None:
        """The logprobs of the held tokens whose text goes out now: those wholly inside the
        first `length` characters, or (`cut`: the rest is dropped) those starting there."""
        if not choice.pending:
            return
        keep: list[tuple[int, int, TokenLogprob]] = []
        for start, end, entry in choice.pending:
            if (start < length) if cut else (end <= length):
                choice.logprobs.append(entry)
            elif not cut:
                keep.append((start - length, end - length, entry))
        choice.pending = keep


def _fragments(calls: list[PlannedCall]) -> list[tuple[dict[str, Any], int]]:
    """The streamed pieces of `calls`, each with the tokens it costs."""
    fragments: list[tuple[dict[str, Any], int]] = []
    for index, call in enumerate(calls):
        header = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        fragments.append((header, max(1, count_tokens(call.name))))
        fragments += [
            ({"index": index, "function": {"arguments": piece}}, 1)
            for piece in iter_tokens(call.arguments)
        ]
    return fragments


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best


def generate_all(request: GenerationRequest) -> Generation:
    """Run a generation to the end at once (no pacing)."""
    generation = Generation(request)
    for _ in generation.steps():
        pass
    return generation
