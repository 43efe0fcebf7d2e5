"""The worker's embedding model and the web side's tokenizer, without the live stack: the
worker embeds exactly what sentence-transformers would, offline, loading once per process."""

import math
import os
import struct
import subprocess
import sys

import pytest

from inference.embedding_tokens import tokenize_texts
from inference.engine.embeddings import BATCH_TOKENS, _batches, embedding_engine
from models_registry.embedding_models import ALL_MINILM_L6_V2

TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "Tax forms are due."]


def vectors(raw):
    return [struct.unpack(f"<{len(b) // 4}f", b) for b in raw]


@pytest.fixture(scope="module")
def engine():
    return embedding_engine(ALL_MINILM_L6_V2)


def test_the_worker_embeds_what_sentence_transformers_encodes(engine):
    got = vectors(engine.embed(tokenize_texts(ALL_MINILM_L6_V2, TEXTS)))
    reference = engine.load().encode(TEXTS, normalize_embeddings=True)
    for mine, theirs in zip(got, reference, strict=True):
        assert len(mine) == 384
        assert max(abs(a - float(b)) for a, b in zip(mine, theirs, strict=True)) < 1e-5
    # Loaded from site-packages with the hub switched off, once per process.
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert embedding_engine(ALL_MINILM_L6_V2) is engine and engine.load() is engine.load()


def test_dimensions_truncate_and_renormalize(engine):
    ids = tokenize_texts(ALL_MINILM_L6_V2, TEXTS[:1])
    (full,) = vectors(engine.embed(ids))
    (short,) = vectors(engine.embed(ids, dimensions=16))
    head_norm = math.sqrt(sum(x * x for x in full[:16]))
    assert len(short) == 16
    assert math.sqrt(sum(x * x for x in short)) == pytest.approx(1, abs=1e-6)
    assert list(short) == pytest.approx([x / head_norm for x in full[:16]], abs=1e-6)


def test_a_batch_embeds_each_input_as_alone(engine):
    # Padding a short input next to a long one must not change its vector.
    long = "word " * 200
    ids = tokenize_texts(ALL_MINILM_L6_V2, [TEXTS[0], long])
    together = vectors(engine.embed(ids))
    alone = vectors(engine.embed(ids[:1]))
    assert list(together[0]) == pytest.approx(list(alone[0]), abs=1e-5)


def test_the_tokenizer_counts_without_special_tokens_and_never_truncates():
    (ids,) = tokenize_texts(ALL_MINILM_L6_V2, ["hello world"])
    assert ids == [7592, 2088]
    (long,) = tokenize_texts(ALL_MINILM_L6_V2, ["word " * 1000])
    assert len(long) == 1000


def test_the_web_side_never_imports_torch():
    # The web process's whole request path, imported in a fresh interpreter.
    code = (
        "import django, sys; django.setup(); import nebula_site.urls, inference.views;"
        "import inference.embeddings, inference.runner;"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_batches_hold_many_short_inputs_or_few_long_ones():
    short = _batches([[7]] * 2048)
    assert sum(map(len, short)) == 2048 and len(short) == 1  # 2048 × 3 padded tokens fit
    mixed = [[1] * 254] * 40 + [[1]] * 5
    batches = _batches(mixed)
    assert sorted(i for batch in batches for i in batch) == list(range(45))
    for batch in batches:
        assert len(batch) * (max(len(mixed[i]) for i in batch) + 2) <= BATCH_TOKENS
    assert [len(b) for b in batches] == [32, 13]  # the 5 short ones pad to the long ones
