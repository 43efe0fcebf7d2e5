"""The README's examples run as written (against a live stack instead of `make run`'s port)."""

import os
import re
import subprocess
import sys

from tests.support.stack import ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def block(language, marker):
    return next(code for lang, code in BLOCKS if lang == language and marker in code)


def run(live, command, secret):
    env = {**os.environ, "NEBULA_KEY": secret}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_readme_starts_with_make_run_and_make_test():
    first = BLOCKS[0][1]
    assert "make run" in first and "make test" in first
    assert README.index("make run") < README.index("## ")


def test_the_curl_examples_work(live, alice, make_key, ready_model):
    ready_model()
    _, secret = make_key(alice, rpm_limit=100)
    script = block("bash", "curl").replace("http://127.0.0.1:8000", live.url)
    script = "\n".join(
        line for line in script.splitlines() if not line.startswith("export NEBULA_KEY=")
    )
    result = run(live, ["bash", "-euo", "pipefail", "-c", script], secret)
    assert result.returncode == 0, result.stderr
    assert '"object":"chat.completion"' in result.stdout
    assert "data: [DONE]" in result.stdout
    assert '"usage":{"prompt_tokens"' in result.stdout


def test_the_openai_example_works(live, alice, make_key, ready_model):
    ready_model()
    _, secret = make_key(alice, rpm_limit=100)
    code = block("python", "from openai import OpenAI").replace("http://127.0.0.1:8000", live.url)
    result = run(live, [sys.executable, "-c", code], secret)
    assert result.returncode == 0, result.stderr
    assert "CompletionUsage(" in result.stdout
