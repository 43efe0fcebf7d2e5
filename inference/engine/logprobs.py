"""Per-token log probabilities from the simulated sampler, in OpenAI's `logprobs.content` shape.

The sampler picks whole words (or JSON pieces) from a distribution (`textgen.Scored`); a word
can be several tokens. A token's probability is the sampler's, marginalised over the
candidates that agree with the tokens before it in the same piece: the first token of a word
gets the summed probability of every candidate word starting with that token, the next token
the share of those that continue with it, and so on. A piece with no alternative (None) has
probability 1 at every token. The alternatives (`top_logprobs`) are the other tokens the
sampler could have produced at that position, most likely first.
"""

from __future__ import annotations

import math
from typing import Any

from inference.engine.textgen import Scored
from inference.engine.tokenizer import tokenize

TokenLogprob = dict[str, Any]  # OpenAI's ChatCompletionTokenLogprob


def _alternative(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def piece_logprobs(text: str, scored: Scored | None, top: int) -> list[tuple[str, TokenLogprob]]:
    """(token, its logprob entry) for every token of `text`, a piece sampled from `scored`."""
    tokens = tokenize(text)
    if scored is None:
        return [
            (token, {**_alternative(token, 0.0), "top_logprobs": [_alternative(token, 0.0)][:top]})
            for token in tokens
        ]
    live = [(tokenize(candidate), p) for candidate, p in scored.candidates() if p > 0]
    entries: list[tuple[str, TokenLogprob]] = []
    for position, token in enumerate(tokens):
        mass: dict[str, float] = {}
        for candidate, p in live:
            if len(candidate) > position:
                mass[candidate[position]] = mass.get(candidate[position], 0.0) + p
        total = sum(mass.values())
        chosen = mass.get(token, 0.0)
        # The sampled token is always a candidate's; guard the log anyway (OpenAI's floor).
        logprob = math.log(chosen / total) if chosen > 0 and total > 0 else -9999.0
        # Most likely first; among equals, the sampled token first.
        ranked = sorted(mass.items(), key=lambda item: (-item[1], item[0] != token, item[0]))
        ranked = ranked[:top]
        entries.append(
            (
                token,
                {
                    **_alternative(token, logprob),
                    "top_logprobs": [_alternative(t, math.log(m / total)) for t, m in ranked],
                },
            )
        )
        live = [(c, p) for c, p in live if len(c) > position and c[position] == token]
    return entries


def document_logprobs(
    text: str, pieces: list[tuple[str, TokenLogprob | None]], top: int
) -> list[tuple[str, TokenLogprob | None]]:
    """Entries for `text`'s own tokens, given the entries of the tokens of the pieces it was
    generated as (`piece_logprobs`, in order). Where the tokenizer splits the whole text as it
    split the pieces (words), a token keeps its piece's entry; a token it merges from several
    pieces (JSON punctuation: `",` from `"` and `,`) has their summed logprob (the product of
    their probabilities) and no other alternative."""
    entries: list[tuple[str, TokenLogprob | None]] = []
    starts: list[tuple[int, str, TokenLogprob | None]] = []
    offset = 0
    for token, entry in pieces:
        starts.append((offset, token, entry))
        offset += len(token)
    index, position = 0, 0
    for token in tokenize(text):
        end = position + len(token)
        covered = []
        while index < len(starts) and starts[index][0] < end:
            covered.append(starts[index])
            index += 1
        if len(covered) == 1 and covered[0][0] == position and covered[0][1] == token:
            entries.append((token, covered[0][2]))
        else:
            logprob = sum(entry["logprob"] for _, _, entry in covered if entry is not None)
            alternative = _alternative(token, logprob)
            entries.append((token, {**alternative, "top_logprobs": [alternative][:top]}))
        position = end
    return entries
