"""deploy/ (systemd units, compose file, Dockerfile) cannot run here (no systemd as PID 1, no
Docker engine), so what can be checked is that they say the same as what is tested: each runs a
Procfile process through `infra.supervise run --only NAME Procfile` (the path bin/run's
standalone layout takes), and every setting they set is one the README documents."""

from __future__ import annotations

import configparser
import re
import shlex

import pytest
import yaml

from infra.supervise import procfile_parse
from tests.support.stack import ROOT

DEPLOY = ROOT / "deploy"
PROCESSES = procfile_parse((ROOT / "Procfile").read_text())
README = (ROOT / "README.md").read_text()
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _supervised(argv: list[str]) -> str | None:
    """The Procfile process an argv runs through infra.supervise, or None."""
    if argv[1:4] != ["-m", "infra.supervise", "run"]:
        return None
    assert argv[0] == ".venv/bin/python" or argv[0].endswith("/.venv/bin/python"), argv
    assert argv[-1] == "Procfile" and argv[-3] == "--only", argv
    return argv[-2]


def _unit(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_each_systemd_unit_runs_a_procfile_process_and_restarts_it(path):
    unit = _unit(path)
    service = unit["Service"]
    for line in service.get("ExecStart", "").splitlines():
        name = _supervised(shlex.split(line))
        if name is not None:
            assert name in PROCESSES or name == "%i", name
            assert service["Restart"] == "always"
            assert service["KillMode"] == "control-group"
    assert service["EnvironmentFile"] == "/etc/nebula/nebula.env"


def test_the_systemd_units_cover_every_procfile_process():
    named = set()
    for path in UNITS:
        named |= set(re.findall(r"--only (\S+) Procfile", path.read_text()))
    assert {"web", "worker"} <= named and "%i" in named  # `nebula@NAME` for any other line


def test_compose_runs_every_procfile_process_the_way_the_tests_do():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    supervised = {
        name: _supervised(service["command"])
        for name, service in services.items()
        if "command" in service
    }
    assert supervised["web"] == "web" and supervised["worker"] == "worker"
    assert set(PROCESSES) <= {name for name in supervised.values() if name}
    for name, process in supervised.items():
        if process is not None:
            assert services[name]["restart"] == "unless-stopped"
            assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    web = services["web"]
    assert web["ports"] == [f"{web['environment']['NEBULA_HTTP_PORT']}:8000"]
    # The ledger is a Redis stream: production Redis keeps an append-only file.
    assert "--appendonly" in services["redis"]["command"]


def test_the_image_runs_the_web_process_by_default():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    assert _supervised(yaml.safe_load(cmd.group(1))) == "web"


def _documented(variable: str) -> bool:
    return f"`{variable}`" in README


def test_every_setting_deploy_sets_is_documented_in_the_readme():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    names = set(compose["x-nebula"]["environment"])
    for line in (DEPLOY / "systemd" / "nebula.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("=", 1)[0])
    undocumented = sorted(name for name in names if not _documented(name))
    assert undocumented == []
