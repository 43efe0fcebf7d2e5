"""Scenario 6, scale-out: the same load on layouts of 1-2 web processes and 1-4 workers, all
behind one HAProxy (TCP, least connections), to show how throughput and time to first token
change with processes. The logic here is pure (layouts, HAProxy's config, the table); running
it is in `bench.__main__`.

On the 2-core development machine every layout shares the same two cores with Redis, HAProxy
and the load generators, so more processes cannot mean more CPU: the table says how much of
the two cores each layout kept busy (`cores busy`), which bounds what any layout can gain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.report import fmt
from bench.stats import ratio

DEFAULT_LAYOUTS = "1x1,1x2,1x4,2x2,2x4"
_LAYOUT = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
MAX_PROCESSES = 16  # per kind: a typo (1x40) should not fork forty servers


@dataclass(frozen=True)
class Layout:
    webs: int
    workers: int

    @property
    def label(self) -> str:
        web = "web" if self.webs == 1 else "webs"
        worker = "worker" if self.workers == 1 else "workers"
        return f"{self.webs} {web} × {self.workers} {worker}"

    @property
    def key(self) -> str:
        return f"{self.webs}x{self.workers}"


def parse_layouts(spec: str) -> list[Layout]:
    """`WEBSxWORKERS[,...]`, e.g. `1x1,1x2,2x4`: in order, each once."""
    layouts: list[Layout] = []
    for part in spec.split(","):
        match = _LAYOUT.match(part)
        if match is None:
            raise ValueError(f"a layout is WEBSxWORKERS (e.g. 2x4), not {part.strip()!r}")
        webs, workers = int(match.group(1)), int(match.group(2))
        if not (1 <= webs <= MAX_PROCESSES and 1 <= workers <= MAX_PROCESSES):
            raise ValueError(f"{part.strip()}: 1 to {MAX_PROCESSES} of each")
        layout = Layout(webs, workers)
        if layout in layouts:
            raise ValueError(f"{layout.key} is listed twice")
        layouts.append(layout)
    return layouts


def haproxy_config(*, port: int, backends: list[int], maxconn: int = 4096) -> str:
    """A plain TCP balancer on 127.0.0.1:`port` in front of the web processes' ports.

    TCP mode (no HTTP parsing): the cheapest hop there is. `leastconn`: each new connection
    goes to the web process with the fewest open ones, so the benchmark's long-lived keep-alive
    connections end up evenly spread whatever order they open and close in."""
    if not backends:
        raise ValueError("no web process to balance")
    servers = [f"  server web{i} 127.0.0.1:{p}" for i, p in enumerate(backends, start=1)]
    return "\n".join(
        [
            "global",
            f"  maxconn {maxconn}",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 120s",
            "  timeout server 120s",
            "frontend nebula",
            f"  bind 127.0.0.1:{port}",
            "  default_backend webs",
            "backend webs",
            "  balance leastconn",
            *servers,
            "",
        ]
    )


SCALE_COLUMNS = [
    "Layout (behind HAProxy)",
    "c=50 req/s",
    "vs first",
    "c=50 p50 / p99 (ms)",
    "cores busy",
    "TTFT p50 / p99 (ms)",
    "tokens/s",
    "vs first",
    "streams whole",
]


def scale_cells(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per layout; throughput and tokens/s also as a multiple of the first layout's."""
    if not results:
        return []
    first = results[0]
    cells = []
    for result in results:
        c50, streams = result["c50"], result["streaming"]
        rps_x = ratio(c50["rps"], first["c50"]["rps"])
        tps_x = ratio(streams["tokens_per_second"], first["streaming"]["tokens_per_second"])
        ttft = streams["ttft_ms"]
        cells.append(
            [
                result["label"],
                fmt(c50["rps"], 0),
                "" if rps_x is None else f"{rps_x:.2f}×",
                f"{fmt(c50['p50_ms'])} / {fmt(c50['p99_ms'])}",
                f"{result['cores_busy']:.2f} of {result['cpus']}",
                f"{fmt(ttft.get('p50'))} / {fmt(ttft.get('p99'))}",
                fmt(streams["tokens_per_second"], 0),
                "" if tps_x is None else f"{tps_x:.2f}×",
                f"{streams['streams_checked'] - streams['streams_broken']}/"
                f"{streams['streams_checked']}",
            ]
        )
    return cells


def cores_busy(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU seconds the stack's processes used per second of wall time: how many cores they
    kept busy (at most the machine's count, less what Redis and the load generator took)."""
    if wall_seconds <= 0:
        raise ValueError("no time passed")
    return cpu_seconds / wall_seconds
