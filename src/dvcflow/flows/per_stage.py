"""`run-a --per-stage`: one Prefect task per DVC stage, independent stages in parallel; DVC decides what runs.

Provides:
- `per_stage_flow`: reads the graph and `dvc status` once (one in-process DVC repository for the whole
  run), plans the selected stages, runs them through the stage engine, fails if any stage failed.
- `finish`: the summary both engine flows end with (counts, metrics, the failed flow state).
- `publish_dag`: the run's stage DAG as a Mermaid markdown artifact.
- `task_runner`: threads on this machine, or prefect-dask's `DaskTaskRunner` on an existing cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.results import ResultStore
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dvcflow.api.execution import declare_task_runs, untagged_tasks
from dvcflow.core.clones import CloneSource
from dvcflow.core.errors import PipelineError
from dvcflow.core.graph import Plan, StageKind, plan
from dvcflow.core.metrics import MetricsSnapshot, snapshot_of
from dvcflow.core.resources import NO_RESOURCES, Resources
from dvcflow.core.selection import EVERYTHING, Selection
from dvcflow.dvc.session import PipelineSession
from dvcflow.engine.executor import close_session, open_session
from dvcflow.engine.scheduler import run_stages, shared_pool
from dvcflow.engine.task import (
    NOT_RUN_STATE,
    NOTHING_RAN_STATES,
    PULLED_STATE,
    RESTORED_STATE,
    UP_TO_DATE_STATE,
    PrefectLauncher,
)
from dvcflow.flows.repro import dvc_push_task, metrics_summary_task, retry_helps

FLOW_NAME = "Prefect runs DVC stages"
SHOWN_NAMES = 12
SPARE_THREADS = 4


def publish_dag(stage_plan: Plan, repo_root: Path) -> None:
    """The run's DAG as a Mermaid chart in a markdown artifact; a failure to publish only warns."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(
            markdown=f"```mermaid\n{stage_plan.mermaid()}\n```\n",
            description=f"The stage DAG of `{repo_root}` for this run",
        )
    except Exception as exc:
        get_run_logger().warning("Could not publish the DAG artifact: %s", exc)


def schedule(
    stage_plan: Plan, launcher: PrefectLauncher, resources: Resources, jobs: int, keep_going: bool
) -> None:
    """`run_stages` within the run's resources: this machine's capacity, or on Dask the cluster's (which
    counts the amounts itself; mutex groups are still kept apart here); what is free may be shared with
    other runs of this process (`resources.pool`: a sweep's trials)."""
    if not resources.empty:
        get_run_logger().info(
            "Resources: %d stage(s) declare needs; capacity %s",
            len(resources.demands),
            "of the Dask workers" if resources.dask else resources.capacity,
        )
    capacity = None if resources.dask else resources.capacity
    pool = shared_pool(resources.pool)
    run_stages(stage_plan, launcher, jobs=jobs, keep_going=keep_going, capacity=capacity, pool=pool)


def run_plan(
    stage_plan: Plan,
    repo_root: Path,
    session: PipelineSession,
    selection: Selection,
    selected: tuple[str, ...],
    resources: Resources,
    *,
    jobs: int,
    keep_going: bool,
    retries: int,
    clones: CloneSource | None,
    store: ResultStore | None = None,
    **in_place: Any,
) -> PrefectLauncher:
    """The plan's stages run (`schedule`), in place (`PrefectLauncher`, with `in_place`'s options) or, with
    `clones`, each to reproduce in a clone of this commit: what the clones will pull is pushed first, and
    their `dvc.lock` entries are settled here afterwards. With `store` (run-b), Prefect's cache answers
    first, in clones too. The launcher, whose futures the flow then finishes."""
    launcher: PrefectLauncher
    if clones is None:
        launcher = PrefectLauncher(
            repo_root, session, retries=retries, force=selection.force, resources=resources, store=store,
            **in_place,
        )  # fmt: skip
        schedule(stage_plan, launcher, resources, jobs, keep_going)
        return launcher
    from dvcflow.engine.cached_clones import CachedCloneLauncher
    from dvcflow.engine.clone_task import CloneLauncher

    dvc_push_task(repo_root)  # what the clones will pull: the sources and the outputs up to date
    options: dict[str, Any] = {
        "order": selected, "retries": retries, "force": selection.force, "resources": resources
    }  # fmt: skip
    cloned = (
        CloneLauncher(repo_root, session, clones, **options)
        if store is None
        else CachedCloneLauncher(repo_root, session, clones, store=store, **options)
    )
    schedule(stage_plan, cloned, resources, jobs, keep_going)
    cloned.settle(get_run_logger().info)
    return cloned


def verify_sources(session: PipelineSession, selected: tuple[str, ...]) -> None:
    """The selected `.dvc` data sources verified by DVC here, in the flow (their new hashes recorded in
    their `.dvc` files), before anything is pushed or planned: stages in clones get those files as they
    are then (`dvc.clone_stage.sent_files`), and a worker that does not see this disk could not verify
    them."""
    graph = session.snapshot(with_status=False).graph
    for name in selected:
        if graph[name].kind is StageKind.DATA_SOURCE and session.reproduce_by_dvc(name, force=False):
            get_run_logger().info("Data source %s changed: DVC verified it and recorded its new hash", name)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def finish(
    futures: dict[str, PrefectFuture[Any]],
    session: PipelineSession,
    *,
    show_metrics: bool,
    counts: bool = True,
    push: tuple[str, ...] | None = None,
    retries: int = 0,
) -> MetricsSnapshot | State[Any] | None:
    """Log what ran, read the metrics unless a stage failed (through the run's DVC session, whose index
    is loaded already), declare the run's task runs (all final); a `Failed` state naming the failed and
    not-run stages, else the metrics. With `push` (stage names, empty for all), a `dvc push` task
    uploads their outputs first, as run-a's does, unless a stage failed."""
    logger = get_run_logger()
    states = {name: future.state for name, future in futures.items()}
    failed = [
        name for name, state in states.items() if not state.is_completed() and state.name != NOT_RUN_STATE
    ]
    not_run = [name for name, state in states.items() if state.name == NOT_RUN_STATE]
    if counts:
        up_to_date = [name for name, state in states.items() if state.name == UP_TO_DATE_STATE]
        pulled = [name for name, state in states.items() if state.name == PULLED_STATE]
        restored = [name for name, state in states.items() if state.name == RESTORED_STATE]
        ran = [
            name
            for name, state in states.items()
            if state.is_completed() and state.name not in NOTHING_RAN_STATES
        ]
        logger.info(
            "%d ran, %s%s%d up to date, %d failed, %d not run",
            len(ran),
            f"{len(restored)} restored from DVC's run cache, " if restored else "",
            f"{len(pulled)} pulled from the DVC remote, " if pulled else "",
            len(up_to_date),
            len(failed),
            len(not_run),
        )
    task_runs = [future.task_run_id for future in futures.values()]
    if push is not None and not failed:
        with untagged_tasks():
            pushed = dvc_push_task.with_options(retries=retries, retry_condition_fn=retry_helps).submit(
                session.root, push
            )
        task_runs.append(pushed.task_run_id)
        pushed.result()  # a failed push fails the flow, as with run-a
    metrics: PrefectFuture[MetricsSnapshot] | None = None
    if show_metrics and not failed:
        try:
            shown: MetricsSnapshot | None = snapshot_of(session.metrics())
        except PipelineError:  # the task reads them again, and fails as it always did
            shown = None
        with untagged_tasks():
            metrics = metrics_summary_task.submit(session.root, shown)
    snapshot: MetricsSnapshot | None = None
    if metrics is not None:
        snapshot = metrics.result()
        task_runs.append(metrics.task_run_id)
    # Every task run is final now: the summary is built from this process's view of them rather than
    # read back from the server, which records them from events a moment later (`api.execution.execute`).
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        declare_task_runs(context.flow_run.id, task_runs)
    if failed:
        message = f"{len(failed)} stage(s) failed: {_names(failed)}"
        if not_run:
            message += f"; {len(not_run)} not run: {_names(not_run)}"
        # Then why, in each stage's own words: the flow run's message is what `dvcflow runs --json`, a
        # notification and the UI show.
        reasons = [f"{name}: {states[name].message}" for name in failed[:SHOWN_NAMES] if states[name].message]
        return Failed(message="\n".join([message, *reasons]))
    return snapshot


@flow(name=FLOW_NAME)
def per_stage_flow(
    repo_root: Path,
    jobs: int = 4,
    keep_going: bool = False,
    retries: int = 1,
    show_metrics: bool = True,
    selection: Selection = EVERYTHING,
    push: tuple[str, ...] | None = None,
    pull: bool = False,
    allow_missing: bool = False,
    resources: Resources = NO_RESOURCES,
    clones: CloneSource | None = None,
) -> MetricsSnapshot | State[Any] | None:
    """Reproduce the DVC pipeline stage by stage, independent stages in parallel; with `push`, upload
    the outputs of those stages (all when empty) to the default DVC remote afterwards. `pull` and
    `allow_missing` as `dvc repro --pull/--allow-missing`: the run cache is pulled first, then each
    stage whose only change is missing data is fetched (or skipped) when its turn comes. `resources`:
    what stages declare they need and the capacity (`dvcflow.core.resources`). `clones`: on workers that
    do not share this disk, each stage to reproduce runs in a clone of this commit (`engine.clone_task`),
    and the `.dvc` data sources are verified here first (`verify_sources`)."""
    logger = get_run_logger()
    session = open_session(repo_root)
    try:
        if pull:
            session.pull_run_cache(logger.warning)
        selected = session.select(selection)
        if clones is not None:
            verify_sources(session, selected)
        stage_plan = plan(session.snapshot(), selected, force=selection.force, demands=resources.demands)
        logger.info(
            "%d stages in %d waves; %d to reproduce, %d up to date (by dvc status)",
            len(stage_plan.stages),
            len(stage_plan.waves),
            len(stage_plan.would_run),
            len(stage_plan.up_to_date),
        )
        publish_dag(stage_plan, repo_root)
        launcher = run_plan(
            stage_plan, repo_root, session, selection, selected, resources, jobs=jobs, keep_going=keep_going,
            retries=retries, clones=clones, pull=pull, allow_missing=allow_missing,
        )  # fmt: skip
        return finish(launcher.futures, session, show_metrics=show_metrics, push=push, retries=retries)
    finally:
        close_session(repo_root)


def task_runner(jobs: int, dask_address: str | None) -> TaskRunner[Any]:
    """Threads on this machine; with `dask_address`, the workers of an existing Dask cluster."""
    if dask_address is None:
        # `run_stages` keeps running stages to `jobs`; the spare threads mark stages up to date
        # or not run without waiting behind them.
        return ThreadPoolTaskRunner(max_workers=jobs + SPARE_THREADS)
    from prefect_dask.task_runners import DaskTaskRunner  # an optional extra: `dvcflow[dask]`

    runner: TaskRunner[Any] = DaskTaskRunner(address=dask_address)
    return runner
