"""The simulated engine, without Django or Celery."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.engine import (
    Generation,
    GenerationRequest,
    HardwareSpec,
    count_chat_tokens,
    count_tokens,
    generate_all,
)
from inference.engine.tokenizer import tokenize


def request(**overrides):
    options = {
        "model": "nebula-7b",
        "prompt_text": "user: How do GPUs serve language models?",
        "user_text": "How do GPUs serve language models?",
        "prompt_tokens": 12,
        "context_length": 8192,
        "seed": 7,
        "temperature": 0.9,
    }
    options.update(overrides)
    return GenerationRequest(**options)


def test_the_same_seed_gives_the_same_text():
    assert generate_all(request()).texts() == generate_all(request()).texts()


def test_a_different_seed_gives_different_text():
    texts = {generate_all(request(seed=seed)).texts()[0] for seed in range(5)}
    assert len(texts) == 5


def test_temperature_zero_is_deterministic_even_without_a_seed():
    first = generate_all(request(seed=None, temperature=0)).texts()
    assert first == generate_all(request(seed=None, temperature=0)).texts()


@pytest.mark.parametrize("temperature", [1e-7, 1e-3, 0.01])
def test_a_tiny_temperature_samples_almost_greedily_instead_of_failing(temperature):
    # Found by the API fuzzer: count ** (1 / 1e-7) overflowed a float and the job failed.
    generation = generate_all(request(temperature=temperature, max_tokens=64))
    assert generation.texts()[0].strip()
    assert generation.finish_reasons() in (["stop"], ["length"])


def test_without_a_seed_replies_vary():
    texts = {generate_all(request(seed=None)).texts()[0] for _ in range(5)}
    assert len(texts) > 1


def test_replies_read_like_an_assistant_answering_the_question():
    text = generate_all(request()).texts()[0]
    assert "GPUs" in text.split(".")[0]  # the opening sentence picks up the topic
    assert text[0].isupper() and text.endswith((".", "!", "?"))
    words = text.split()
    assert len(words) > 10
    assert all(word.strip(".,;:!?'-").isalnum() or "-" in word or "'" in word for word in words)


def test_max_tokens_caps_the_reply_with_finish_reason_length():
    generation = generate_all(request(max_tokens=5))
    assert generation.finish_reasons() == ["length"]
    assert generation.completion_tokens == 5
    assert count_tokens(generation.texts()[0]) == 5


def test_a_natural_reply_ends_with_stop_and_counts_its_tokens():
    generation = generate_all(request())
    assert generation.finish_reasons() == ["stop"]
    assert generation.completion_tokens == count_tokens(generation.texts()[0])


def test_the_context_window_bounds_the_reply():
    generation = generate_all(request(prompt_tokens=8190, max_tokens=None))
    assert generation.finish_reasons() == ["length"]
    assert generation.completion_tokens == 2


@pytest.mark.parametrize("stop", [".", " the", ["zzz", ","]])
def test_stop_sequences_end_the_reply_before_the_stop_text(stop):
    stops = tuple(stop) if isinstance(stop, list) else (stop,)
    full = generate_all(request()).texts()[0]
    generation = generate_all(request(stop=stops))
    text = generation.texts()[0]
    assert generation.finish_reasons() == ["stop"]
    assert all(s not in text for s in stops)
    assert full.startswith(text)
    assert any(full[len(text) :].startswith(s) for s in stops)


def test_streamed_deltas_never_contain_part_of_a_stop_sequence():
    stops = (" the same",)
    generation = Generation(request(stop=stops, seed=3))
    streamed = "".join(text for step in generation.steps() for _, text in step.deltas)
    assert streamed == generation.texts()[0]
    assert " the same" not in streamed


def test_n_gives_independent_choices_that_decode_together():
    generation = generate_all(request(n=3, max_tokens=40))
    texts = generation.texts()
    assert len(texts) == 3 and len(set(texts)) == 3
    assert generation.completion_tokens == 120
    assert generation.finish_reasons() == ["length"] * 3
    assert texts[0] == generate_all(request(max_tokens=40)).texts()[0]


def test_each_step_advances_every_unfinished_choice_by_one_token():
    generation = Generation(request(n=2, max_tokens=3))
    steps = list(generation.steps())
    assert len(steps) == 3
    assert steps[-1].finished == ((0, "length"), (1, "length"))


H100 = {"gpus": 1, "bandwidth_tb_s": 3.35, "bf16_tflops": 989}


def test_a_bigger_model_is_slower_on_the_same_gpu():
    small = HardwareSpec(parameters=7_000_000_000, **H100)
    big = HardwareSpec(parameters=13_000_000_000, **H100)
    assert big.prefill_seconds(100) > small.prefill_seconds(100)
    assert big.decode_seconds_per_token() > small.decode_seconds_per_token()


def test_timing_follows_the_hardware_figures():
    spec = HardwareSpec(parameters=7_000_000_000, **H100)
    # 14 GB of weights streamed at 70% of 3.35 TB/s per token; 2·P·tokens FLOPs at 50% of peak.
    assert spec.decode_seconds_per_token() == pytest.approx(14e9 / (3.35e12 * 0.7))
    assert spec.prefill_seconds(1000) == pytest.approx(2 * 7e9 * 1000 / (989e12 * 0.5))
    two_gpus = HardwareSpec(parameters=7_000_000_000, **{**H100, "gpus": 2})
    assert two_gpus.decode_seconds_per_token() == pytest.approx(spec.decode_seconds_per_token() / 2)


def test_the_tokenizer_splits_like_a_bpe_pretokenizer():
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert tokenize("internationalization") == ["inte", "rnat", "iona", "liza", "tion"]
    assert tokenize(" 12345") == [" 123", "45"]
    assert count_tokens("") == 0


def test_chat_prompts_count_message_overhead():
    one = count_chat_tokens([("user", "hi", None)])
    two = count_chat_tokens([("system", "be brief", None), ("user", "hi", None)])
    assert one == 3 + 4 + 1 + 1
    assert two > one


def test_ignore_eos_and_min_tokens_keep_generating_like_vllm():
    natural = generate_all(request()).completion_tokens
    assert generate_all(request(ignore_eos=True, max_tokens=500)).completion_tokens == 500
    longer = generate_all(request(min_tokens=natural + 50)).completion_tokens
    assert longer >= natural + 50


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    temperature=st.floats(min_value=0, max_value=2),
    top_p=st.floats(min_value=0, max_value=1),
    n=st.integers(min_value=1, max_value=4),
    max_tokens=st.integers(min_value=1, max_value=48),
    min_tokens=st.integers(min_value=0, max_value=64),
    ignore_eos=st.booleans(),
    stop=st.lists(st.text(min_size=1, max_size=6), max_size=4),
    seed=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    user_text=st.text(max_size=40),
)
def test_every_accepted_sampling_setting_generates_to_the_end(
    temperature, top_p, n, max_tokens, min_tokens, ignore_eos, stop, seed, user_text
):
    generation = generate_all(
        request(
            temperature=temperature,
            top_p=top_p,
            n=n,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            ignore_eos=ignore_eos,
            stop=tuple(stop),
            seed=seed,
            user_text=user_text,
            prompt_text=f"user: {user_text}",
        )
    )
    assert all(reason in {"stop", "length"} for reason in generation.finish_reasons())
    assert generation.completion_tokens <= n * max_tokens
    for text in generation.texts():
        assert not any(sequence in text for sequence in stop)
