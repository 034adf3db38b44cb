"""`Pipeline.sweep`: trials of a parameter grid, or of an Optuna search, each a child flow run of one sweep
flow run, in workspaces of their own; the best one picked, and optionally applied.

Provides `run_sweep` and its `SweepOptions`. The checks, connecting and the run lock are those of every run
(`dvcflow.services.launch`); the trials themselves are `dvcflow.engine.trials` and `dvcflow.flows.sweep`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from dvcflow.api.execution import caller_flow_run
from dvcflow.core.errors import UsageError
from dvcflow.core.resources import Resources, cpu_count
from dvcflow.core.selection import EVERYTHING
from dvcflow.core.settings import CONSOLE_LEVEL
from dvcflow.dvc import repository
from dvcflow.engine.resources import resources_for, share
from dvcflow.proc import children
from dvcflow.services.launch import check_dask_address, connect_run, execute_exclusively

if TYPE_CHECKING:
    from dvcflow.engine.trials import SweepProgress, SweepReport


class SweepOptions(TypedDict, total=False):
    """`run_sweep`'s (and `Pipeline.sweep`'s) keyword arguments for how the grid runs; defaults there."""

    jobs: int | None
    metric: str | None
    maximize: bool
    per_stage: bool
    save: bool
    max_trials: int
    dask_address: str | None
    search: str | None
    trials: int | None
    study: str | None
    prune: str | None
    seed: int | None
    apply_best: bool
    shared_disk: bool | None
    resources: Mapping[str, int] | None


def run_sweep(
    repo: Path | None = None,
    *,
    set_params: Sequence[str],
    jobs: int | None = None,
    metric: str | None = None,
    maximize: bool = True,
    per_stage: bool = False,
    save: bool = True,
    max_trials: int = 100,
    dask_address: str | None = None,
    search: str | None = None,
    trials: int | None = None,
    study: str | None = None,
    prune: str | None = None,
    seed: int | None = None,
    apply_best: bool = False,
    shared_disk: bool | None = None,
    resources: Mapping[str, int] | None = None,
    ephemeral: bool = False,
    debug: bool = False,
    announce: Callable[[str], None] = lambda _: None,
    on_progress: Callable[[SweepProgress], None] = lambda _: None,
) -> SweepReport:
    """`dvcflow sweep`: every trial of the `-S` grid as a child flow run, at most `jobs` at once (default:
    the CPUs here; on a Dask cluster, every trial, the cluster deciding). With `search`, `trials` points
    asked of an Optuna study as trials end (`dvcflow.engine.search`). On Dask, `shared_disk` (None: asked
    of the workers) says whether they run the trials in this repository's worktrees or each in a clone of
    this commit, its experiment pulled home (`dvcflow.services.remote_stages`, docs/remote.md).
    `resources`: the capacity of each resource the stages declare, as for `run-a --per-stage`; trials
    queue for it as stages do (docs/resources.md).

    All input is checked before the first flow run; the workspace is never written to, unless
    `apply_best` applies the best trial at the end (`dvc exp apply`).
    """
    import shutil
    import tempfile

    from dvcflow.dvc import experiments
    from dvcflow.engine.trials import SweepReport, SweepSession, TrialSpec, pick_best, registered

    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if shared_disk is not None and dask_address is None:
        raise UsageError("--shared-disk needs --dask-address")
    _check_search_flags(search, trials, study, prune, seed, metric, dask_address, apply_best, save)
    root = repository.find_repo_root(repo)
    repository.check_params_files(root)
    baseline = experiments.git_baseline(root)
    if search is None:
        grid = experiments.expand_grid(root, set_params)
        if len(grid) > max_trials:
            raise UsageError(
                f"{len(grid)} trials is more than --max-trials {max_trials}",
                hint="fewer values, or raise --max-trials",
            )
    if metric is not None:
        _check_metric(root, metric)
    clone, lock = None, None
    if dask_address is not None:
        check_dask_address(dask_address)
    # Before `plan_clones`, which may push a ref to the git remote: bad input changes nothing.
    declared = _resources(root, resources, dask_address)
    if dask_address is not None and shared_disk is not True:
        from dvcflow.dvc.clone_stage import lock_text
        from dvcflow.services.remote_stages import plan_clones

        clone = plan_clones(root, dask_address, shared_disk, announce, unit="trial")
        lock = lock_text(root, (), ()) if clone is not None else None
    searching = None
    if search is not None:
        assert metric is not None  # checked with the flags
        searching = _search(root, set_params, search, trials, study, prune, seed, metric, maximize, jobs)
        specs: tuple[TrialSpec, ...] = ()
        planned = searching.trials
        shown = [{param.label: param.text.partition("=")[2] for param in searching.plan.space}]
    else:
        specs = tuple(TrialSpec(index, overrides) for index, overrides in enumerate(grid, start=1))
        planned = len(specs)
        shown = [spec.values() for spec in specs]
    with _trial_logs_off_the_console():  # from before Prefect sets up its logging
        keep_link = connect_run(root, ephemeral, announce)
        declared = share(declared, keep_link, announce)
        from dvcflow.flows.sweep import sweep_flow, trial_runner

        limit = min(jobs or (cpu_count() if dask_address is None else planned), planned)
        experiments.prune_workspaces(root)
        scratch = Path(tempfile.mkdtemp(prefix="dvcflow-sweep-"))
        sweep = SweepSession(
            root,
            baseline,
            specs,
            scratch,
            experiments.cache_dir(root),
            save=save,
            per_stage=per_stage,
            metric=metric,
            maximize=maximize,
            on_progress=on_progress,
            search=searching,
            clone=clone,
            lock=lock,
            resources=declared,
            dask_address=dask_address,
        )
        try:
            with registered(sweep) as session_id:
                record = execute_exclusively(
                    root,
                    announce,
                    sweep_flow.with_options(task_runner=trial_runner(limit, dask_address)),
                    keep_link,
                    debug,
                    session_id=session_id,
                    grid=shown,
                    jobs=limit,
                )
        except KeyboardInterrupt:  # outside the flow's own handling: stop what runs, then leave
            sweep.interrupt()
            children.interrupt_commands()
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            experiments.prune_workspaces(root)
    results = sweep.results()
    chosen, best = pick_best(results, metric, maximize)
    applied = None
    if apply_best and best is not None and record.state != "Cancelled":
        applied = results[best - 1].name
        announce(f"Applying the best trial to the workspace: dvc exp apply {applied}")
        experiments.apply_experiment(root, applied, on_line=lambda _: None)
    return SweepReport(
        record, results, sweep.varying, chosen, maximize, best, save,
        notes=tuple(sweep.notes), search=sweep.summary, applied=applied,
    )  # fmt: skip


def _check_search_flags(
    search: str | None,
    trials: int | None,
    study: str | None,
    prune: str | None,
    seed: int | None,
    metric: str | None,
    dask_address: str | None,
    apply_best: bool,
    save: bool,
) -> None:
    """The search's flags alone, before anything is read: each needs `--search`, which needs a metric."""
    from dvcflow.engine.search import check_plan

    if apply_best and not save:
        raise UsageError("--apply-best needs the trials saved as experiments (not --no-save)")
    if search is None:
        given = {"--trials": trials, "--study": study, "--prune": prune, "--seed": seed}
        for flag, value in given.items():
            if value is not None:
                raise UsageError(f"{flag} needs --search tpe|random|grid")
        return
    check_plan(search, trials, prune, study)
    if metric is None:
        raise UsageError(f"--search {search} needs --metric NAME (and --maximize or --minimize)")
    if dask_address is not None:
        raise UsageError("--search runs its trials on this machine: not with --dask-address")


def _search(
    root: Path,
    set_params: Sequence[str],
    strategy: str,
    trials: int | None,
    study: str | None,
    prune: str | None,
    seed: int | None,
    metric: str,
    maximize: bool,
    jobs: int | None,
) -> Any:
    """The search space from `-S`, and its study (created, or loaded to resume it): a `Search`."""
    from dvcflow.dvc.search_space import parse_search_space
    from dvcflow.engine.search import Search, SearchPlan

    space = parse_search_space(root, set_params, grid=strategy == "grid")
    plan = SearchPlan(strategy, trials or 0, space, metric, maximize, study, prune, seed)
    return Search(plan, root, jobs or cpu_count())


def _resources(root: Path, capacity: Mapping[str, int] | None, dask_address: str | None) -> Resources:
    """What the stages declare and how much there is, checked before any trial (one line each), read
    through a DVC session of the repository that is closed again: the trials open their own."""
    from dvcflow.engine.executor import close_session

    try:
        return resources_for(root, EVERYTHING, capacity, dask_address=dask_address)
    finally:
        close_session(root)


def _check_metric(root: Path, metric: str) -> None:
    """`--metric` must name a metric the pipeline reports; checked against the workspace's metrics
    files when they exist (a fresh clone has none yet, and then the name is checked at the end)."""
    from dvcflow.dvc.metrics_files import read_metrics

    known = read_metrics(root).flat()
    if known and metric not in known:
        raise UsageError(f"--metric {metric}: the pipeline has no such metric (it has: {', '.join(known)})")


@contextlib.contextmanager
def _trial_logs_off_the_console() -> Iterator[None]:
    """While the trials run, their logs go to the UI only: interleaved on the terminal they say less than
    the progress and the final table (which names each failure). Not inside a caller's flow, which keeps
    its own console, nor when the caller set the level; the process's environment is as it was after."""
    if caller_flow_run() is not None or CONSOLE_LEVEL in os.environ:
        yield
        return
    os.environ[CONSOLE_LEVEL] = "CRITICAL"
    try:
        yield
    finally:
        os.environ.pop(CONSOLE_LEVEL, None)
