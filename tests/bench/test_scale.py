"""Scenario 6's own logic (bench.scale, bench.report's tables): the layouts it runs, the
balancer it configures, and the table it prints."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench.report import Row, markdown, markdown_table, render_table
from bench.scale import (
    SCALE_COLUMNS,
    Layout,
    cores_busy,
    haproxy_config,
    parse_layouts,
    scale_cells,
)


def test_layouts_are_webs_by_workers_in_the_order_given():
    assert parse_layouts("1x1, 1x2,2 x 4") == [Layout(1, 1), Layout(1, 2), Layout(2, 4)]
    assert Layout(2, 1).label == "2 webs × 1 worker"
    assert Layout(1, 4).key == "1x4"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [("1x", "WEBSxWORKERS"), ("2-4", "WEBSxWORKERS"), ("0x1", "1 to 16"), ("1x40", "1 to 16"),
     ("1x1,1x1", "twice")],
)  # fmt: skip
def test_a_bad_layout_is_refused(spec, problem):
    with pytest.raises(ValueError, match=problem):
        parse_layouts(spec)


def test_haproxy_balances_tcp_over_every_web_process():
    config = haproxy_config(port=8320, backends=[8321, 8322])
    assert "  bind 127.0.0.1:8320" in config
    assert "  mode tcp" in config and "  balance leastconn" in config
    assert "  server web1 127.0.0.1:8321" in config
    assert "  server web2 127.0.0.1:8322" in config
    with pytest.raises(ValueError, match="no web process"):
        haproxy_config(port=8320, backends=[])


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_itself_accepts_the_config(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(port=8320, backends=[8321, 8322]))
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _result(label, rps, tps, broken=0):
    return {
        "label": label,
        "cpus": 2,
        "cores_busy": 1.5,
        "c50": {"rps": rps, "p50_ms": 10.0, "p99_ms": 20.0},
        "streaming": {
            "tokens_per_second": tps,
            "ttft_ms": {"p50": 30.0, "p99": 40.0},
            "streams_checked": 100,
            "streams_broken": broken,
        },
    }


def test_the_table_shows_each_layout_against_the_first():
    cells = scale_cells(
        [_result("1 web × 1 worker", 200, 10_000), _result("1 web × 2 workers", 300, 12_500, 1)]
    )
    assert [len(row) for row in cells] == [len(SCALE_COLUMNS)] * 2
    first, second = cells
    assert first[1:3] == ["200", "1.00×"] and first[6:9] == ["10,000", "1.00×", "100/100"]
    assert second[1:3] == ["300", "1.50×"] and second[6:9] == ["12,500", "1.25×", "99/100"]
    assert second[4] == "1.50 of 2" and second[5] == "30.00 / 40.00"
    assert scale_cells([]) == []


def test_cores_busy_is_cpu_time_over_wall_time():
    assert cores_busy(3.0, 2.0) == 1.5
    with pytest.raises(ValueError, match="no time"):
        cores_busy(1.0, 0)


def test_tables_render_as_text_and_markdown():
    text = render_table(["A", "Bee"], [["long cell", "x"]])
    assert text.splitlines() == ["A          Bee", "---------  ---", "long cell  x  "]
    assert markdown_table(["A", "B"], [["1", "2"]]) == "| A | B |\n|---|---|\n| 1 | 2 |"
    rows = [Row("f", "1", "2", "+1", "≤ 1", False), Row("g", met=True), Row("h")]
    assert markdown(rows).splitlines()[2:] == [
        "| f | 1 | 2 | +1 | ≤ 1 | **no** |",
        "| g |  |  |  |  | yes |",
        "| h |  |  |  |  |  |",
    ]
