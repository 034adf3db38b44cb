"""Docs that cannot drift: the generated CLI reference is current, and every failure mode names tests
that exist."""

from __future__ import annotations

import ast
import importlib
import itertools
import re
import runpy
from pathlib import Path

import pytest

from tests.helpers import PROJECT

FAILURE_MODES = PROJECT / "docs" / "failure-modes.md"
PARAMETER_SET = type(pytest.param(None))  # what `pytest.param(..., id=...)` makes
TEST_REF = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)(?:\[([^\]]+)\])?`")


def test_cli_reference_is_generated_from_the_current_app() -> None:
    render = runpy.run_path(str(PROJECT / "scripts" / "gen_cli_docs.py"))["render"]
    current = (PROJECT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "docs/cli.md is stale: run `make docs`"


def table_rows(markdown: str) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [
        row
        for row in rows
        if not re.fullmatch(r"[|\s:-]+", row)
        and not row.startswith("| input |")
        and not row.startswith("| fault |")
    ]


def test_every_failure_mode_row_names_a_test() -> None:
    rows = table_rows(FAILURE_MODES.read_text(encoding="utf-8"))
    assert len(rows) > 10
    unproven = [row[:60] for row in rows if not TEST_REF.search(row.rstrip(" |").rsplit("|", 1)[-1])]
    assert not unproven, f"rows without a test in their last column: {unproven}"


def _parameter_ids(file: str, name: str) -> set[str]:
    """The ids of the test's parameters as pytest names them, from its `parametrize` marks: explicit ids
    (`ids=[...]`, `pytest.param(..., id=...)`), joined with `-` across stacked marks as pytest does."""
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    per_mark = []
    for mark in getattr(getattr(module, name), "pytestmark", []):
        if mark.name != "parametrize":
            continue
        values = list(mark.kwargs.get("argvalues", mark.args[1] if len(mark.args) > 1 else []))
        given = mark.kwargs.get("ids")
        if given is not None:
            assert not callable(given), f"{file}::{name}: ids from a function cannot be checked here"
            ids = [str(one) for one in given]
        else:
            ids = [value.id if isinstance(value, PARAMETER_SET) else None for value in values]
            assert None not in ids, (
                f"{file}::{name}: a parameter without an explicit id cannot be named in docs"
            )
        assert len(ids) == len(values), f"{file}::{name}: {len(ids)} ids for {len(values)} parameters"
        per_mark.append(ids)
    return {"-".join(parts) for parts in itertools.product(*per_mark)} if per_mark else set()


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


@pytest.mark.parametrize(
    "ref",
    sorted({m.group(0) for m in TEST_REF.finditer(FAILURE_MODES.read_text(encoding="utf-8"))}),
)
def test_each_named_test_exists(ref: str) -> None:
    match = TEST_REF.fullmatch(ref)
    assert match is not None
    file, name, param = match.groups()
    path = PROJECT / file
    assert path.is_file(), f"{file} does not exist"
    assert name in _defined_tests(path), f"{file} defines no {name}"
    if param:
        assert param in _parameter_ids(file, name), f"{file}::{name} has no parameter {param!r}"
