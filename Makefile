# Two commands on a fresh machine (Python 3.11+, git, make):
#   make run    set up, then run the pipeline under Prefect (`dvcflow run-a`)
#   make test   set up, then lint and run the test suite
# `make setup` is idempotent and takes about a second when nothing changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

# Stage commands in dvc.yaml say `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test test-fast lint format docs prefect-start prefect-stop bench clean help

help:
	@echo "make run            set up, then dvcflow run-a (Prefect operates dvc repro)"
	@echo "make test           set up, then ruff, mypy and pytest"
	@echo "make prefect-start  start dvcflow's local Prefect server (UI at http://127.0.0.1:4200)"
	@echo "make bench          run the benchmarks in bench/"
	@echo "make docs           regenerate docs/cli.md from the CLI (make test fails while it is stale)"

setup: $(STAMP)
	@$(BIN)/python -m mltoy.data --out data/raw/iris.csv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

run: setup
	$(BIN)/dvcflow run-a

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The fast layer while you work: our own logic, no server, no real pipeline run.
test-fast: setup
	$(BIN)/pytest -m "not integration" -q

format: setup
	$(BIN)/ruff check --fix src tests bench scripts
	$(BIN)/ruff format src tests bench scripts

prefect-start: setup
	$(BIN)/dvcflow server start

prefect-stop: setup
	$(BIN)/dvcflow server stop

# docs/cli.md is generated from the Typer app; tests/test_docs.py fails `make test` when it is stale.
docs: setup
	$(BIN)/python scripts/gen_cli_docs.py

bench: setup
	$(BIN)/python bench/run.py

# Refresh the lock file after changing dependencies in pyproject.toml.
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -q -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
