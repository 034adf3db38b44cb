# Two commands on a fresh machine (Python 3.11+, git, make):
#   make run    set up, then run the pipeline under Prefect (`dvcflow run-a`)
#   make test   set up, then lint and run the test suite
# `make setup` is idempotent and takes about a second when nothing changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
# Compiled bytecode: these machines (like many container images) set PYTHONDONTWRITEBYTECODE=1, so without
# .pyc files every process would compile Prefect, DVC and pandas from source (a no-op run-a 6.4 s → 3.3 s).
BYTECODE := $(VENV)/.bytecode-stamp
UV_VERSION := 0.13.9

# Stage commands in dvc.yaml say `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test test-fast check-bytecode lint format docs prefect-start prefect-stop bench clean help

help:
	@echo "make run            set up, then dvcflow run-a (Prefect operates dvc repro)"
	@echo "make test           set up, then ruff, mypy and pytest"
	@echo "make prefect-start  start dvcflow's local Prefect server (UI at http://127.0.0.1:4200)"
	@echo "make bench          every benchmark in bench/, written to docs/benchmarks.md (BENCH_QUICK=1: fewer rounds)"
	@echo "make docs           regenerate docs/cli.md from the CLI (make test fails while it is stale)"
	@echo "                   and retake the Prefect UI screenshots in docs/figures/ (needs Chromium)"

# The template database a first `dvcflow server start` copies (per user and Prefect version, in
# ~/.cache/dvcflow): ~8 s once, 0.1 s after; a failure only means the first start migrates (~7 s).
setup: $(STAMP) $(BYTECODE)
	@$(BIN)/python -m mltoy.data --out data/raw/iris.csv
	@$(BIN)/python -m dvcflow.server.process --prepare-template \
		|| echo "note: no template database for Prefect's server; its first start will migrate one"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(BYTECODE) $@

# Once, for a venv installed before set-up compiled (uv compiles only when it installs something).
# Quietly: a few vendored files hold newer-Python syntax and are never imported here.
$(BYTECODE): | $(STAMP)
	$(BIN)/python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)"
	@touch $@

run: setup
	$(BIN)/dvcflow run-a

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Two workers, one test file each at a time: most integration tests wait on processes and the server,
# so the two cores stay busy; each worker has its own session server (PYTEST_ARGS= to override).
PYTEST_ARGS ?= -n 2 --dist loadfile
test: lint check-bytecode
	$(BIN)/pytest $(PYTEST_ARGS)

# What the set-up promises: every site-packages module dvcflow imports has a current .pyc.
check-bytecode: setup
	$(BIN)/python scripts/check_bytecode.py

# The fast layer while you work: our own logic, no server, no real pipeline run.
test-fast: setup
	$(BIN)/pytest -m "not integration" -q $(PYTEST_ARGS)

format: setup
	$(BIN)/ruff check --fix src tests bench scripts
	$(BIN)/ruff format src tests bench scripts

prefect-start: setup
	$(BIN)/dvcflow server start

prefect-stop: setup
	$(BIN)/dvcflow server stop

# docs/cli.md is generated from the Typer app; tests/test_docs.py fails `make test` when it is stale.
# Then the Prefect UI screenshots in docs/figures/ are retaken against today's code, by Chromium headless
# on a private server (~2 min; without Chromium, a one-line note and nothing else).
docs: setup
	$(BIN)/python scripts/gen_cli_docs.py
	$(BIN)/python scripts/ui_screenshots.py

bench: setup
	$(BIN)/python bench/run.py

# Refresh the lock file after changing dependencies in pyproject.toml.
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -q -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
