"""Every command's `--help` reads as its docstring means: paragraphs a terminal wraps, never a sentence the
source's line length broke (issue 20: `run-a --help` said "With --per-stage, each" / "stage is its own
task"), and brackets shown as written (Rich took `[tool.dvcflow.stages]` for markup and dropped it)."""

from __future__ import annotations

import itertools
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.cli.help_text import unwrap

WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}  # wider than any paragraph: only the help's own breaks


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _help_lines(path: tuple[str, ...]) -> list[str]:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = []
    for line in result.output.splitlines():  # the text inside Rich's panels; a border or blank ends one
        text = line.strip().strip("│").strip()
        lines.append("" if text.startswith(("╭", "╰")) else text)
    return lines


def test_every_command_is_checked() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"run-a", "run-b", "sweep", "server stop", "notify"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "dvcflow")
def test_no_line_of_help_ends_mid_sentence(path: tuple[str, ...]) -> None:
    lines = _help_lines(path)
    broken = [
        f"{line!r} / {after!r}"
        for line, after in itertools.pairwise(lines)
        if re.search(r"[\w,]$", line) and re.match(r"[a-z]", after)  # no stop, and the next goes on
    ]
    assert not broken, f"`dvcflow {' '.join(path)} --help` breaks a sentence: {broken}"


def test_the_help_of_run_a_and_run_b_is_whole() -> None:
    whole = "With --per-stage, each stage is its own task, independent ones in parallel."
    assert any(line.endswith(whole) for line in _help_lines(("run-a",)))
    assert any(
        "registered in [tool.dvcflow.stages]) and is recorded" in line for line in _help_lines(("run-b",))
    )


def test_unwrap_joins_lines_of_a_paragraph_and_keeps_paragraphs_and_items() -> None:
    doc = "First line\n    goes on.\n\n    Second, with a [table]\n    and more.\n\n"
    doc += "    - one\n    - two\n      wrapped\n"
    assert unwrap(doc) == "First line goes on.\n\nSecond, with a \\[table] and more.\n\n- one\n- two wrapped"
