"""A real sentence-embedding model on the worker (sentence-transformers on PyTorch, on the CPU).

Only the worker's runner imports this module, and the module itself imports torch and
sentence-transformers only when the first embedding job of the process arrives: loading them
takes seconds and hundreds of megabytes, which neither a web process nor a worker that never
serves an embedding model should pay. The weights come from the model's package in
site-packages (`models_registry.embedding_models`), never from a model hub: the hub's client is
switched off before it is imported.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from models_registry.embedding_models import EmbeddingModelSpec

# Tokens (padding included) in one forward pass: bounds a batch's memory (its attention scores
# peak near 100 MB: 32 inputs of the longest length); short inputs go many more to a pass.
BATCH_TOKENS = 32 * 256


def _offline() -> None:
    """No download, ever: the files are in site-packages. Set before huggingface_hub is
    imported (it reads these once, at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # The tokenizer is not used here (inputs arrive as token ids); its thread pool would only
    # warn after Celery forks.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class EmbeddingModel:
    """One model, loaded once per process on first use; `embed` is safe from many threads."""

    def __init__(self, spec: EmbeddingModelSpec, *, threads: int = 1) -> None:
        self.spec = spec
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                _offline()
                # Deferred on purpose (see the module's docstring): third-party, no cycle.
                import torch
                from sentence_transformers import SentenceTransformer

                # Process-wide; a worker process is this model's only user of torch.
                torch.set_num_threads(self.threads)

                model = SentenceTransformer(
                    str(self.spec.model_dir()), device="cpu", local_files_only=True
                )
                model.eval()
                self._model = model
        return self._model

    def embed(self, inputs: list[list[int]], *, dimensions: int | None = None) -> list[bytes]:
        """One unit-length vector per input (token ids without special tokens), as
        little-endian float32 bytes; with `dimensions`, the first that many components,
        normalized again (what OpenAI's `dimensions` does to a text-embedding-3 vector)."""
        import torch
        import torch.nn.functional as F

        model = self.load()
        spec = self.spec
        vectors: list[bytes] = [b""] * len(inputs)
        for chunk in _batches(inputs):
            width = max(len(inputs[i]) for i in chunk) + 2
            ids = torch.full((len(chunk), width), spec.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                tokens = [spec.cls_id, *inputs[index], spec.sep_id]
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[row, : len(tokens)] = 1
            features = {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
            }
            with torch.inference_mode():
                embedded = model(features)["sentence_embedding"]
                if dimensions is not None:
                    embedded = embedded[:, :dimensions]
                embedded = F.normalize(embedded, p=2, dim=1)
            rows = embedded.to(torch.float32).numpy().astype("<f4")
            for row, index in enumerate(chunk):
                vectors[index] = rows[row].tobytes()
        return vectors


def _batches(inputs: list[list[int]]) -> list[list[int]]:
    """Input indexes in batches of at most BATCH_TOKENS padded tokens; similar lengths batch
    together (sorted), so there is little padding to compute."""
    batches: list[list[int]] = []
    chunk: list[int] = []
    for index in sorted(range(len(inputs)), key=lambda i: len(inputs[i])):
        width = len(inputs[index]) + 2  # the longest so far: the batch's padded width
        if chunk and (len(chunk) + 1) * width > BATCH_TOKENS:
            batches.append(chunk)
            chunk = []
        chunk.append(index)
    if chunk:
        batches.append(chunk)
    return batches


_models: dict[str, EmbeddingModel] = {}
_models_lock = threading.Lock()


def embedding_engine(spec: EmbeddingModelSpec, *, threads: int = 1) -> EmbeddingModel:
    """This process's instance of the model (not loaded until it embeds), running on
    `threads` PyTorch threads."""
    with _models_lock:
        found = _models.get(spec.name)
        if found is None:
            found = _models[spec.name] = EmbeddingModel(spec, threads=threads)
    return found
