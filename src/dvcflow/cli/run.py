"""`dvcflow run-a` and `run-b`: their flags become one `Pipeline.run` call; then the run's summary.

The one place the tour's vocabulary meets the library's: Option A (`run-a`, DVC decides what is up to date)
is `Pipeline.run()`, with `--per-stage` `per_stage=True`; Option B (`run-b`, Prefect's cache decides) is
`cached_dag=True`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dvcflow.cli.common import (
    RESOURCE_HELP,
    EphemeralOption,
    JsonOption,
    RepoOption,
    ResourceOption,
    SharedDiskOption,
    capacity_from,
    debug_requested,
    selection_options,
)

if TYPE_CHECKING:
    from dvcflow.core.selection import Selection
    from dvcflow.services.pipeline import Pipeline

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
        "--retries",
        help="Retries after a stage's command fails (default 1); missing data, an invalid dvc.yaml or an "
        "unknown target is never retried.",
        show_default=False,
    ),
]
PullOption = Annotated[
    bool,
    typer.Option(
        "--pull",
        help="Fetch missing data from the DVC remote before stages run (`dvc repro --pull`).",
        rich_help_panel="Remote",
    ),
]
AllowMissingOption = Annotated[
    bool,
    typer.Option(
        "--allow-missing",
        help="Skip stages whose only change is missing data (`dvc repro --allow-missing`).",
        rich_help_panel="Remote",
    ),
]
PushOption = Annotated[
    bool,
    typer.Option(
        "--push",
        help="After a Completed run, upload the outputs to the DVC remote (a `dvc push` task).",
        rich_help_panel="Remote",
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
PerStageResourceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--resource",
        metavar="NAME=AMOUNT",
        help=RESOURCE_HELP,
        show_default=False,
        rich_help_panel="Per stage",
    ),
]


def _check_flags(per_stage: bool, fail_once: bool, per_stage_flags: dict[str, bool]) -> None:
    from dvcflow.core.errors import UsageError

    if per_stage and fail_once:
        raise UsageError("--fail-once fails the single `dvc repro` task; with --per-stage use --retries")
    given = [flag for flag, used in per_stage_flags.items() if used]
    if given and not per_stage:
        raise UsageError(f"{given[0]} needs --per-stage")


def _check_shared_disk(dask_address: str | None, shared_disk: bool | None) -> None:
    """`--shared-disk/--no-shared-disk` answers a question only `--dask-address` asks."""
    from dvcflow.core.errors import UsageError

    if shared_disk is not None and dask_address is None:
        raise UsageError(f"--{'' if shared_disk else 'no-'}shared-disk needs --dask-address")


@selection_options
def run_a(
    selection: "Selection",
    pull: PullOption = False,
    allow_missing: AllowMissingOption = False,
    push: PushOption = False,
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
    shared_disk: SharedDiskOption = None,
    resource: PerStageResourceOption = None,
    ephemeral: EphemeralOption = False,
    json: JsonOption = False,
) -> None:
    """Option A: DVC owns the DAG; Prefect runs `dvc repro` with logs, retries and run history.

    Targets and -s/--downstream/--glob/-f choose the stages as `dvc repro` does. With --per-stage, each
    stage is its own task, independent ones in parallel.

    Example: dvcflow run-a train -s --force; dvcflow run-a --pull --push; dvcflow run-a --per-stage -j 4
    """
    from dvcflow.cli import render
    from dvcflow.services.pipeline import Pipeline

    _check_flags(
        per_stage,
        fail_once,
        {
            "--jobs": jobs is not None,
            "--keep-going": keep_going,
            "--dry-run": dry_run,
            "--dask-address": dask_address is not None,
            "--resource": bool(resource),
            "--shared-disk": shared_disk is not None,
        },
    )
    _check_shared_disk(dask_address, shared_disk)
    capacity = capacity_from(resource)
    pipeline = Pipeline(repo, ephemeral=ephemeral, announce=render.info, tracebacks=debug_requested())
    if dry_run:
        from dvcflow.cli.render.plan import plan_view

        plan_view(pipeline.plan(*selection.targets, **selection.flags()), json=json)
        return
    _run_and_show(
        pipeline,
        selection,
        json=json,
        per_stage=per_stage,
        jobs=jobs,
        keep_going=keep_going,
        retries=1 if retries is None else retries,
        pull=pull,
        allow_missing=allow_missing,
        push=push,
        dask_address=dask_address,
        resources=capacity,
        show_metrics=show_metrics,
        fail_once=fail_once,
        **({"shared_disk": shared_disk} if shared_disk is not None else {}),
    )


@selection_options
def run_b(
    selection: "Selection",
    repo: RepoOption = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="The params file the run uses: one the pipeline already reads (default params.yaml); "
            "a relative path is taken from the repo root.",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Stages running at once (default: CPUs).", show_default=False),
    ] = None,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="After a failure, finish the independent branches.")
    ] = False,
    retries: Annotated[int, typer.Option("--retries", help="Retries per stage.")] = 1,
    resource: ResourceOption = None,
    dask_address: DaskOption = None,
    shared_disk: SharedDiskOption = None,
    ephemeral: EphemeralOption = False,
    json: JsonOption = False,
) -> None:
    """Option B on any DVC repository: Prefect owns the stage DAG; unchanged stages end Cached.

    Each stage runs its `cmd` (or the in-process function registered in [tool.dvcflow.stages]) and is
    recorded through DVC, so `dvc status` is clean afterwards. With --dask-address, the stages run on a
    Dask cluster (in clones of this commit where the workers do not see this repository); the cache
    decides here either way.

    Example: dvcflow run-b --params params.yaml; dvcflow run-b train --force
    """
    from dvcflow.cli import render
    from dvcflow.services.pipeline import Pipeline

    _check_shared_disk(dask_address, shared_disk)
    capacity = capacity_from(resource)
    _run_and_show(
        Pipeline(repo, ephemeral=ephemeral, announce=render.info, tracebacks=debug_requested()),
        selection,
        json=json,
        cached_dag=True,
        params_file=params,
        jobs=jobs,
        keep_going=keep_going,
        retries=retries,
        resources=capacity,
        dask_address=dask_address,
        **({"shared_disk": shared_disk} if shared_disk is not None else {}),
    )


def _run_and_show(pipeline: "Pipeline", selection: "Selection", *, json: bool, **options: Any) -> None:
    """`Pipeline.run` on the selected stages, then the run's summary whether it completed or not (the
    library raises `PipelineRunError` with the result), then exit with the code its final state maps to."""
    from dvcflow.cli.render.runs import show_run
    from dvcflow.core.results import PipelineRunError

    try:
        result = pipeline.run(*selection.targets, **selection.flags(), **options)
    except PipelineRunError as failed:
        result = failed.result
    assert result.record is not None  # `RunResult.from_record` keeps it
    show_run(result.record, json=json)
    raise typer.Exit(result.exit_code)
