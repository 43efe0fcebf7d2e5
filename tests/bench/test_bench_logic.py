"""The benchmark's own arithmetic and parsing: if these break, its table silently lies."""

from __future__ import annotations

import json

import pytest

from bench.http1 import ChunkedDecoder
from bench.sse import DONE, SSEParser, check_stream
from bench.stats import growth, percentile, ratio, summarize
from bench.wrk import lua_script, parse_output
from inference.engine import count_tokens


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4, 5], 0) == 1
    assert percentile([1, 2, 3, 4, 5], 100) == 5
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_refuses_an_empty_sample() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_summary_ratio_and_growth() -> None:
    summary = summarize([1.0, 2.0, 3.0])
    assert summary["n"] == 3
    assert summary["p50"] == 2.0
    assert summary["max"] == 3.0
    assert summarize([]) == {"n": 0}
    assert ratio(35, 100) == 0.35
    assert ratio(1, 0) is None
    assert ratio(None, 1) is None
    assert growth(100, 110) == pytest.approx(0.10)


def _chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> str:
    delta: dict[str, object] = {}
    if role:
        delta = {"role": "assistant", "content": ""}
    elif content is not None:
        delta = {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "chatcmpl-1", "choices": [choice], "usage": None})


def _usage(tokens: int) -> str:
    return json.dumps({"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": tokens}})


def _stream(text_parts: list[str]) -> list[str]:
    text = "".join(text_parts)
    return [
        _chunk(role=True),
        *(_chunk(part) for part in text_parts),
        _chunk(finish="length"),
        _usage(count_tokens(text)),
        DONE,
    ]


def test_a_whole_stream_passes() -> None:
    parts = ["Happy to", " help with", " benchmarks."]
    check = check_stream(
        _stream(parts),
        count_tokens=count_tokens,
        expected_text="".join(parts),
        expected_finish="length",
    )
    assert check.ok, check.problems
    assert check.text == "Happy to help with benchmarks."


def test_a_lost_token_is_caught_even_when_usage_agrees() -> None:
    events = _stream(["Happy to", " benchmarks."])  # " help with" never arrived
    check = check_stream(
        events, count_tokens=count_tokens, expected_text="Happy to help with benchmarks."
    )
    assert not check.ok
    assert any("differs" in problem for problem in check.problems)


def test_reordered_tokens_are_caught() -> None:
    events = _stream([" help with", "Happy to", " benchmarks."])
    check = check_stream(
        events, count_tokens=count_tokens, expected_text="Happy to help with benchmarks."
    )
    assert any("differs" in problem for problem in check.problems)


def test_usage_that_disagrees_with_the_text_is_caught() -> None:
    events = _stream(["Happy to help."])
    events[-2] = _usage(99)
    check = check_stream(events, count_tokens=count_tokens)
    assert any("usage says 99" in problem for problem in check.problems)


def test_a_stream_without_done_or_finish_is_caught() -> None:
    check = check_stream([_chunk(role=True), _chunk("Hi")], count_tokens=count_tokens)
    assert "the stream does not end with [DONE]" in check.problems
    assert "no finish chunk" in check.problems
    assert "no usage chunk" in check.problems


def test_sse_parser_handles_any_split_and_skips_comments() -> None:
    raw = b': keep-alive\n\ndata: {"a": "\xc3\xa9"}\n\ndata: [DONE]\n\n'
    for cut in range(len(raw)):
        parser = SSEParser()
        events = parser.feed(raw[:cut]) + parser.feed(raw[cut:])
        assert events == ['{"a": "é"}', "[DONE]"], cut


def test_chunked_decoder_handles_any_split() -> None:
    raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    for cut in range(len(raw)):
        decoder = ChunkedDecoder()
        body = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
        assert body == b"hello, world", cut
        assert decoder.done


def test_wrk_summary_is_read_from_the_scripts_json_line() -> None:
    output = (
        "Running 10s test @ http://127.0.0.1:8200/bench/baseline\n"
        'WRK_JSON {"requests":5000,"duration_us":10000000,"bytes":1,"mean_us":2000.0,'
        '"max_us":9000,"connect":0,"read":1,"write":0,"status":2,"timeout":0,'
        '"percentiles_us":{"50":1500.0,"90":2500.0,"99":8000.0,"99.9":8900.0}}\n'
    )
    result = parse_output(output)
    assert result.rps == 500
    assert result.errors == 3
    assert result.p50_ms == 1.5
    assert result.p99_ms == 8.0


def test_wrk_script_carries_method_headers_and_body() -> None:
    script = lua_script(method="POST", headers={"Authorization": "Bearer x"}, body='{"a":1}')
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer x"' in script
    assert 'wrk.body = "{\\"a\\":1}"' in script
    assert "done = function" in script


def test_a_streams_request_id_is_read_back_from_its_chunk_id() -> None:
    from bench.__main__ import stream_request_id
    from bench.streams import StreamResult
    from inference.responses import completion_id

    chunk = json.dumps({"id": completion_id("req_0123abc"), "choices": []})
    assert stream_request_id(StreamResult(events=['{"error": {}}', chunk])) == "req_0123abc"
    assert stream_request_id(StreamResult(events=["[DONE]", "not json"])) is None


def test_a_burst_of_shorter_streams_says_its_length_in_the_table() -> None:
    from bench.__main__ import STREAM_TOKENS, rows_streaming

    def burst(tokens: int) -> dict[str, object]:
        timing = {"p50": 10.0, "p99": 20.0}
        return {
            "streams": 100,
            "tokens_per_stream": tokens,
            "baseline_ttfb_ms": timing,
            "ttft_ms": timing,
            "idle_baseline_ttfb_ms": timing,
            "idle_nebula_ttft_ms": timing,
            "inter_chunk_ms": timing,
            "tokens_per_second": 50_000.0,
            "streams_checked": 500,
            "streams_broken": 0,
        }

    default = [row.figure for row in rows_streaming(burst(STREAM_TOKENS))]
    short = [row.figure for row in rows_streaming(burst(1))]
    assert "3. TTFT p50, 100 at once (ms; baseline: first byte)" in default
    assert "3. TTFT p50, 100 at once of 1 token (ms; baseline: first byte)" in short


def test_a_burst_is_checked_stream_by_stream_against_its_length() -> None:
    from bench.__main__ import check_streams
    from bench.streams import StreamResult

    parts = ["Happy to", " help with", " benchmarks."]
    text = "".join(parts)
    length = count_tokens(text)
    whole = StreamResult(status=200, events=_stream(parts), started=1.0, first_token=1.01)
    cut = StreamResult(status=200, events=_stream(parts[:2]), started=1.0, first_token=1.02)

    checked = check_streams([whole, whole, cut], [text, text, text], stream_tokens=length)
    assert (checked["streams_checked"], checked["streams_broken"]) == (3, 1)
    assert checked["tokens_delivered"] == 2 * length + count_tokens("".join(parts[:2]))
    assert checked["ttft_ms"]["n"] == 3

    # Every stream is held to the length asked for, not to a running total.
    assert check_streams([whole] * 3, [text] * 3, stream_tokens=length)["streams_broken"] == 0
    assert check_streams([whole], [text], stream_tokens=length + 1)["streams_broken"] == 1
