"""Settings come from the environment and fail loudly on what they cannot use."""

import os
import subprocess
import sys

import pytest

from tests.support.stack import ROOT


def load_settings(**env):
    clean = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE"}
    }
    clean.update({"NEBULA_ENV_FILE": "/nonexistent/.env", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, "-c", "import nebula_site.settings as s; print(s.PORT, s.DEBUG)"],
        cwd="/",
        env=clean,
        capture_output=True,
        text=True,
    )


def test_without_debug_a_missing_secret_key_is_an_error():
    result = load_settings(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_with_a_secret_key_settings_load():
    result = load_settings(SECRET_KEY="x" * 50, PORT="9000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["9000", "False"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("NEBULA_DEFAULT_RPM", "0"),
        ("NEBULA_SIM_TIME_SCALE", "-1"),
        ("DATABASE_URL", "nonsense://"),
    ],
)
def test_bad_values_stop_the_process_naming_the_variable(name, value):
    result = load_settings(SECRET_KEY="x" * 50, **{name: value})
    assert result.returncode != 0
    assert name in result.stderr
