"""Two systems measured in the same run next to one baseline: the table the previous commit
(`--compare REV`) and the peer proxy (LiteLLM, scenario 8) are reported in. Pure logic: the
figures, the differences and ratios, the cells; no I/O.

Each side carries its own baseline figure where it has one: the previous commit's stack serves
the baseline view from its own processes, measured minutes after this commit's, so its added
latency is taken against that, not against a baseline from another stretch of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.report import fmt
from bench.stats import ratio

# "ms": a time, lower is better; shown as a difference (and a ratio between the two sides).
# "rate": higher is better; shown as a share of the baseline and a ratio between the sides.
# "text": a count or a check, shown as it is.
Kind = Literal["ms", "rate", "text"]


@dataclass(frozen=True)
class Side:
    """One side's figure and, where there is one, the baseline it is compared with."""

    value: float | str | None
    baseline: float | None = None


@dataclass(frozen=True)
class Figure:
    label: str
    kind: Kind
    first: Side
    second: Side
    digits: int = 2

    def cells(self) -> list[str]:
        return [
            self.label,
            self._number(self.first.baseline),
            self._show(self.first.value),
            self._show(self.second.value),
            self._against_baseline(self.first),
            self._against_baseline(self.second, other_baseline=self.first.baseline),
            self._between(),
        ]

    def _number(self, value: float | None) -> str:
        return "" if value is None else fmt(value, self.digits)

    def _show(self, value: float | str | None) -> str:
        if isinstance(value, str):
            return value
        return "n/a" if value is None else fmt(value, self.digits)

    def _against_baseline(self, side: Side, other_baseline: float | None = None) -> str:
        value, base = side.value, side.baseline
        if self.kind == "text" or isinstance(value, str) or value is None or base is None:
            return ""
        if self.kind == "ms":
            text = f"{value - base:+.2f} ms"
        else:
            share = ratio(value, base)
            text = "" if share is None else f"{share * 100:.1f}%"
        # A baseline of its own (the previous commit's stack) is shown where it differs.
        if other_baseline is not None and base != other_baseline and text:
            text += f" (its baseline {fmt(base, self.digits)})"
        return text

    def _between(self) -> str:
        first, second = self.first.value, self.second.value
        if self.kind == "text" or not isinstance(first, float | int):
            return ""
        if not isinstance(second, float | int):
            return ""
        times = ratio(first, second)
        if self.kind == "ms":
            return f"{first - second:+.2f} ms" + ("" if times is None else f" ({times:.2f}×)")
        return "" if times is None else f"{times:.2f}×"


def columns(first: str, second: str, baseline: str = "Baseline") -> list[str]:
    return [
        "Figure",
        baseline,
        first,
        second,
        f"{first} vs baseline",
        f"{second} vs baseline",
        f"{first} vs {second}",
    ]


def cells(figures: list[Figure]) -> list[list[str]]:
    return [figure.cells() for figure in figures]


def dig(data: dict[str, Any] | None, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where any step is missing."""
    here: Any = data
    for step in path:
        if not isinstance(here, dict) or step not in here:
            return None
        here = here[step]
    return here


# --- this commit against the previous one: scenarios 1-3 ----------------------------------


def at(*path: str) -> Callable[[dict[str, Any]], Any]:
    """A reader of one figure in a run's results."""

    def read(results: dict[str, Any]) -> Any:
        return dig(results, *path)

    return read


def _pair(
    label: str,
    kind: Kind,
    now: dict[str, Any],
    then: dict[str, Any],
    value: Callable[[dict[str, Any]], Any],
    baseline: Callable[[dict[str, Any]], Any] | None = None,
    digits: int = 2,
) -> Figure:
    def side(results: dict[str, Any]) -> Side:
        return Side(value(results), baseline(results) if baseline else None)

    return Figure(label, kind, side(now), side(then), digits)


def previous_figures(now: dict[str, Any], then: dict[str, Any]) -> list[Figure]:
    """Scenarios 1-3 of this commit (`now`) and of the previous one (`then`), for the figures
    both have."""
    figures: list[Figure] = []
    if "c1" in now and "c1" in then:
        for p in ("p50", "p99"):
            figures.append(
                _pair(f"1. c=1 latency {p} (ms)", "ms", now, then,
                      at("c1", "nebula", p),
                      at("c1", "baseline", p))
            )  # fmt: skip
    if "c50" in now and "c50" in then:
        figures.append(
            _pair("2. c=50 requests/s", "rate", now, then,
                  at("c50", "nebula", "rps"),
                  at("c50", "baseline", "rps"), digits=0)
        )  # fmt: skip
    if "streaming" in now and "streaming" in then:
        streams = dig(now, "streaming", "streams")
        for p in ("p50", "p99"):
            figures.append(
                _pair(f"3. TTFT {p}, {streams} at once (ms)", "ms", now, then,
                      at("streaming", "ttft_ms", p),
                      at("streaming", "baseline_ttfb_ms", p))
            )  # fmt: skip
        figures += [
            _pair("3. TTFT p50, one stream at a time (ms)", "ms", now, then,
                  at("streaming", "idle_nebula_ttft_ms", "p50"),
                  at("streaming", "idle_baseline_ttfb_ms", "p50")),
            _pair("3. inter-chunk p99 during the bursts (ms)", "ms", now, then,
                  at("streaming", "inter_chunk_ms", "p99")),
            _pair("3. tokens/s delivered (aggregate)", "rate", now, then,
                  at("streaming", "tokens_per_second"), digits=0),
            _pair("3. streams whole and in order", "text", now, then, _whole),
        ]  # fmt: skip
    return figures


def _whole(results: dict[str, Any]) -> str | None:
    checked = dig(results, "streaming", "streams_checked")
    broken = dig(results, "streaming", "streams_broken")
    return None if checked is None or broken is None else f"{checked - broken}/{checked}"


# --- Nebula against the peer proxy: scenario 8 --------------------------------------------


def peer_figures(peer: dict[str, Any]) -> list[Figure]:
    """Scenario 8's results: the engine called directly (the baseline), through Nebula and
    through LiteLLM, on the same requests."""
    sides = peer["sides"]

    def fig(label: str, kind: Kind, *path: str, digits: int = 2) -> Figure:
        base = dig(sides, "direct", *path)
        return Figure(
            label,
            kind,
            Side(dig(sides, "nebula", *path), base),
            Side(dig(sides, "litellm", *path), base),
            digits,
        )

    streams, tokens = peer["streams"], peer["stream_tokens"]
    return [
        fig(f"8. c=1, {peer['tokens']} tokens: latency p50 (ms)", "ms", "c1", "p50"),
        fig("8. c=1: latency p99 (ms)", "ms", "c1", "p99"),
        fig("8. c=50 requests/s", "rate", "c50", "rps", digits=0),
        fig("8. c=50 latency p50 (ms)", "ms", "c50", "p50_ms"),
        fig(f"8. TTFT p50, {streams} streams at once (ms)", "ms", "burst_ttft_ms", "p50"),
        fig(f"8. TTFT p99, {streams} streams at once (ms)", "ms", "burst_ttft_ms", "p99"),
        fig(f"8. tokens/s, {streams} streams of {tokens} tokens", "rate", "tokens_per_second",
            digits=0),
        Figure("8. failed requests / broken streams", "text",
               Side(_failures(sides.get("nebula"))), Side(_failures(sides.get("litellm")))),
    ]  # fmt: skip


def _failures(side: dict[str, Any] | None) -> str | None:
    if side is None:
        return None
    return f"{side.get('failed', 0)} / {side.get('streams_broken', 0)}"
