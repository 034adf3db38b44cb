"""`dvcflow run-a` (and later run modes): connect to Prefect, run a flow, render its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvcflow.cli.common import EphemeralOption, RepoOption, debug_requested

PerStageOption = Annotated[
    bool,
    typer.Option(
        "--per-stage",
        help="One Prefect task per DVC stage, independent stages in parallel.",
        rich_help_panel="Per stage",
    ),
]
JobsOption = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        help="Stages reproducing at once (default: CPUs).",
        show_default=False,
        rich_help_panel="Per stage",
    ),
]
KeepGoingOption = Annotated[
    bool,
    typer.Option(
        "--keep-going", help="After a failure, finish the independent branches.", rich_help_panel="Per stage"
    ),
]
RetriesOption = Annotated[
    int | None,
    typer.Option(
        "--retries", help="Retries per stage (default 1).", show_default=False, rich_help_panel="Per stage"
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the waves and which stages would run; run nothing.",
        rich_help_panel="Per stage",
    ),
]
DaskOption = Annotated[
    str | None,
    typer.Option(
        "--dask-address",
        help="Run the stages on this Dask scheduler (tcp://HOST:PORT).",
        show_default=False,
        rich_help_panel="Per stage",
    ),
]


def _check_flags(per_stage: bool, fail_once: bool, per_stage_flags: dict[str, bool]) -> None:
    from dvcflow.errors import UsageError

    if per_stage and fail_once:
        raise UsageError("--fail-once fails the single `dvc repro` task; with --per-stage use --retries")
    given = [flag for flag, used in per_stage_flags.items() if used]
    if given and not per_stage:
        raise UsageError(f"{given[0]} needs --per-stage")


def run_a(
    repo: RepoOption = None,
    fail_once: Annotated[
        bool,
        typer.Option("--fail-once", help="Fail the `dvc repro` task once to demonstrate retries."),
    ] = False,
    show_metrics: Annotated[
        bool, typer.Option(help="Run the `metrics summary` task after `dvc repro`.")
    ] = True,
    per_stage: PerStageOption = False,
    jobs: JobsOption = None,
    keep_going: KeepGoingOption = False,
    retries: RetriesOption = None,
    dry_run: DryRunOption = False,
    dask_address: DaskOption = None,
    ephemeral: EphemeralOption = False,
) -> None:
    """Option A: DVC owns the DAG; Prefect runs `dvc repro` with logs, retries and run history.

    With --per-stage, each stage is its own task (`dvc repro -s`), independent ones in parallel.

    Example: dvcflow run-a --fail-once; dvcflow run-a --per-stage --jobs 4 --keep-going
    """
    from dvcflow import render, runner
    from dvcflow.render.runs import run_summary

    _check_flags(
        per_stage,
        fail_once,
        {
            "--jobs": jobs is not None,
            "--keep-going": keep_going,
            "--retries": retries is not None,
            "--dry-run": dry_run,
            "--dask-address": dask_address is not None,
        },
    )
    if dry_run:
        from dvcflow.render.plan import plan_view

        plan_view(runner.plan_stages(repo))
        return
    if per_stage:
        record = runner.run_per_stage(
            repo,
            jobs=jobs,
            keep_going=keep_going,
            retries=1 if retries is None else retries,
            dask_address=dask_address,
            show_metrics=show_metrics,
            ephemeral=ephemeral,
            debug=debug_requested(),
            announce=render.info,
        )
    else:
        record = runner.run_option_a(
            repo,
            fail_once=fail_once,
            show_metrics=show_metrics,
            ephemeral=ephemeral,
            debug=debug_requested(),
            announce=render.info,
        )
    run_summary(record)
    raise typer.Exit(record.exit_code)


def run_b(
    repo: RepoOption = None,
    params: Annotated[
        Path, typer.Option("--params", help="The params file; a relative path is taken from the repo root.")
    ] = Path("params.yaml"),
    force: Annotated[
        bool, typer.Option("--force", help="Re-run every stage, even those whose cached result is valid.")
    ] = False,
    ephemeral: EphemeralOption = False,
) -> None:
    """Option B: Prefect owns the stage DAG; tasks call the stage functions, unchanged stages end Cached.

    Example: dvcflow run-b --params params.yaml
    """
    from dvcflow import render, runner
    from dvcflow.render.runs import run_summary

    record = runner.run_option_b(
        repo,
        params_path=params,
        force=force,
        ephemeral=ephemeral,
        debug=debug_requested(),
        announce=render.info,
    )
    run_summary(record)
    raise typer.Exit(record.exit_code)
