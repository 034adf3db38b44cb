"""`dvcflow sweep`: a grid of `-S` values, each trial a child flow run and a DVC experiment."""

from typing import Annotated

import typer

from dvcflow.cli.common import (
    EphemeralOption,
    JsonOption,
    RepoOption,
    ResourceOption,
    SharedDiskOption,
    capacity_from,
    debug_requested,
)

DEFAULT_MAX_TRIALS = 100


def sweep(
    set_params: Annotated[
        list[str],
        typer.Option(
            "--set-param",
            "-S",
            help="KEY=V1,V2,... as `dvc exp run -S` takes it (`file.yaml:KEY=...` for another params "
            "file); several -S make a cross product.",
            show_default=False,
        ),
    ],
    repo: RepoOption = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Trials at once (default: CPUs).", show_default=False),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", help="The metric that picks the best trial (default: the first).", show_default=False
        ),
    ] = None,
    maximize: Annotated[
        bool, typer.Option("--maximize/--minimize", help="Whether a larger --metric is better.")
    ] = True,
    per_stage: Annotated[
        bool, typer.Option("--per-stage", help="Reproduce each trial stage by stage (`run-a --per-stage`).")
    ] = False,
    save: Annotated[
        bool, typer.Option("--save/--no-save", help="Save every completed trial as a DVC experiment.")
    ] = True,
    max_trials: Annotated[
        int, typer.Option("--max-trials", help="Refuse a grid with more trials than this.")
    ] = DEFAULT_MAX_TRIALS,
    dask_address: Annotated[
        str | None,
        typer.Option(
            "--dask-address",
            help="Run the trials on this Dask scheduler (tcp://HOST:PORT); workers that do not see this "
            "repository run each trial in a clone of this commit (docs/remote.md).",
            show_default=False,
        ),
    ] = None,
    shared_disk: SharedDiskOption = None,
    search: Annotated[
        str | None,
        typer.Option(
            "--search",
            help="Search instead of a grid: tpe, random or grid, with Optuna; -S then takes "
            "choice(a,b), range(2,10), interval(0.001,0.1), tag(log, interval(...)).",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            help="New trials of a --search (default for grid: the whole grid).",
            show_default=False,
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="Keep the search's study under this name (in .dvc/tmp/dvcflow-studies); "
            "resume it if it exists.",
            show_default=False,
        ),
    ] = None,
    prune: Annotated[
        str | None,
        typer.Option(
            "--prune",
            help="median or hyperband: stop a trial whose --metric per step (dvclive or a plots file) "
            "falls behind.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the search's sampler.", show_default=False)
    ] = None,
    apply_best: Annotated[
        bool,
        typer.Option("--apply-best", help="At the end, `dvc exp apply` the best trial to the workspace."),
    ] = False,
    resource: ResourceOption = None,
    json: JsonOption = False,
    ephemeral: EphemeralOption = False,
) -> None:
    """Run every combination of the -S values, in parallel, each in its own workspace sharing the DVC cache.

    Your workspace is not touched; each completed trial becomes a DVC experiment (`dvc exp show`).

    Example: dvcflow sweep -S train.C=0.1,1,10 -S split.test_size=0.2,0.3 --jobs 2 --metric accuracy

    Search: dvcflow sweep --search tpe --trials 16 -S 'train.C=tag(log, interval(0.01,100))' --metric accuracy

    Stages that declare a GPU (docs/resources.md): dvcflow sweep -S train.seed=1,2,3 --resource gpu=2
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.sweep import SweepProgressView, sweep_json, sweep_summary
    from dvcflow.services.pipeline import Pipeline

    capacity = capacity_from(resource)
    pipeline = Pipeline(repo, ephemeral=ephemeral, announce=render.info, tracebacks=debug_requested())
    with SweepProgressView(enabled=not json) as progress:
        report = pipeline.sweep(
            *set_params,
            jobs=jobs,
            metric=metric,
            maximize=maximize,
            per_stage=per_stage,
            save=save,
            max_trials=max_trials,
            dask_address=dask_address,
            search=search,
            trials=trials,
            study=study,
            prune=prune,
            seed=seed,
            apply_best=apply_best,
            shared_disk=shared_disk,
            resources=capacity,
            on_progress=progress.update,
        )
    if json:
        sweep_json(report)
    else:
        sweep_summary(report)
    raise typer.Exit(report.exit_code)
