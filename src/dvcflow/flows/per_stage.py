"""Option C: one Prefect task per DVC stage, independent stages in parallel; DVC still decides what runs.

Provides:
- `stage_task`: reproduces one stage with `dvc --wait-for-lock repro -s`, or marks it up to date or
  not run, and ends in a state the run summary can tell apart (see the `*_STATE` names).
- `run_stages`: the one function that maps a `Plan` to tasks (names, retries, `wait_for` edges).
- `per_stage_flow`: reads the graph and `dvc status` once, runs the stages, fails if any stage failed.
- `task_runner`: threads on this machine, or prefect-dask's `DaskTaskRunner` on an existing cluster.
"""

from __future__ import annotations

import queue
import time
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import allow_failure, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dvcflow import dvcrepo
from dvcflow.flows.repro import metrics_summary_task
from dvcflow.metrics import MetricsSnapshot
from dvcflow.stage_graph import Decision, Plan, PlannedStage, plan

FLOW_NAME = "Prefect runs DVC stages"
RETRY_DELAY_S = 2
UP_TO_DATE_STATE = "UpToDate"  # a Completed state: DVC had nothing to do
NOT_RUN_STATE = "NotRun"  # a Cancelled state: an upstream stage failed, or the run stopped first
RECORD_TIMEOUT_S = 20.0
SHOWN_NAMES = 12
SPARE_THREADS = 4


class Action(StrEnum):
    """What `stage_task` does with its stage."""

    REPRODUCE = "reproduce"
    """`dvc repro -s`: the stage changed, or something upstream did; DVC decides whether it runs."""
    MARK_UP_TO_DATE = "mark up to date"
    """Nothing changed here or upstream (by the one `dvc status` at the start): no process at all."""
    NOT_RUN = "not run"
    """An upstream stage failed, or another stage failed without --keep-going."""


@task(name="stage", cache_policy=NO_CACHE, retry_delay_seconds=RETRY_DELAY_S)
def stage_task(repo_root: Path, stage: str, action: Action, reason: str) -> State[Any]:
    """One DVC stage; its output lines go into this task's log."""
    logger = get_run_logger()
    if action is Action.NOT_RUN:
        logger.warning("Stage '%s' not run: %s", stage, reason)
        return Cancelled(name=NOT_RUN_STATE, message=f"not run: {reason}")
    if action is Action.MARK_UP_TO_DATE:
        logger.info(
            "%s didn't change, skipping", f"'{stage}'" if stage.endswith(".dvc") else f"Stage '{stage}'"
        )
        return Completed(name=UP_TO_DATE_STATE, message="nothing changed here or upstream")
    logger.info("Running: dvc --wait-for-lock repro -s %s (%s)", stage, reason)
    run = dvcrepo.repro_stage(repo_root, stage, on_line=logger.info)
    if not run.result.ok:
        raise dvcrepo.failure(run.result)
    if run.up_to_date:
        return Completed(name=UP_TO_DATE_STATE, message="DVC found it up to date")
    return Completed(message="reproduced")


def _action(
    stage: PlannedStage, blamed: dict[str, str], first_failure: str | None, keep_going: bool
) -> tuple[Action, str, str | None]:
    """What to do with a stage whose upstream stages have all finished, why, and which failed
    stage is to blame if it does not run."""
    culprits = sorted({blamed[up] for up in stage.upstream if up in blamed})
    if culprits:
        named = ", ".join(f"'{name}'" for name in culprits)
        return Action.NOT_RUN, f"upstream stage {named} failed", culprits[0]
    if first_failure is not None and not keep_going:
        return Action.NOT_RUN, f"stage '{first_failure}' failed and --keep-going is off", None
    if stage.decision is Decision.UP_TO_DATE:
        return Action.MARK_UP_TO_DATE, stage.reason, None
    return Action.REPRODUCE, stage.reason, None


def _report_done(finished: queue.Queue[str], name: str, _: PrefectFuture[Any]) -> None:
    finished.put(name)


def run_stages(
    stage_plan: Plan, repo_root: Path, *, jobs: int, keep_going: bool, retries: int
) -> dict[str, PrefectFuture[Any]]:
    """Submit one task per stage, named after it, as soon as its upstream stages have finished.

    `wait_for` names the upstream futures so the UI draws the pipeline's graph; they are already
    done, so no worker ever blocks, and a stage never runs while an upstream one does (DVC's
    per-path locks would fail it as "busy"). At most `jobs` stages reproduce at once. Descendants
    of a failure end `NotRun`; without `keep_going` so does every stage not started yet. (Prefect
    refuses a `NotRun` upstream even under `allow_failure`, which admits only failed ones, so an
    edge between two stages that did not run is left out.)
    """
    stages = {stage.name: stage for stage in stage_plan.stages}
    waiting = [stage.name for stage in stage_plan.stages]  # wave order
    futures: dict[str, PrefectFuture[Any]] = {}
    finished: queue.Queue[str] = queue.Queue()
    done: set[str] = set()
    blamed: dict[str, str] = {}  # failed or not-run stage → the failed stage that caused it
    reproducing: set[str] = set()
    not_run: set[str] = set()
    first_failure: str | None = None

    def submit(stage: PlannedStage, action: Action, reason: str) -> None:
        task_for_stage = stage_task.with_options(
            name=stage.name,
            task_run_name=stage.name,
            retries=retries if action is Action.REPRODUCE else 0,
        )
        future = task_for_stage.submit(
            repo_root,
            stage.name,
            action,
            reason,
            wait_for=[allow_failure(futures[up]) for up in stage.upstream if up not in not_run],
            return_state=False,
        )
        futures[stage.name] = future
        future.add_done_callback(partial(_report_done, finished, stage.name))

    while True:
        for name in list(waiting):
            stage = stages[name]
            if not all(up in done for up in stage.upstream):
                continue
            action, reason, culprit = _action(stage, blamed, first_failure, keep_going)
            if action is Action.REPRODUCE:
                if len(reproducing) >= jobs:
                    continue
                reproducing.add(name)
            if culprit is not None:
                blamed[name] = culprit
            if action is Action.NOT_RUN:
                not_run.add(name)
            waiting.remove(name)
            submit(stage, action, reason)
        if len(done) == len(futures):  # nothing in flight
            if waiting:
                raise RuntimeError(f"stages that can never start: {', '.join(waiting)}")
            break
        name = finished.get()
        future = futures[name]
        future.wait()
        done.add(name)
        reproducing.discard(name)
        if not future.state.is_completed() and future.state.name != NOT_RUN_STATE:
            blamed[name] = name
            first_failure = first_failure or name
    return futures


def _await_records(task_run_ids: list[UUID]) -> None:
    """Wait until the API shows every task run in its final state.

    The server records task runs from events, a moment after they happen; the run summary reads
    them back as soon as the flow ends and would otherwise miss stages of a large pipeline.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    deadline = time.monotonic() + RECORD_TIMEOUT_S
    chunks = [task_run_ids[i : i + 200] for i in range(0, len(task_run_ids), 200)]  # API page limit
    with get_client(sync_client=True) as client:
        while chunks:
            chunk = chunks[0]
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)))
            if len(runs) == len(chunk) and all(
                run.state is not None and run.state.is_final() for run in runs
            ):
                chunks.pop(0)
            elif time.monotonic() > deadline:
                get_run_logger().warning("The Prefect API has not recorded every task run yet")
                return
            else:
                time.sleep(0.1)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


@flow(name=FLOW_NAME)
def per_stage_flow(
    repo_root: Path, jobs: int = 4, keep_going: bool = False, retries: int = 1, show_metrics: bool = True
) -> MetricsSnapshot | State[Any] | None:
    """Reproduce the DVC pipeline stage by stage, independent stages in parallel."""
    logger = get_run_logger()
    stage_plan = plan(dvcrepo.read_pipeline(repo_root))
    logger.info(
        "%d stages in %d waves; %d to reproduce, %d up to date (by dvc status)",
        len(stage_plan.stages),
        len(stage_plan.waves),
        len(stage_plan.would_run),
        len(stage_plan.up_to_date),
    )
    futures = run_stages(stage_plan, repo_root, jobs=jobs, keep_going=keep_going, retries=retries)
    states = {name: future.state for name, future in futures.items()}
    failed = [
        name for name, state in states.items() if not state.is_completed() and state.name != NOT_RUN_STATE
    ]
    not_run = [name for name, state in states.items() if state.name == NOT_RUN_STATE]
    up_to_date = [name for name, state in states.items() if state.name == UP_TO_DATE_STATE]
    ran = [name for name, state in states.items() if state.is_completed() and state.name != UP_TO_DATE_STATE]
    logger.info(
        "%d ran, %d up to date, %d failed, %d not run", len(ran), len(up_to_date), len(failed), len(not_run)
    )
    metrics = metrics_summary_task.submit(repo_root) if show_metrics and not failed else None
    _await_records([future.task_run_id for future in futures.values()])  # while the metrics are read
    snapshot: MetricsSnapshot | None = None
    if metrics is not None:
        snapshot = metrics.result()
        _await_records([metrics.task_run_id])
    if failed:
        message = f"{len(failed)} stage(s) failed: {_names(failed)}"
        if not_run:
            message += f"; {len(not_run)} not run: {_names(not_run)}"
        return Failed(message=message)
    return snapshot


def task_runner(jobs: int, dask_address: str | None) -> TaskRunner[Any]:
    """Threads on this machine; with `dask_address`, the workers of an existing Dask cluster."""
    if dask_address is None:
        # `run_stages` keeps reproducing stages to `jobs`; the spare threads mark stages up to date
        # or not run without waiting behind them.
        return ThreadPoolTaskRunner(max_workers=jobs + SPARE_THREADS)
    from prefect_dask.task_runners import DaskTaskRunner  # an optional extra: `dvcflow[dask]`

    runner: TaskRunner[Any] = DaskTaskRunner(address=dask_address)
    return runner
