"""The Procfile → supervisord step of `make run` (infra.supervise), read back by supervisor's own
config parser: what supervisord will run is exactly what the Procfile says."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from infra.supervise import (
    START_RETRIES,
    STOP_WAIT_SECONDS,
    ProcfileError,
    procfile_parse,
    supervisord_config,
)
from tests.support.stack import ROOT

PROCFILE = """\
# the processes
web: .venv/bin/python -m daphne --port "${NEBULA_HTTP_PORT:-8000}" nebula_site.asgi:application

worker: .venv/bin/python -m celery -A nebula_site worker -n w@%h --concurrency 100%
beat: .venv/bin/python -m celery -A nebula_site beat
"""


def test_procfile_lines_become_processes_in_order():
    processes = procfile_parse(PROCFILE)
    assert list(processes) == ["web", "worker", "beat"]
    assert processes["beat"] == ".venv/bin/python -m celery -A nebula_site beat"


def test_the_projects_procfile_parses():
    processes = procfile_parse((ROOT / "Procfile").read_text())
    assert {"web", "worker"} <= set(processes)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("web .venv/bin/python\n", "not `name: command`"),
        ("web:\n", "not `name: command`"),
        ("we b: run\n", "not `name: command`"),
        ("web: a\nweb: b\n", "defined twice"),
    ],
)
def test_a_malformed_procfile_is_refused_with_its_line(text, problem):
    with pytest.raises(ProcfileError, match=problem):
        procfile_parse(text)


def _read_back(tmp_path: Path, config: str) -> ServerOptions:
    path = tmp_path / "supervisord.conf"
    path.write_text(config)
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


def test_supervisord_runs_each_command_exactly_as_written(tmp_path):
    processes = procfile_parse(PROCFILE)
    config = supervisord_config(
        processes=processes,
        run_dir=tmp_path,
        directory=ROOT,
        python="/usr/bin/python3",
        password="p%ss",
    )
    options = _read_back(tmp_path, config)
    programs = {group.name: group.process_configs[0] for group in options.process_group_configs}
    assert set(programs) == {"web", "worker", "beat", "nebula-give-up"}
    for name, command in processes.items():
        program = programs[name]
        # `%` survives supervisord's interpolation, `${...}` is left for bash.
        assert shlex.split(program.command) == ["/bin/bash", "-c", f"exec {command}"]
        assert program.directory == str(ROOT)
        assert program.autorestart is RestartUnconditionally
        assert program.startretries == START_RETRIES
        assert program.stopwaitsecs == STOP_WAIT_SECONDS
        assert program.stopasgroup and program.killasgroup
        assert program.redirect_stderr
    listener = programs["nebula-give-up"]
    assert "listen" in listener.command and str(tmp_path) in listener.command
    assert options.nodaemon and options.silent
    assert options.server_configs[0]["password"] == "p%ss"
