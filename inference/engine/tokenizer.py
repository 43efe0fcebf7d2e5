"""Nebula's tokenizer: one function counts prompt and completion tokens alike.

There is no internet at run time, so no BPE vocabulary can be downloaded. Instead we split text
the way GPT-2-style tokenizers pre-split it (a word with its leading space, runs of digits of up
to three, punctuation runs, whitespace), then cut words longer than six characters into pieces
of four, which is about where BPE vocabularies stop having whole-word entries. On English prose
this lands within roughly 15% of OpenAI's cl100k counts, and it is exactly additive over the
pieces the text generator emits, so a streamed completion's token count equals the number of
tokens streamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_PRETOKEN = re.compile(
    r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
)
_WHOLE_WORD_MAX = 6
_PIECE = 4


def iter_tokens(text: str) -> Iterator[str]:
    for match in _PRETOKEN.finditer(text):
        piece = match.group(0)
        if len(piece) <= _WHOLE_WORD_MAX:
            yield piece
            continue
        for start in range(0, len(piece), _PIECE):
            yield piece[start : start + _PIECE]


def tokenize(text: str) -> list[str]:
    return list(iter_tokens(text))


def count_tokens(text: str) -> int:
    return sum(1 for _ in iter_tokens(text))


# Chat formatting overhead, as in OpenAI's accounting: each message is wrapped in role and
# delimiter tokens, and the reply is primed with a few more.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def count_chat_tokens(messages: list[tuple[str, str, str | None]]) -> int:
    """Prompt tokens of (role, text, name) messages."""
    total = REPLY_PRIMING_TOKENS
    for role, text, name in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(role) + count_tokens(text)
        if name:
            total += TOKENS_PER_NAME + count_tokens(name)
    return total
