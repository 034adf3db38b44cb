"""The CLI boundary through Typer's CliRunner: help, version, one-line errors, --debug tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from dvcflow import __version__
from dvcflow.cli.app import app
from dvcflow.core.errors import NotADvcRepoError
from tests.conftest import Processes

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


def test_debug_traceback_in_a_real_process(tmp_path: Path, processes: Processes) -> None:
    plain = processes.python("-m", "dvcflow", "run-a", cwd=tmp_path)
    debug = processes.python("-m", "dvcflow", "--debug", "run-a", cwd=tmp_path)
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    assert debug.returncode == 3 and "Traceback (most recent call last)" in debug.stderr


def test_bad_port_in_environment_is_a_config_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["server", "status"], env={"DVCFLOW_PORT": "http"})
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: DVCFLOW_PORT: port must be a number, got 'http'")


def test_debug_does_not_travel_through_the_environment(tmp_path: Path) -> None:
    import os

    result = runner.invoke(app, ["--debug", "run-a", "--repo", str(tmp_path)])
    assert result.exit_code == 3, result.output  # not a DVC repository: the command did run
    assert "DVCFLOW_DEBUG" not in os.environ


def test_command_modules_keep_annotations_evaluated() -> None:
    """Typer would compile and evaluate string annotations while building `--help` (see `dvcflow.cli`)."""
    import __future__

    import inspect

    import typer

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    commands = [group, *group.commands.values()]
    commands += [sub for c in commands if isinstance(c, typer.core.TyperGroup) for sub in c.commands.values()]
    modules = {inspect.getmodule(c.callback) for c in commands if c.callback is not None}
    assert {m.__name__ for m in modules if m} >= {"dvcflow.cli.app", "dvcflow.cli.run", "dvcflow.cli.server"}
    assert [
        m.__name__ for m in modules if m and getattr(m, "annotations", None) is __future__.annotations
    ] == []


def test_help_imports_neither_markdown_nor_traceback_and_typer_still_gets_them(processes: Processes) -> None:
    """`dvcflow.cli.lean_help`: help without `rich.markdown`/`rich.traceback`; Typer's uses of them
    (Markdown markup mode, pretty tracebacks) get the real classes."""
    code = (
        "import sys, subprocess\n"
        "from typer.testing import CliRunner\n"
        "from dvcflow.cli.app import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "assert 'typer.rich_utils' in sys.modules\n"
        "assert 'rich.markdown' not in sys.modules and 'rich.traceback' not in sys.modules\n"
        "from typer import rich_utils\n"
        "made = rich_utils._make_rich_text(text='*x*', markup_mode='markdown')\n"
        "import rich.markdown, rich.traceback\n"
        "assert type(made) is rich.markdown.Markdown\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError as exc:\n"
        "    trace = rich_utils.Traceback.from_exception(type(exc), exc, exc.__traceback__)\n"
        "assert type(trace) is rich.traceback.Traceback\n"
    )
    done = processes.python("-c", code, timeout=60)
    assert done.returncode == 0, done.stderr


HEAVY = ("prefect", "dvc", "sklearn", "optuna")


def test_help_imports_no_heavy_library(processes: Processes) -> None:
    """Importing the CLI and its help (`dvcflow --help`, each command's) load none of Prefect, DVC,
    scikit-learn or Optuna: the libraries a command imports only when it runs."""
    code = (
        "import sys\n"
        "import dvcflow.cli.app\n"
        "from typer.testing import CliRunner\n"
        "from dvcflow.cli.app import app\n"
        "for args in ([], *([name] for name in sys.argv[1:])):\n"
        "    assert CliRunner().invoke(app, [*args, '--help']).exit_code == 0, args\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
    )
    commands = ("run-a", "run-b", "plan", "metrics", "sweep", "server", "deploy", "runs")
    done = processes.python("-c", code, *commands, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The console command itself, served here (not by a warm starter): what `-X importtime` lists it imported.
    env = {**os.environ, "DVCFLOW_WARM": "0"}
    console = processes.python("-X", "importtime", "-m", "dvcflow", "--help", env=env, timeout=60)
    assert console.returncode == 0, console.stderr
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in console.stderr.splitlines()}
    assert "typer" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
