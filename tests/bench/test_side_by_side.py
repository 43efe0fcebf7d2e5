"""The previous commit (`--compare`) and the peer proxy (scenario 8) in the same run: the
table's arithmetic, LiteLLM's config and environment, and what happens when either cannot be
had. Quick: nothing here installs or starts LiteLLM or a stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from bench import compare, peer
from bench.__main__ import peer_scenario, peer_table, previous_scenarios, previous_table
from bench.http1 import Connection
from bench.sidebyside import Figure, Side, cells, columns, peer_figures, previous_figures
from bench.stack import Stack, free_port, healthy


def _run(
    c1: tuple[float, float], rps: tuple[float, float], ttft: float, tps: float
) -> dict[str, Any]:
    """A run's results for scenarios 1-3: (baseline, Nebula) pairs where there are two."""
    return {
        "c1": {
            "baseline": {"p50": c1[0], "p99": c1[0] * 2},
            "nebula": {"p50": c1[1], "p99": c1[1] * 2},
        },
        "c50": {"baseline": {"rps": rps[0]}, "nebula": {"rps": rps[1]}},
        "streaming": {
            "streams": 100,
            "ttft_ms": {"p50": ttft, "p99": ttft * 2},
            "baseline_ttfb_ms": {"p50": 100.0, "p99": 200.0},
            "idle_nebula_ttft_ms": {"p50": 3.0},
            "idle_baseline_ttfb_ms": {"p50": 1.5},
            "inter_chunk_ms": {"p99": 12.0},
            "tokens_per_second": tps,
            "streams_checked": 500,
            "streams_broken": 0,
        },
    }


def _row(table: list[list[str]], start: str) -> list[str]:
    return next(row for row in table if row[0].startswith(start))


def test_a_time_is_shown_as_added_to_each_sides_own_baseline_and_as_a_difference() -> None:
    figure = Figure("latency", "ms", Side(3.5, 2.0), Side(6.0, 2.5))
    assert figure.cells() == [
        "latency",
        "2.00",
        "3.50",
        "6.00",
        "+1.50 ms",
        "+3.50 ms (its baseline 2.50)",
        "-2.50 ms (0.58×)",
    ]


def test_a_rate_is_a_share_of_the_baseline_and_a_ratio_between_the_sides() -> None:
    figure = Figure("req/s", "rate", Side(700.0, 1000.0), Side(350.0, 1000.0), digits=0)
    assert figure.cells()[1:] == ["1,000", "700", "350", "70.0%", "35.0%", "2.00×"]


def test_a_missing_figure_is_na_and_gets_no_ratio() -> None:
    figure = Figure("tokens/s", "rate", Side(100.0), Side(None))
    assert figure.cells()[1:] == ["", "100.00", "n/a", "", "", ""]
    zero = Figure("tokens/s", "rate", Side(100.0, 0.0), Side(0.0))
    assert zero.cells()[4:] == ["", "", ""]  # no division by zero


def test_previous_commit_table_compares_scenarios_one_to_three() -> None:
    now = _run(c1=(1.0, 2.0), rps=(1000, 700), ttft=120.0, tps=60_000)
    then = _run(c1=(1.2, 3.4), rps=(1000, 500), ttft=300.0, tps=30_000)
    table = cells(previous_figures(now, then))
    assert _row(table, "1. c=1 latency p50")[4:] == ["+1.00 ms", "+2.20 ms (its baseline 1.20)",
                                                     "-1.40 ms (0.59×)"]  # fmt: skip
    assert _row(table, "2. c=50 requests/s")[4:] == ["70.0%", "50.0%", "1.40×"]
    assert _row(table, "3. TTFT p50, 100 at once")[4:6] == ["+20.00 ms", "+200.00 ms"]
    assert _row(table, "3. tokens/s")[6] == "2.00×"  # issue 17: ≥ 1.5× the previous commit's
    assert _row(table, "3. streams whole")[2:4] == ["500/500", "500/500"]


def test_previous_commit_table_leaves_out_scenarios_either_run_lacks() -> None:
    now = _run(c1=(1.0, 2.0), rps=(1000, 700), ttft=120.0, tps=60_000)
    then = {"c1": now["c1"]}
    labels = [figure.label for figure in previous_figures(now, then)]
    assert labels == ["1. c=1 latency p50 (ms)", "1. c=1 latency p99 (ms)"]


def _peer_result() -> dict[str, Any]:
    def side(c1: float, rps: float, ttft: float, tps: float, failed: int = 0) -> dict[str, Any]:
        return {
            "c1": {"p50": c1, "p99": c1 * 3},
            "c50": {"rps": rps, "p50_ms": 50_000 / rps},
            "burst_ttft_ms": {"p50": ttft, "p99": ttft * 2},
            "tokens_per_second": tps,
            "streams_broken": 0,
            "failed": failed,
        }

    return {
        "peer": "LiteLLM 1.106.12",
        "tokens": 16,
        "streams": 100,
        "stream_tokens": 64,
        "sides": {
            "direct": side(0.5, 2000, 10.0, 90_000),
            "nebula": side(4.5, 800, 40.0, 45_000),
            "litellm": side(10.5, 200, 400.0, 15_000, failed=2),
        },
    }


def test_peer_table_puts_nebula_and_litellm_against_the_engine_called_directly() -> None:
    result = _peer_result()
    table = cells(peer_figures(result))
    assert _row(table, "8. c=1, 16 tokens: latency p50") == [
        "8. c=1, 16 tokens: latency p50 (ms)", "0.50", "4.50", "10.50", "+4.00 ms", "+10.00 ms",
        "-6.00 ms (0.43×)",
    ]  # fmt: skip
    assert _row(table, "8. c=50 requests/s")[1:] == ["2,000", "800", "200", "40.0%", "10.0%",
                                                     "4.00×"]  # fmt: skip
    assert _row(table, "8. TTFT p50, 100 streams")[4:6] == ["+30.00 ms", "+390.00 ms"]
    assert _row(table, "8. failed requests")[2:4] == ["0 / 0", "2 / 0"]
    columns_, _ = cast(tuple[list[str], list[list[str]]], peer_table({"peer": result}))
    assert columns_[1:4] == ["Engine direct", "Nebula", "LiteLLM 1.106.12"]
    assert columns("A", "B")[-1] == "A vs B"


def test_an_unavailable_peer_or_previous_commit_is_one_line_saying_why() -> None:
    assert peer_table({"peer": {"unavailable": "pip install: no litellm-proxy"}}) == (
        "LiteLLM unavailable: pip install: no litellm-proxy"
    )
    previous = {"rev": "abc", "commit": "0123456789ab", "unavailable": "its stack did not start"}
    assert previous_table({"previous": previous}) == (
        "previous (0123456) unavailable: its stack did not start"
    )


def test_litellm_config_points_its_openai_provider_at_the_engine_with_a_master_key() -> None:
    text = peer.config_yaml(api_base="http://127.0.0.1:8601/", master_key='sk-"odd"')
    config = yaml.safe_load(text)
    assert config["model_list"] == [
        {
            "model_name": "bench-upstream",
            "litellm_params": {
                "model": "openai/test-upstream-model",
                "api_base": "http://127.0.0.1:8601/v1",
                "api_key": "unused",
            },
        }
    ]
    assert config["general_settings"] == {"master_key": 'sk-"odd"'}  # quoted, not broken
    assert config["litellm_settings"]["num_retries"] == 0
    assert "database_url" not in text


def test_litellm_gets_neither_the_benchmarks_database_nor_its_redis() -> None:
    env = peer.server_env({"PATH": "/bin", "DATABASE_URL": "sqlite:///x", "REDIS_URL": "redis://"})
    assert env["PATH"] == "/bin"
    assert "DATABASE_URL" not in env and "REDIS_URL" not in env
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no price list fetched at startup


def test_litellm_runs_one_worker_process_on_loopback() -> None:
    proxy = peer.LiteLLM(binary=Path("/x/litellm"), config=Path("/c.yaml"), port=9, log=Path("/l"))
    argv = proxy.argv()
    assert argv[argv.index("--num_workers") + 1] == "1"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def _fake_venv(tmp_path: Path) -> Path:
    venv = peer.venv_path(tmp_path)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def test_a_failed_install_says_what_pip_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_venv(tmp_path)
    failing = [sys.executable, "-c", "import sys; print('Collecting litellm', file=sys.stderr); "
               "print('ERROR: No matching distribution found for litellm-proxy', file=sys.stderr);"
               " sys.exit(1)"]  # fmt: skip
    monkeypatch.setattr(peer, "install_command", lambda venv, version="": failing)
    with pytest.raises(peer.PeerUnavailable, match="No matching distribution found"):
        peer.ensure_litellm(tmp_path)


def test_an_installed_release_is_not_installed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = _fake_venv(tmp_path)
    (venv / "bin" / "litellm").write_text("")
    (venv / f".installed-{peer.LITELLM_VERSION}").write_text("")
    monkeypatch.setattr(peer, "install_command", lambda venv, version="": pytest.fail("pip ran"))
    assert peer.ensure_litellm(tmp_path) == venv / "bin" / "litellm"


def test_a_proxy_that_exits_at_startup_is_unavailable_with_its_last_words(tmp_path: Path) -> None:
    binary = tmp_path / "litellm"
    binary.write_text(
        "#!/bin/sh\necho starting\necho 'ERROR: no module named fastapi' >&2\nexit 1\n"
    )
    binary.chmod(0o755)
    proxy = peer.LiteLLM(binary=binary, config=tmp_path / "c.yaml", port=9, log=tmp_path / "l.log")
    with pytest.raises(peer.PeerUnavailable, match="exited at startup: ERROR: no module named"):
        proxy.start(timeout=20)


def test_scenario_eight_reports_an_unavailable_peer_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(**_: Any) -> Path:
        raise peer.PeerUnavailable("pip install litellm[proxy]==1.106.12: no network")

    monkeypatch.setattr(peer, "ensure_litellm", unavailable)
    stack = Stack(env={}, port=8950, log_dir=tmp_path)
    args = argparse.Namespace(peer_streams=100, peer_rounds=3, peer_stream_tokens=64,
                              peer_install_timeout=1, seconds=1)  # fmt: skip
    result = peer_scenario(stack, "nb_x", args, engine_port=8951, workdir=tmp_path,
                           load_cpus=None, say=lambda _: None)  # fmt: skip
    assert result["unavailable"] == "pip install litellm[proxy]==1.106.12: no network"
    assert (tmp_path / "litellm" / "config.yaml").exists()


def test_stream_words_counts_what_a_client_got_however_it_was_regrouped() -> None:
    def chunk(content: str | None) -> str:
        delta = {} if content is None else {"content": content}
        return json.dumps({"choices": [{"index": 0, "delta": delta}]})

    events = [chunk(""), chunk("w0 w1 "), chunk("w2 "), chunk(None), '{"choices":[],"usage":{}}']
    assert peer.stream_words([*events, "[DONE]"]) == (3, True)
    assert peer.stream_words(events) == (3, False)  # cut before [DONE]
    assert peer.stream_words(["not json", "[DONE]"]) == (0, True)


def test_health_without_a_worker_count_is_taken_at_its_word() -> None:
    assert healthy({"checks": {"workers": {"ok": True, "live": 2}}}, workers=2)
    assert not healthy({"checks": {"workers": {"ok": True, "live": 1}}}, workers=2)
    assert healthy({"status": "ok"}, workers=1)  # an earlier commit's /health


# --- the earlier commit's checkout and data ---------------------------------------------


def _repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    (repo / "bench").mkdir()
    (repo / "bench" / "__init__.py").write_text("")
    (repo / "bench" / "__main__.py").write_text(
        "import os, sys\n"
        "def prepare_data():\n"
        "    if os.environ.get('FAIL'):\n"
        "        sys.exit('django.db.utils.OperationalError: no such table: keys_apikey')\n"
        "    print('migrating...')\n"
        "    return 7, 'nb_secret'\n"
    )
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return repo, git("rev-parse", "HEAD")


def test_an_earlier_commit_is_checked_out_once_and_prepared_by_its_own_code(tmp_path: Path) -> None:
    repo, sha = _repo(tmp_path)
    assert compare.resolve("HEAD", repo=repo) == sha
    path = compare.checkout(sha, tmp_path / "cache", repo=repo)
    assert path == tmp_path / "cache" / f"rev-{sha[:12]}"
    assert (path / "bench" / "__main__.py").exists()
    (path / "left-by-the-last-run").write_text("")
    assert compare.checkout(sha, tmp_path / "cache", repo=repo) == path
    assert (path / "left-by-the-last-run").exists()  # reused, not checked out again
    env = {"PATH": "/usr/bin:/bin"}
    assert compare.prepare(path, env) == (7, "nb_secret")
    with pytest.raises(compare.Unavailable, match="no such table: keys_apikey"):
        compare.prepare(path, {**env, "FAIL": "1"})


def test_a_rev_that_names_no_commit_is_unavailable(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    with pytest.raises(compare.Unavailable, match="'nope' names no commit"):
        compare.resolve("nope", repo=repo)


def test_a_checkout_without_the_bench_cannot_be_prepared(tmp_path: Path) -> None:
    with pytest.raises(compare.Unavailable, match=r"no bench/__main__\.py"):
        compare.prepare(tmp_path, {})


def test_the_previous_scenarios_report_a_bad_rev_instead_of_failing(tmp_path: Path) -> None:
    args = argparse.Namespace(compare="no-such-rev-anywhere", seconds=1)
    result = previous_scenarios(
        args, env={}, port=8950, workdir=tmp_path, pins=(None, None, None), only={"1"},
        say=lambda _: None,
    )  # fmt: skip
    assert result["rev"] == "no-such-rev-anywhere"
    assert "names no commit" in result["unavailable"]


def test_a_connection_the_server_closed_while_idle_is_opened_again() -> None:
    """uvicorn (LiteLLM) closes keep-alive connections idle for 5 s; the next request on one
    must not fail as if the proxy had."""

    async def scenario() -> list[int]:
        async def answer_once_then_close(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()  # keep-alive ends on the server's side, as after an idle timeout

        server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = Connection("127.0.0.1", port)
        statuses = []
        try:
            for _ in range(2):
                response, body = await connection.request("POST", "/", headers={}, body=b"{}")
                _ = [part async for part in body]
                statuses.append(response.status)
                await asyncio.sleep(0.1)  # idle: the server's close arrives
        finally:
            await connection.close()
            server.close()
        return statuses

    assert asyncio.run(scenario()) == [200, 200]


def test_a_stream_that_never_ends_fails_after_its_time_instead_of_holding_the_run() -> None:
    async def scenario() -> peer.StreamResult:
        async def headers_then_silence(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(30)

        server = await asyncio.start_server(headers_then_silence, "127.0.0.1", 0)
        connection = Connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            return await peer.bounded(connection, "/", {}, {}, timeout=0.3)
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result.error == "no end after 0.3 s"
    assert result.ended - result.started < 5


def test_an_earlier_commit_whose_stack_cannot_start_is_reported_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, sha = _repo(tmp_path)  # prepares its data, but has no nebula_site to serve
    monkeypatch.setattr(compare, "resolve", lambda rev: sha)
    monkeypatch.setattr(compare, "checkout", lambda sha: repo)
    args = argparse.Namespace(compare="old", seconds=1, streams=1, rounds=1, probes=1)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    result = previous_scenarios(
        args, env=env, port=free_port(8950, 8999), workdir=tmp_path, pins=(None, None, None),
        only={"1"}, say=lambda _: None,
    )  # fmt: skip
    assert result["commit"] == sha
    # Web process or worker: whichever of the two noticed first.
    assert result["unavailable"].startswith(
        ("its stack did not start: web exited", "its stack did not start: worker exited")
    )
    assert "nebula_site" in result["unavailable"]  # the log line that says why
