"""The results table: rows of (figure, baseline, Nebula, comparison, target, met), printed as
text and kept in the JSON next to the raw numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Row:
    figure: str
    baseline: str = ""
    nebula: str = ""
    comparison: str = ""
    target: str = ""
    met: bool | None = None  # None: no target

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


COLUMNS = ["Figure", "Baseline", "Nebula", "Nebula vs baseline", "Target", "Met"]


def _cells(rows: list[Row]) -> list[list[str]]:
    return [
        [row.figure, row.baseline, row.nebula, row.comparison, row.target,
         "" if row.met is None else ("yes" if row.met else "NO")]
        for row in rows
    ]  # fmt: skip


def render_table(columns: list[str], cells: list[list[str]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(text) for text in column) for column in zip(columns, *cells, strict=False)]

    def line(values: list[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))

    out = [line(columns), line(["-" * width for width in widths])]
    out += [line(values) for values in cells]
    return "\n".join(out)


def markdown_table(columns: list[str], cells: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(values) + " |" for values in cells]
    return "\n".join(out)


def render(rows: list[Row], header: list[str]) -> str:
    return "\n".join([*header, "", render_table(COLUMNS, _cells(rows))])


def markdown(rows: list[Row]) -> str:
    """The same table for docs/BENCHMARKS.md (a target missed in bold)."""
    cells = [[*values[:5], {"NO": "**no**"}.get(values[5], values[5])] for values in _cells(rows)]
    return markdown_table(COLUMNS, cells)
