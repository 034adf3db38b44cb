"""`dvcflow metrics`: the pipeline's metrics now, against a git revision, or across past flow runs."""

from dataclasses import dataclass
from typing import Annotated

import typer

from dvcflow.cli.common import JsonOption, RepoOption

DEFAULT_REV = "HEAD"
DEFAULT_RUNS = 10


@dataclass(frozen=True)
class _Request:
    rev: str | None  # compare with this revision
    runs: int | None  # show this many past flow runs
    params: bool = False  # compare the params too


MAX_RUNS = 200  # one page of the Prefect API


def _request(target: str | None, diff: bool, history: bool, params: bool) -> _Request:
    """Check the flags against each other; `target` is REV with --diff and N with --history."""
    from dvcflow.core.errors import UsageError

    if diff and history:
        raise UsageError("--diff and --history cannot be combined")
    if params and not diff:
        raise UsageError("--params only works with --diff")
    if history:
        if target is not None and (not target.isdigit() or not 1 <= int(target) <= MAX_RUNS):
            raise UsageError(f"--history takes a number of flow runs (1 to {MAX_RUNS}), got {target!r}")
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
    from dvcflow.cli import render
    from dvcflow.cli.render.metrics import show
    from dvcflow.services.pipeline import Pipeline

    request = _request(target, diff, history, params)
    pipeline = Pipeline(repo, announce=render.info)
    if request.runs is not None:
        show(pipeline.metrics_history(request.runs), json=json)
    elif request.rev is not None:
        show(pipeline.metrics_diff(request.rev, params=request.params), json=json)
    else:
        show(pipeline.metrics(), json=json)
