"""`dvcflow metrics`: the pipeline's metrics now, against a git revision, or across past flow runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dvcflow.cli.common import JsonOption, RepoOption

if TYPE_CHECKING:
    from dvcflow.history import MetricsHistory
    from dvcflow.metrics import MetricsDiff, MetricsSnapshot

DEFAULT_REV = "HEAD"
DEFAULT_RUNS = 10


@dataclass(frozen=True)
class _Request:
    rev: str | None  # compare with this revision
    runs: int | None  # show this many past flow runs
    params: bool = False  # compare the params too


def _request(target: str | None, diff: bool, history: bool, params: bool) -> _Request:
    """Check the flags against each other; `target` is REV with --diff and N with --history."""
    from dvcflow.errors import UsageError

    if diff and history:
        raise UsageError("--diff and --history cannot be combined")
    if params and not diff:
        raise UsageError("--params only works with --diff")
    if history:
        if target is not None and (not target.isdigit() or int(target) < 1):
            raise UsageError(f"--history takes a number of flow runs (1 or more), got {target!r}")
        return _Request(None, int(target) if target else DEFAULT_RUNS)
    if diff:
        return _Request(target or DEFAULT_REV, None, params)
    if target is not None:
        raise UsageError(f"unexpected argument {target!r}: a revision needs --diff, a count --history")
    return _Request(None, None)


def metrics(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="REV|N",
            help=f"With --diff: the git revision to compare with (default {DEFAULT_REV}). "
            f"With --history: how many flow runs (default {DEFAULT_RUNS}).",
            show_default=False,
        ),
    ] = None,
    repo: RepoOption = None,
    json: JsonOption = False,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff", help="Compare the working tree with git revision REV, like `dvc metrics diff`."
        ),
    ] = False,
    params: Annotated[bool, typer.Option("--params", help="With --diff: compare the params too.")] = False,
    history: Annotated[
        bool,
        typer.Option(
            "--history", help="The metrics of the last N flow runs, read from the Prefect API, with trends."
        ),
    ] = False,
) -> None:
    """Show the metrics the DVC repository declares in `dvc.yaml` (table, or JSON with raw values).

    Examples: dvcflow metrics --diff · dvcflow metrics --diff HEAD~1 --params · dvcflow metrics --history 5
    """
    from dvcflow.render.metrics import show

    show(_fetch(repo, _request(target, diff, history, params)), json=json)


def _fetch(repo: Path | None, request: _Request) -> MetricsSnapshot | MetricsDiff | MetricsHistory:
    """One library call per mode."""
    from dvcflow import dvcrepo, render

    if request.runs is not None:
        from dvcflow.history import read_history

        return read_history(repo, request.runs, announce=render.info)
    from dvcflow import metrics as lib

    root = dvcrepo.find_repo_root(repo)
    if request.rev is not None:
        return lib.diff_metrics(root, request.rev, params=request.params)
    return lib.require_metrics(lib.read_metrics(root))
