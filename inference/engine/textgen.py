"""Deterministic, readable simulated completions.

A word-level Markov chain (order 2) over a small built-in corpus of assistant-style sentences,
opened by a sentence that picks up the topic of the user's last message. Sampling honours
`temperature` (sharpening or flattening the next-word distribution; 0 is greedy in the sense of
fully determined by the prompt) and `top_p` (nucleus truncation). The random generator is seeded
from the model name, the messages, `seed` and the sampling parameters, so the same request with
the same seed yields the same text.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from inference.engine.corpus import CORPUS

_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|[0-9]+|[^\sA-Za-z0-9]")
_SENTENCE_END = {".", "!", "?"}
_START = ("<s>", "<s>")
_STOPWORDS = frozenset(
    """
    a about above after again all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just let
    me more most my no nor not now of off on once only or other our out over own please same
    she should so some such tell than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your hello hi hey thanks thank write give explain make show know
    want need like get say makes made works work does use using used help tell describe
    summarize summarise compare happens happen there's what's how's i'm you're it's
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_OPENERS = [
    "Happy to help with {topic}.",
    "Here is what I can tell you about {topic}.",
    "Good question about {topic}.",
    "Let me walk you through {topic}.",
]
_OPENERS_NO_TOPIC = ["Happy to help.", "Sure, here is my answer.", "Good question."]


@lru_cache(maxsize=1)
def _chain() -> dict[tuple[str, str], list[tuple[str, int]]]:
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for sentence in re.split(r"(?<=[.!?])\s+", CORPUS.replace("\n", " ")):
        words = _WORD.findall(sentence)
        state = _START
        for word in words:
            counts[state][word] += 1
            state = (state[1], word)
    # Deterministic order (by frequency, then alphabetically) so sampling is reproducible.
    return {
        state: sorted(nexts.items(), key=lambda item: (-item[1], item[0]))
        for state, nexts in counts.items()
    }


def seed_for(
    *, model: str, prompt: str, seed: int | None, temperature: float, top_p: float, choice: int
) -> int:
    if seed is None and temperature > 0:
        return random.SystemRandom().getrandbits(64)
    material = f"{model}\x00{prompt}\x00{seed if temperature > 0 else ''}\x00"
    material += f"{temperature if temperature > 0 else 0}\x00{top_p}\x00{choice}"
    return int.from_bytes(hashlib.blake2b(material.encode(), digest_size=8).digest(), "big")


def topic_of(text: str) -> str:
    words = [
        w for w in re.findall(r"[A-Za-z][A-Za-z0-9+#.-]*", text) if w.lower() not in _STOPWORDS
    ]
    topic = " ".join(words[:3]).strip(".-")
    return topic[:60]


@dataclass(frozen=True, slots=True)
class Scored:
    """The distribution a piece of text was sampled from: the candidate words (the sampled one
    among them) and their weights after temperature and top_p. The candidates' texts are only
    built when asked for (logprobs), so plain generation pays nothing for them."""

    previous: str | None
    words: Sequence[str]
    weights: Sequence[float]
    strip: bool = False

    @staticmethod
    def uniform(texts: Sequence[str]) -> Scored:
        return Scored(None, texts, [1.0] * len(texts))

    def stripped(self) -> Scored:
        return Scored(self.previous, self.words, self.weights, strip=True)

    def candidates(self) -> list[tuple[str, float]]:
        """(candidate text as it would have been emitted, probability)."""
        total = sum(self.weights)
        texts = (_join(self.previous, word) for word in self.words)
        return [
            (text.lstrip() if self.strip else text, weight / total)
            for text, weight in zip(texts, self.weights, strict=True)
        ]


def _pick(
    rng: random.Random, options: Sequence[tuple[str, int]], temperature: float, top_p: float
) -> tuple[str, list[str], list[float]]:
    if temperature <= 0 or len(options) == 1:
        # Fully determined by the prompt: still varied, never a loop on the top choice.
        weights = [float(count) for _, count in options]
    else:
        # Relative to the most frequent option (options come most frequent first), so a tiny
        # temperature sends the others towards 0 instead of overflowing a float (1e-7 makes
        # the exponent 10 million).
        top = float(options[0][1])
        weights = [(count / top) ** (1.0 / temperature) for _, count in options]
    if top_p < 1.0:
        total = sum(weights)
        kept, mass = 0, 0.0
        for weight in weights:
            kept += 1
            mass += weight / total
            if mass >= top_p:
                break
        options, weights = options[:kept], weights[:kept]
    words = [word for word, _ in options]
    return rng.choices(words, weights=weights, k=1)[0], words, weights


def _join(previous: str | None, word: str) -> str:
    if previous is None:
        return word
    if word in {".", ",", "!", "?", ";", ":"} or previous in {"-"}:
        return word
    return " " + word


def generate_words(
    *, rng: random.Random, user_text: str, temperature: float, top_p: float
) -> Iterator[str]:
    """Text pieces (a word with its leading space, or punctuation), endlessly.

    The caller decides where to stop; `natural_length` suggests a reply length.
    """
    for word, _ in generate_scored_words(
        rng=rng, user_text=user_text, temperature=temperature, top_p=top_p
    ):
        yield word


def generate_scored_words(
    *, rng: random.Random, user_text: str, temperature: float, top_p: float, opener: bool = True
) -> Iterator[tuple[str, Scored | None]]:
    """`generate_words`, each piece with the distribution it was sampled from (None: it was
    the only possibility, as the opener's words after its first are)."""
    previous: str | None = None
    if opener:
        topic = topic_of(user_text)
        openers = _OPENERS if topic else _OPENERS_NO_TOPIC
        chosen = rng.choice(openers).format(topic=topic)
        firsts = [_WORD.findall(text.format(topic=topic))[0] for text in openers]
        for index, word in enumerate(_WORD.findall(chosen)):
            scored = Scored(None, firsts, [1.0] * len(firsts)) if index == 0 else None
            yield _join(previous, word), scored
            previous = word
    chain = _chain()
    while True:
        state = _START
        while True:
            options = chain.get(state)
            if not options:
                break
            word, words, weights = _pick(rng, options, temperature, top_p)
            yield _join(previous, word), Scored(previous, words, weights)
            previous = word
            state = (state[1], word)
            if word in _SENTENCE_END:
                break


def natural_length(rng: random.Random) -> int:
    """How many tokens the model 'wants' to say before finishing its sentence."""
    return rng.randint(24, 160)
