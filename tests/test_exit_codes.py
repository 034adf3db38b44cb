"""The exit-code table: one code per outcome, decided at the CLI boundary, shown in --help and the README."""

from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.errors import ExitCode, PipelineError, exit_code_for_state, exit_code_table
from dvcflow.services.pipeline import Pipeline
from tests.helpers import PROJECT

cli = CliRunner()


def test_ok() -> None:
    assert cli.invoke(app, ["--version"]).exit_code == ExitCode.OK == 0


def test_pipeline_failed() -> None:
    with mock.patch.object(Pipeline, "run", autospec=True, side_effect=PipelineError("stage broke")):
        result = cli.invoke(app, ["run-a"])
    assert (result.exit_code, result.stderr) == (1, "Error: stage broke\n")


@pytest.mark.parametrize(
    "args",
    [["run-a", "--per-stage", "--fail-once"], ["run-a", "--jobs", "2"], ["run-a", "--no-such-flag"]],
    ids=["contradiction", "needs-per-stage", "unknown-flag"],
)
def test_usage(args: list[str]) -> None:
    assert cli.invoke(app, args).exit_code == ExitCode.USAGE == 2


@pytest.mark.parametrize(
    ("args", "env"),
    [(["plan", "--repo", "{tmp}"], {}), (["server", "status"], {"DVCFLOW_PORT": "http"})],
    ids=["not-a-dvc-repo", "bad-setting"],
)
def test_bad_input(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    result = cli.invoke(app, [a.format(tmp=tmp_path) for a in args], env=env)
    assert result.exit_code == ExitCode.BAD_INPUT == 3, result.output


def test_server_unreachable(closed_port: int) -> None:
    """A real refused connection: nothing listens on a fresh free port."""
    api = f"http://127.0.0.1:{closed_port}/api"
    result = cli.invoke(app, ["metrics", "--history", "--repo", str(PROJECT)], env={"PREFECT_API_URL": api})
    assert result.exit_code == ExitCode.SERVER_UNREACHABLE == 4, result.output
    assert result.stderr.startswith(f"Error: the Prefect API at {api} is unreachable")


def test_interrupted() -> None:
    with mock.patch.object(Pipeline, "plan", autospec=True, side_effect=KeyboardInterrupt):
        result = cli.invoke(app, ["plan"])
    assert (result.exit_code, result.stderr) == (ExitCode.INTERRUPTED, "Interrupted.\n")
    assert ExitCode.INTERRUPTED == 130


def test_internal_error_is_one_line_without_debug() -> None:
    with mock.patch.object(Pipeline, "plan", autospec=True, side_effect=ZeroDivisionError("boom")):
        result = cli.invoke(app, ["plan"])
    assert result.exit_code == ExitCode.INTERNAL == 70
    assert result.stderr == "Error: unexpected ZeroDivisionError: boom (rerun with --debug for details)\n"


@pytest.mark.parametrize(
    ("state", "code"),
    [("Completed", 0), ("Failed", 1), ("Crashed", 1), ("Cancelled", 130)],
)
def test_a_flow_runs_final_state_maps_through_the_table(state: str, code: int) -> None:
    assert exit_code_for_state(state) == code


def test_help_and_readme_print_the_table() -> None:
    lines = exit_code_table().splitlines()
    assert [int(line.split()[0]) for line in lines] == sorted(ExitCode)
    help_text = cli.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    readme = (PROJECT / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\s*{int(code)}\s+{re.escape(code.meaning)}\s*$", help_text, re.M), code
        assert f"| {int(code)} | {code.meaning} |" in readme, f"README lacks exit code {int(code)}"
