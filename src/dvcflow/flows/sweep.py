"""`dvcflow sweep`: one parent flow run, one child flow run per trial, at most `jobs` trials at once.

A trial: its own workspace (`experiments.create_workspace`), the `-S` values written as `dvc exp run -S`
writes them, the pipeline reproduced (`reproduce_trial`, the seam between run-a's `dvc repro` task
and the per-stage flow), its metrics read, then saved as a DVC experiment; the workspace is removed
whatever happens.

With `--search` (`dvcflow.engine.search`), the parent asks the study for the next point as each trial
ends, and a watcher reads the running trial's metric per step: a trial the pruner stops ends Pruned,
kept as an experiment of what it did so far.

On Dask workers that do not see this disk (`TrialJob.clone`), the parent first pushes the data the
trials will pull (`dvc push`); a trial runs in the worker's clone of this commit (`_trial_in_clone`),
saves its experiment there and pushes it to the git remote; the parent pulls the experiments home at
the end (`dvc exp pull`), so `dvc exp show` lists them as a local sweep's.

Ctrl-C: the parent marks the sweep cancelled (`SweepSession.interrupt`) and stops the commands of this
process; a trial on a Dask worker, which that does not reach, stops its own (`_stopped_when_cancelled`).
After a Ctrl-C nothing new runs here (`children.stream` stops a late command at once): the experiments
of trials that completed in clones stay on the git remote, and the sweep says how to pull them.
"""

from __future__ import annotations

import contextlib
import contextvars
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dvcflow.api.artifacts import artifact_key
from dvcflow.api.failures import state_message
from dvcflow.core.clones import CloneSource
from dvcflow.core.errors import PipelineError
from dvcflow.core.metrics import MetricsSnapshot, Scalar
from dvcflow.core.resources import cpu_count
from dvcflow.dvc import experiments, remote_data
from dvcflow.engine.search import StepWatcher
from dvcflow.engine.task import on_dask_workers_with
from dvcflow.engine.trials import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PRUNED,
    SweepSession,
    TrialJob,
    TrialResult,
    mark_pruned,
    pick_best,
    session,
    table_rows,
)
from dvcflow.flows.repro import dvc_push_task, dvc_repro_task, take_visited
from dvcflow.proc import children

SWEEP_FLOW_NAME = "dvcflow sweep"
TRIAL_FLOW_NAME = "sweep trial"
ARTIFACT_PREFIX = "dvcflow-sweep"
SEARCH_ARTIFACT_PREFIX = "dvcflow-search"
CANCEL_GRACE_S = 30.0  # after Ctrl-C: how long the trials get to stop and clean up
CANCEL_POLL_S = 0.5  # how often a trial on a Dask worker asks whether the sweep was interrupted


class TrialCancelled(Exception):
    """The sweep was interrupted while this trial ran."""


def _set_params(root: Path, trial: TrialJob, where: str) -> None:
    """The trial's `-S` values written as `dvc exp run -S` writes them; its log says where and which."""
    experiments.apply_params(root, trial.spec.overrides)
    logger = get_run_logger()
    logger.info("%s: %s", where, root)
    logger.info("Params: %s", ", ".join(override.text for override in trial.spec.overrides))


@task(name="workspace", cache_policy=NO_CACHE)
def workspace_task(trial: TrialJob) -> experiments.Workspace:
    """A worktree of the baseline with the workspace's changes and this trial's params."""
    folder = trial.scratch / f"trial-{trial.spec.index}"
    workspace = experiments.create_workspace(trial.root, folder, trial.baseline, trial.cache)
    _set_params(workspace.root, trial, "Workspace")
    return workspace


@task(name="workspace", cache_policy=NO_CACHE)
def clone_params_task(root: Path, trial: TrialJob) -> None:
    """This trial's params in its clone (which the trial flow holds while it runs), said in the UI."""
    assert trial.clone is not None
    _set_params(root, trial, f"Clone of {trial.clone.commit[:9]} on {socket.gethostname()}")


def reproduce_trial(workspace: Path, trial: TrialJob, *, pull: bool = False) -> MetricsSnapshot | None:
    """The seam: `dvc repro` as run-a runs it (one task), or the per-stage flow as a subflow; `pull` as
    `dvc repro --pull`. Returns the metrics when the `dvc repro` process could read them (it has DVC
    loaded already). The `dvc repro` holds the trial's grant (the machine's limits, its GPU indices in
    `CUDA_VISIBLE_DEVICES`); per stage, each stage takes its own from the sweep's shared pool."""
    if not trial.per_stage:
        args = ("--pull",) if pull else ()
        repro = dvc_repro_task.with_options(retries=0)(
            workspace, args=args, with_metrics=True, grant=trial.grant, share=trial.resources.share,
            return_state=True,
        )  # fmt: skip
        take_visited(repro.state_details.task_run_id)  # only run-a reports them; not kept for nobody
        return cast("MetricsSnapshot | None", repro.result())  # raises the task's error
    from dvcflow.flows.per_stage import per_stage_flow, task_runner

    jobs = max(1, cpu_count() // 2)
    state = per_stage_flow.with_options(task_runner=task_runner(jobs, None))(
        repo_root=workspace, jobs=jobs, keep_going=False, retries=0, show_metrics=False, pull=pull,
        resources=trial.stage_resources, return_state=True,
    )  # fmt: skip
    if not state.is_completed():
        raise PipelineError(state.message or "the per-stage flow did not complete")
    return None


@task(name="metrics", cache_policy=NO_CACHE)
def trial_metrics_task(workspace: Path, shown: MetricsSnapshot | None = None) -> dict[str, Scalar]:
    """The trial's metrics: as its `dvc repro` process read them, or read here."""
    snapshot = shown if shown is not None else experiments.read_trial_metrics(workspace)
    get_run_logger().info("Metrics: %s", snapshot.to_json())
    return snapshot.flat()


@task(name="dvc exp save", cache_policy=NO_CACHE)
def save_task(workspace: Path, name: str) -> str:
    """`dvc exp save -n NAME`: the trial becomes an experiment under the repository's HEAD."""
    logger = get_run_logger()
    logger.info("Running: dvc exp save --name %s", name)
    rev = experiments.save_experiment(workspace, name)
    logger.info("Saved experiment %s (%s)", name, rev[:7])
    return rev


@task(name="dvc exp save (pruned)", cache_policy=NO_CACHE)
def save_stopped_task(workspace: Path, name: str) -> str:
    """A pruned trial as an experiment: what it did until it was stopped (`save_stopped_experiment`)."""
    rev = experiments.save_stopped_experiment(workspace, name, f"{name} pruned by the search")
    get_run_logger().info("Saved the pruned trial as experiment %s (%s)", name, rev[:7])
    return rev


def _keep_pruned(trial: TrialJob, workspace: experiments.Workspace) -> State[Any]:
    """The trial's stage was stopped by the pruner: keep what it has as an experiment, end Pruned."""
    get_run_logger().info("Pruned by the search: its stage was stopped")
    try:
        metrics = experiments.read_trial_metrics(workspace.root).flat()
    except Exception:  # the stopped stage may have left no metrics file, or half of one
        metrics = {}
    rev = save_stopped_task(workspace.root, trial.name) if trial.save else None
    return Completed(
        name=PRUNED, message="pruned by the search", data={"metrics": metrics, "experiment": rev}
    )


@task(name="dvc exp push", cache_policy=NO_CACHE)
def push_experiment_task(root: Path, name: str) -> None:
    """A trial's experiment from its clone to the git remote the worker cloned (its data went by `dvc
    push`), for the caller to pull."""
    remote_data.push_experiment(root, name, "origin", get_run_logger().info)


def _trial_in_clone(trial: TrialJob, source: CloneSource) -> dict[str, Any]:
    """The trial on a worker that does not see the caller's disk: in this worker's worktree of the
    caller's commit with the caller's `dvc.lock` (kept for the next trial or stage of the commit), what it
    needs pulled from the DVC remote, what it wrote pushed, then saved as an experiment (as a local
    trial is) and pushed to the git remote for the caller to pull."""
    from dvcflow.dvc.clone_stage import prepared_clone

    with prepared_clone(source, trial.lock) as root, _stopped_when_cancelled(trial, root):
        clone_params_task(root, trial)
        shown = reproduce_trial(root, trial, pull=True)
        dvc_push_task(root)
        metrics = trial_metrics_task(root, shown)
        if trial.cancelled:
            raise TrialCancelled
        rev = save_task(root, trial.name) if trial.save else None
        if rev is not None:
            push_experiment_task(root, trial.name)
    return {"metrics": metrics, "experiment": rev}


@contextlib.contextmanager
def _stopped_when_cancelled(trial: TrialJob, folder: Path) -> Iterator[None]:
    """A trial on a Dask worker runs in another process than the sweep's, which a Ctrl-C's
    `interrupt_commands` does not reach: while the block runs, ask every `CANCEL_POLL_S` whether the sweep
    was interrupted (`TrialJob.cancelled`, as a local trial asks before its save) and, once it was, stop
    what runs in `folder` as the pruner stops a trial (`children.stop_commands_in`), at every poll from
    then on, so that a command started after stops too. Nothing to do off Dask (`cancel_event` empty)."""
    if not trial.cancel_event:
        yield
        return
    where, done = folder.resolve(), threading.Event()

    def watch() -> None:
        while not done.wait(CANCEL_POLL_S):
            if trial.cancelled:
                children.stop_commands_in(where)

    # Its context: the worker's, through which the trial's Dask client is found (`TrialJob.cancelled`).
    watcher = threading.Thread(
        target=contextvars.copy_context().run, args=(watch,), name="dvcflow-trial-cancel", daemon=True
    )
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@flow(name=TRIAL_FLOW_NAME, validate_parameters=False)  # built by the sweep itself
def sweep_trial_flow(trial: TrialJob, params: dict[str, str]) -> dict[str, Any] | State[Any]:
    """One trial of a sweep, in its own workspace; `params` shows its values in the UI. A trial the sweep
    cancelled ends Cancelled, in a clone too, and is never saved."""
    workspace: experiments.Workspace | None = None
    try:
        if trial.clone is not None:
            return _trial_in_clone(trial, trial.clone)
        with _stopped_when_cancelled(trial, trial.folder):
            workspace = workspace_task(trial)
            shown = reproduce_trial(workspace.root, trial)
            metrics = trial_metrics_task(workspace.root, shown)
            if trial.cancelled:
                raise TrialCancelled
            rev = save_task(workspace.root, trial.name) if trial.save else None
        return {"metrics": metrics, "experiment": rev}
    except Exception:
        if trial.cancelled:
            return Cancelled(message="the sweep was interrupted")
        if trial.pruned and workspace is not None:
            return _keep_pruned(trial, workspace)
        raise
    finally:
        if workspace is not None:
            experiments.remove_workspace(trial.root, workspace)


@task(name="trial", cache_policy=NO_CACHE)
def trial_task(trial: TrialJob, session_id: str | None = None) -> TrialResult:
    """Runs the trial's child flow run (here, or on a Dask worker) and returns how it ended; never
    fails the parent by itself. A search's trial (`session_id`: its sweep, in this process) has its
    steps watched for the pruner while it runs."""
    spec = trial.spec
    if trial.cancelled:
        return TrialResult(spec.index, "", spec.values(), CANCELLED, 0.0, message="not started: interrupted")
    sweep = session(session_id) if session_id is not None else None
    number = sweep.number(spec.index) if sweep is not None else None
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        watcher = None
        if sweep is not None and sweep.search is not None and number is not None:
            inner = trial.folder / experiments.dvc_subdir(trial.root)
            watcher = stack.enter_context(
                StepWatcher(
                    sweep.search,
                    number,
                    trial.folder,
                    lambda: inner if inner.is_dir() else None,
                    lambda _: mark_pruned(trial.scratch, spec.index),
                )
            )
        state = sweep_trial_flow.with_options(flow_run_name=trial.name)(
            trial, spec.values(), return_state=True
        )
    seconds = time.monotonic() - start
    steps = len(watcher.steps) if watcher is not None else None
    last = watcher.steps[-1] if watcher is not None and watcher.pruned_at is not None else None
    if state.is_completed():
        value = cast(dict[str, Any], state.result())
        ended = PRUNED if state.name == PRUNED else COMPLETED
        result = TrialResult(
            spec.index, trial.name, spec.values(), ended, seconds, value["metrics"], value["experiment"],
            message=state.message if ended == PRUNED else None, number=number, steps=steps,
            pruned_at=last if ended == PRUNED else None,
        )  # fmt: skip
        if sweep is not None and sweep.search is not None:
            _check_search_trial(sweep, result)
        return result
    return TrialResult(
        spec.index,
        trial.name,
        spec.values(),
        CANCELLED if state.is_cancelled() else FAILED,
        seconds,
        message=state_message(state),
        number=number,
        steps=steps,
    )


def _check_search_trial(sweep: SweepSession, result: TrialResult) -> None:
    """After a search's trial completed: a `--metric` it does not report stops the search (no point
    can be told); `--prune` with no step of the metric logged is given up, with one warning."""
    search = sweep.search
    assert search is not None
    metric = search.plan.metric
    if result.state == COMPLETED and metric not in result.metrics:
        reported = ", ".join(result.metrics) or "none"
        sweep.stop(f"--metric {metric}: trial {result.index} reports no such metric (it reports: {reported})")
    if result.state == COMPLETED and search.pruning and not result.steps:
        search.give_up_pruning()
        sweep.note(
            f"--prune {search.plan.prune}: trial {result.index} logged no step of {metric} "
            "(dvclive, or a plots file with a step column); not pruning"
        )
        get_run_logger().warning(sweep.notes[-1])


def _ended(sweep: SweepSession, index: int, future: PrefectFuture[TrialResult]) -> None:
    """Record a finished trial task; one that itself failed (e.g. its Dask worker died) is Failed."""
    future.wait()  # its final state from the runner: the API may not have recorded it yet
    state = future.state
    if state.is_completed():
        sweep.finished(future.result())
        return
    spec = sweep.trials[index - 1]
    sweep.finished(TrialResult(index, "", spec.values(), FAILED, 0.0, message=state_message(state)))


@task(name="dvc exp pull", cache_policy=NO_CACHE)
def pull_experiments_task(repo_root: Path, git_remote: str, names: list[str]) -> None:
    """The experiments the trials saved in clones, from the git remote (their data from the DVC remote)."""
    get_run_logger().info("Running: dvc exp pull %s %s", git_remote, " ".join(names))
    remote_data.pull_experiments(repo_root, git_remote, names, cache=True)


def _bring_home(sweep: SweepSession, *, interrupted: bool = False) -> None:
    """Trials run in clones: their experiments into this repository, where `dvc exp show` lists them.
    After a Ctrl-C no command runs any more (`children.stream` stops it at once), so the sweep says the
    command that pulls them instead (a note, shown at the end)."""
    names = [trial.name for trial in sweep.results() if trial.experiment is not None]
    if sweep.clone is None or not names:
        return
    if not interrupted:
        pull_experiments_task(sweep.root, sweep.clone.url, names)
        return
    command = shlex.join(["dvc", "exp", "pull", sweep.clone.url, *names])
    sweep.note(f"interrupted: the completed trials' experiments stay on the git remote; pull them: {command}")
    get_run_logger().warning(sweep.notes[-1])


def _publish(session_id: str, repo_root: Path) -> None:
    """The trial table as a Prefect artifact on the sweep's flow run; for a search also its summary."""
    sweep = session(session_id)
    if sweep.search is not None:
        try:
            sweep.summary = sweep.search.markdown()
            create_markdown_artifact(
                markdown=sweep.summary,
                key=artifact_key(repo_root, prefix=SEARCH_ARTIFACT_PREFIX),
                description=f"Search of `{repo_root}`: best params, the objective, importances",
            )
        except Exception as exc:  # printed too; a failed UI copy must not fail the sweep
            get_run_logger().warning("Could not publish the search summary: %s", exc)
    trials = sweep.results()
    metric, best = pick_best(trials, sweep.metric, sweep.maximize)
    rows = table_rows(trials, sweep.varying, best, metric)
    ranked = f"best by {metric} ({'max' if sweep.maximize else 'min'})" if metric else "no metric"
    try:
        create_table_artifact(
            table=rows,
            key=artifact_key(repo_root, prefix=ARTIFACT_PREFIX),
            description=f"Sweep of `{repo_root}`: {len(trials)} trials, {ranked}",
        )
    except Exception as exc:  # the table is also printed; a failed UI copy must not fail the sweep
        get_run_logger().warning("Could not publish the sweep table: %s", exc)


def trial_runner(jobs: int, dask_address: str | None = None) -> TaskRunner[Any]:
    """One thread per trial running at once (each waits on its child flow run); with `dask_address`,
    the workers of an existing Dask cluster, as for `run-a --per-stage`."""
    if dask_address is not None:
        from dvcflow.flows.per_stage import task_runner

        return task_runner(jobs, dask_address)
    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=jobs)
    return runner


@flow(name=SWEEP_FLOW_NAME)
def sweep_flow(repo_root: Path, session_id: str, grid: list[dict[str, str]], jobs: int) -> State[Any]:
    """Run every trial of the grid (`grid` shows the values in the UI), at most `jobs` at once: the
    next is submitted when one ends, so this process knows which run (on threads or on Dask)."""
    sweep = session(session_id)
    sweep.run_name = str(flow_run.name)
    logger = get_run_logger()
    logger.info("%d trials, %d at once, in %s", sweep.planned, jobs, sweep.scratch)
    running: dict[PrefectFuture[TrialResult], int] = {}
    searching = session_id if sweep.search is not None else None
    if sweep.clone is not None:
        dvc_push_task(repo_root)  # what the clones will pull: the sources and the outputs up to date
    try:
        while True:
            while len(running) < jobs and sweep.room() and (index := sweep.next_trial()) is not None:
                sweep.started(index)
                task = trial_task.with_options(task_run_name=f"trial {index}")
                with on_dask_workers_with(sweep.needs) if sweep.resources.dask else contextlib.nullcontext():
                    running[task.submit(sweep.job(index), searching)] = index
            if not running:
                break
            done = next(as_completed(list(running)))
            _ended(sweep, running.pop(done), done)
    except KeyboardInterrupt:
        sweep.interrupt()
        stopped = children.interrupt_commands()
        logger.warning("Interrupted: stopping %d running DVC command(s)", stopped)
        for index in sweep.unstarted():
            spec = sweep.trials[index - 1]
            sweep.finished(
                TrialResult(index, "", spec.values(), CANCELLED, 0.0, message="not started: interrupted")
            )
        finished, _ = wait(list(running), timeout=CANCEL_GRACE_S)
        for future in finished:
            _ended(sweep, running[future], future)
        _bring_home(sweep, interrupted=True)
        _publish(session_id, repo_root)
        return Cancelled(message="interrupted (Ctrl-C): running trials cancelled")
    _bring_home(sweep)
    _publish(session_id, repo_root)
    trials = sweep.results()
    if sweep.stopped is not None:
        return Failed(message=sweep.stopped)
    failed = [trial for trial in trials if not trial.ended_well]
    if failed:
        counted = f"{len(failed)} of {len(trials)} trials did not complete"
        reasons = [f"trial {trial.index}: {trial.message}" for trial in failed if trial.message]
        return Failed(message="\n".join([counted, *reasons]))
    return Completed(message=f"{len(trials)} trials completed")
