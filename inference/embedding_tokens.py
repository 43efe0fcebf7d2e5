"""An embedding model's own tokenizer on the web side: the token counts that limits, usage and
billing use are the model's, not an estimate.

`tokenizers` (the Rust library sentence-transformers itself tokenizes with) reads the model's
`tokenizer.json` from its package in milliseconds and needs no torch, so a web process never
loads the model's weights. Inputs travel to the worker as token ids: the model then embeds
exactly the tokens that were counted.
"""

from __future__ import annotations

import threading

from tokenizers import Tokenizer

from models_registry.embedding_models import EmbeddingModelSpec

_tokenizers: dict[str, Tokenizer] = {}
_lock = threading.Lock()


def embedding_tokenizer(spec: EmbeddingModelSpec) -> Tokenizer:
    """The model's tokenizer, loaded once per process, with no padding or truncation (Nebula
    refuses an input that is too long rather than cutting it) and no special tokens (the worker
    adds [CLS] and [SEP])."""
    found = _tokenizers.get(spec.name)
    if found is not None:
        return found
    with _lock:
        found = _tokenizers.get(spec.name)
        if found is None:
            found = Tokenizer.from_file(str(spec.model_dir() / "tokenizer.json"))
            found.no_padding()
            found.no_truncation()
            _tokenizers[spec.name] = found
    return found


def tokenize_texts(spec: EmbeddingModelSpec, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, without special tokens (one batch call: the Rust side runs it in
    parallel)."""
    encodings = embedding_tokenizer(spec).encode_batch(texts, add_special_tokens=False)
    return [encoding.ids for encoding in encodings]
