# Two commands for a newcomer: `make run` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test lint typecheck pytest pytest-postgres setup browser-deps bench clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	@touch $(STAMP)

setup: $(STAMP)

## make run: set up, migrate, seed demo data and start the service (daphne + Celery workers
## when Redis answers at REDIS_URL, everything in one process when it does not).
run: setup
	@bin/run

## make test: set up, then ruff, mypy and every test (integration and browser tests included).
test: setup browser-deps lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy .

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The suite once more against the PostgreSQL server on this machine (database `test`).
pytest-postgres: setup
	DATABASE_URL=$${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test} $(VENV)/bin/pytest $(PYTEST_ARGS)

# Browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
browser-deps:
	@test -x $(CHROMIUM) || { echo "Installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
	  || { echo "could not install chromium: run 'sudo apt-get install chromium'"; exit 1; }; }

## make bench: start daphne + a Celery worker from this checkout (Redis database 12, emptied
## first), measure them against a trivial view, next to LiteLLM's proxy in front of the same
## engine (installed once into .cache/bench/litellm-venv), then layouts of 1-2 web processes
## and 1-4 workers behind HAProxy (scale-out); BENCH_ARGS="--compare REV" also measures commit
## REV's stack in the same run; print the tables (docs/BENCHMARKS.md).
bench: setup
	@command -v wrk >/dev/null && command -v haproxy >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk haproxy) >/dev/null
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache staticfiles
