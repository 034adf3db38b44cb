"""DVC decides: DVC owns the DAG and what is up to date; Prefect operates `dvc repro` (logs, retries, run
history)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import task_run
from prefect.states import Failed

from dvcflow.api.artifacts import artifact_key, publish_metrics_artifact
from dvcflow.api.execution import remember_task_run, untagged_tasks
from dvcflow.api.failures import failed, retry_unless
from dvcflow.core.errors import DvcflowError, StageCommandError
from dvcflow.core.metrics import MetricsSnapshot, snapshot_of
from dvcflow.core.records import ReproOutcome, StagesReport
from dvcflow.core.resources import NO_GRANT, Grant
from dvcflow.dvc import commands
from dvcflow.dvc.metrics_files import read_metrics

FLOW_NAME = "Prefect operates DVC pipeline"
FAIL_ONCE_MESSAGE = "Intentional one-time failure to demonstrate retries."
DEFAULT_RETRIES = 1
RETRY_DELAY_S = 2


def retry_helps(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry unless the failure is one no retry fixes.

    dvcflow's own errors say which they are (`StageCommandError`: a stage's command failed, worth
    another attempt; any other `DvcflowError`: missing data, an invalid dvc.yaml, an unknown target...).
    Anything else, such as `--fail-once`'s error or a killed process, gets its retries; nothing does
    after a Ctrl-C (`children.interrupted`).
    """
    return retry_unless(
        state, lambda exc: isinstance(exc, DvcflowError) and not isinstance(exc, StageCommandError)
    )


# The stages each `dvc repro` task run visited, across its attempts, until its caller takes them (every
# caller must, with `take_visited`, or this grows in a long-lived process): a retry starts a new
# `dvc repro` that skips what the failed attempt finished, which still ran in this flow run.
_visited: dict[str, StagesReport] = {}
_visited_lock = threading.Lock()


def _record(task_run_id: str | None, attempt: StagesReport) -> None:
    if task_run_id is None:
        return
    with _visited_lock:
        key = str(task_run_id)
        _visited[key] = _visited.get(key, StagesReport()).merged(attempt)


def take_visited(task_run_id: object) -> StagesReport:
    """The stages a `dvc_repro_task` run visited, forgotten here once taken."""
    with _visited_lock:
        return _visited.pop(str(task_run_id), StagesReport())


@task(name="dvc repro", retries=DEFAULT_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def dvc_repro_task(
    repo_root: Path,
    *,
    fail_once: bool = False,
    args: tuple[str, ...] = (),
    with_metrics: bool = False,
    grant: Grant = NO_GRANT,
    share: bool = False,
) -> MetricsSnapshot | State[Any] | None:
    """Run `dvc repro ARGS` in the repo root, every output line into this task's log; with
    `with_metrics`, return the metrics that DVC process read afterwards (None if it could not).
    `grant`: what the whole `dvc repro` holds (a sweep's trial: `engine.task.hold`, with `share` the
    machine's limits; its GPU indices in every stage's `CUDA_VISIBLE_DEVICES`)."""
    remember_task_run()
    if fail_once and task_run.run_count <= 1:
        raise RuntimeError(FAIL_ONCE_MESSAGE)  # Prefect's own retry of a raised error, as the tour shows
    logger = get_run_logger()
    logger.info("Running: %s", " ".join(["dvc", "repro", *args]))
    logger.info("CWD: %s", repo_root)
    stages = commands.StageLog()

    def on_line(line: str) -> None:
        stages.feed(line)
        logger.info(line)

    try:
        with _holding(grant, share) as environment:
            run = commands.repro(
                repo_root, ["repro", *args], on_line=on_line, metrics=with_metrics, extra_env=environment
            )
    finally:
        _record(task_run.id, stages.report())
    if not run.result.ok:  # the failed stage's own words as the state's message (`api.failures`)
        return failed(commands.failure(run.result))
    return None if run.metrics is None else snapshot_of(run.metrics)


def _holding(grant: Grant, share: bool) -> contextlib.AbstractContextManager[Mapping[str, str]]:
    """`engine.task.hold` for a grant that holds something (imported only then: run-a holds nothing),
    released when the command ends (no launcher waits for this task's release)."""
    if grant.empty:
        return contextlib.nullcontext({})
    from dvcflow.engine.task import hold

    return hold(grant, share, aside=False)


@task(name="dvc push", retries=DEFAULT_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def dvc_push_task(repo_root: Path, stages: tuple[str, ...] = ()) -> State[Any] | None:
    """Upload the outputs of `stages` (all tracked data when empty) to the default DVC remote."""
    remember_task_run()
    logger = get_run_logger()
    logger.info("Running: %s", " ".join(["dvc", "push", *stages]))
    result = commands.push(repo_root, stages, on_line=logger.info)
    if not result.ok:
        return failed(commands.failure(result))
    return None


@task(name="metrics summary", cache_policy=NO_CACHE)
def metrics_summary_task(repo_root: Path, shown: MetricsSnapshot | None = None) -> MetricsSnapshot:
    """Log the metrics the pipeline declares, as the JSON a script would read, and publish them as a
    table artifact (one key per repository) for the UI and `dvcflow metrics --history`.

    `shown`: the metrics as the `dvc repro` process already read them; otherwise DVC reads them here."""
    remember_task_run()
    snapshot = shown if shown is not None else read_metrics(repo_root)
    logger = get_run_logger()
    logger.info("Metrics: %s", snapshot.to_json())
    for path, error in snapshot.errors:
        logger.warning("Metrics file %s unreadable: %s", path, error)
    if not snapshot.empty:
        key = artifact_key(repo_root)
        try:
            publish_metrics_artifact(snapshot, key, description=f"Metrics of `{repo_root}` after this run")
        except Exception as exc:  # the metrics are logged above; a failed UI copy must not fail the run
            logger.warning("Could not publish the metrics artifact %s: %s", key, exc)
    return snapshot


@flow(name=FLOW_NAME)
def dvc_pipeline_flow(
    repo_root: Path,
    fail_once: bool = False,
    show_metrics: bool = True,
    repro_args: tuple[str, ...] = (),
    retries: int = DEFAULT_RETRIES,
    push: tuple[str, ...] | None = None,
) -> ReproOutcome | State[Any]:
    """Operate the DVC pipeline via `dvc repro ARGS`; then, if asked, `dvc push` the outputs (`push`
    names the stages, empty for all) and log the metrics."""
    with untagged_tasks():
        return _operate(repo_root, fail_once, show_metrics, repro_args, retries, push)


def _operate(
    repo_root: Path,
    fail_once: bool,
    show_metrics: bool,
    repro_args: tuple[str, ...],
    retries: int,
    push: tuple[str, ...] | None,
) -> ReproOutcome | State[Any]:
    repro = dvc_repro_task.with_options(retries=retries, retry_condition_fn=retry_helps)
    state = repro(
        repo_root, fail_once=fail_once, args=repro_args, with_metrics=show_metrics, return_state=True
    )
    stages = take_visited(state.state_details.task_run_id)
    if state.is_failed():  # the flow fails with the task's error, and still says which stages ran
        return Failed(
            message=state.message or "the `dvc repro` task failed", data=ReproOutcome(stages=stages)
        )
    # Anything else that did not complete (cancelled, crashed) ends the flow here; a completed task's
    # result is its metrics (a failure is a returned state: `api.failures`).
    shown = cast("MetricsSnapshot | None", state.result())
    if push is not None:
        dvc_push_task.with_options(retries=retries, retry_condition_fn=retry_helps)(repo_root, push)
    metrics = metrics_summary_task(repo_root, shown) if show_metrics else None
    return ReproOutcome(stages=stages, metrics=metrics)
