"""The CLI boundary through Typer's CliRunner: help, version, one-line errors, --debug tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dvcflow import __version__
from dvcflow.cli.app import app
from dvcflow.errors import NotADvcRepoError

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run-a", "run-b", "plan", "metrics", "server"):
        assert command in result.output


def test_every_command_has_help() -> None:
    for args in (
        ["run-a"],
        ["run-b"],
        ["plan"],
        ["metrics"],
        ["server"],
        ["server", "start"],
        ["server", "stop"],
        ["server", "status"],
        ["server", "env"],
    ):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, args
        assert "Usage:" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"dvcflow {__version__}\n"


def test_not_a_dvc_repo_is_one_line_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run-a", "--repo", str(tmp_path)])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path} is not inside a DVC repository (no .dvc directory here or above)",
        "Hint: run `dvc init`, or pass --repo PATH",
    ]


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "run-a", "--repo", str(tmp_path)])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert f"{NotADvcRepoError.__module__}.NotADvcRepoError: {tmp_path} is not inside" in result.stderr
    assert result.stderr.splitlines()[-2].startswith("Error: ")


def test_dvcflow_debug_variable_is_the_flag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run-a", "--repo", str(tmp_path)], env={"DVCFLOW_DEBUG": "1"})
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr


def test_debug_traceback_in_a_real_process(tmp_path: Path) -> None:
    plain = subprocess.run(
        [sys.executable, "-m", "dvcflow", "run-a"], cwd=tmp_path, capture_output=True, text=True
    )
    debug = subprocess.run(
        [sys.executable, "-m", "dvcflow", "--debug", "run-a"], cwd=tmp_path, capture_output=True, text=True
    )
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    assert debug.returncode == 3 and "Traceback (most recent call last)" in debug.stderr


def test_bad_port_in_environment_is_a_config_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["server", "status"], env={"DVCFLOW_PORT": "http"})
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: DVCFLOW_PORT: port must be a number, got 'http'")


def test_debug_does_not_travel_through_the_environment(tmp_path: Path) -> None:
    import os

    runner.invoke(app, ["--debug", "run-a", "--repo", str(tmp_path)])
    assert "DVCFLOW_DEBUG" not in os.environ
