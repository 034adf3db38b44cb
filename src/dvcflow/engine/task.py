"""The one Prefect task that runs a stage, and the launcher that feeds it to the scheduler.

`stage_task` serves `run-b` (Prefect's cache answers when DVC agrees: `DvcCachePolicy`, results
persisted) and `run-a --per-stage` (DVC's status decides: no Prefect cache). Either way a stage that runs
goes through DVC's own steps (`engine.executor`), and its final state says what happened: `Completed`
(its command ran), `UpToDate`, `Restored` or `Pulled` (nothing ran), or, under run-b, `Cached`
(Prefect's record, which DVC's agreed with). Each stage's task declares its outputs as
Prefect assets (`file://` keys, DVC's md5 and size as metadata) and its deps as upstream assets, so the
run's graph shows the data. `PrefectLauncher` is the scheduler's `StageLauncher`: it submits the task with
`wait_for` edges (the UI draws the DAG) and reports each finished stage.

A stage that declares resources (`dvcflow.core.resources`) gets the scheduler's grant: its command runs
with its GPU indices in `CUDA_VISIBLE_DEVICES`, holding the machine's Prefect concurrency limits
(`dvcflow.api.limits`); on Dask, the amounts become the task's worker resources instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect import allow_failure, get_run_logger, task
from prefect.assets import Asset
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.results import ResultStore
from prefect.states import Cancelled, Completed
from prefect.tasks import MaterializingTask

from dvcflow.api.execution import note_wait, remember_task_run, untagged_tasks
from dvcflow.api.failures import failed, retry_unless
from dvcflow.api.limits import LEASE_S
from dvcflow.core.errors import DvcBusyError
from dvcflow.core.graph import PlannedStage
from dvcflow.core.resources import NO_GRANT, NO_RESOURCES, Demand, Grant, Resources, dask_resources
from dvcflow.core.results import CACHED
from dvcflow.dvc.session import PipelineSession
from dvcflow.engine.executor import StageResult, Status, execute, open_session
from dvcflow.engine.plugins import StageFunction
from dvcflow.engine.scheduler import Action, Outcome
from dvcflow.proc import children

if TYPE_CHECKING:
    from dvcflow.engine.cache import DvcCachePolicy, Verdict

RETRY_DELAY_S = 2
UP_TO_DATE_STATE = "UpToDate"  # a Completed state: DVC had nothing to do
RESTORED_STATE = "Restored"  # a Completed state: DVC's run cache had this run, outputs checked out from it
PULLED_STATE = "Pulled"  # a Completed state: only its data was missing, fetched from the remote (--pull)
NOTHING_RAN_STATES = (UP_TO_DATE_STATE, RESTORED_STATE, PULLED_STATE)  # Completed, and no command ran
NOT_RUN_STATE = "NotRun"  # a Cancelled state: an upstream stage failed, or the run stopped first
PLACEHOLDER_ASSET = "file:///dev/null"  # replaced per stage by `with_options(assets=...)`
WAIT_WORTH_SAYING_S = 1.0  # a shorter time to get the limits is the API's round trips: not logged


def _run_stage(
    repo_root: Path,
    stage: str,
    action: Action,
    reason: str,
    by_cache: bool = False,
    force: bool = False,
    function: StageFunction | None = None,
    pull: bool = False,
    allow_missing: bool = False,
    grant: Grant = NO_GRANT,
    share: bool = False,
) -> State[Any]:
    """One stage; its command's output lines go into this task's log. With a `grant`, its command runs
    with its GPU indices and, with `share`, holding the machine's concurrency limits. DVC decides whether
    it runs (with `by_cache`, Prefect's cache was asked first, and missed or was not trusted:
    `engine.cache.verdict`); the result is the final state's data, which run-b's Prefect cache stores
    under the stage's key, so that a stage found up to date is a plain cache hit next time."""
    remember_task_run()
    logger = get_run_logger()
    if action is Action.NOT_RUN:
        logger.warning("Stage '%s' not run: %s", stage, reason)
        return Cancelled(name=NOT_RUN_STATE, message=f"not run: {reason}")
    if action is Action.MARK_UP_TO_DATE:
        logger.info(
            "%s didn't change, skipping", f"'{stage}'" if stage.endswith(".dvc") else f"Stage '{stage}'"
        )
        return Completed(name=UP_TO_DATE_STATE, message="nothing changed here or upstream")
    if not by_cache:
        logger.info("Reproducing %s (%s)", stage, reason)
    try:
        result = execute(
            open_session(repo_root),
            stage,
            force=force,
            check_changed=True,
            function=function,
            log=logger.info,
            pull=pull,
            allow_missing=allow_missing,
            holding=None if grant.empty else partial(hold, grant, share),
        )
    except Exception as exc:  # the state says why in the stage's own words, not in Prefect's
        return failed(exc)
    _describe_assets(repo_root, result)
    if result.status is Status.UP_TO_DATE:
        return Completed(name=UP_TO_DATE_STATE, message="DVC found it up to date", data=result)
    if result.status is Status.RESTORED:
        return Completed(name=RESTORED_STATE, message="nothing ran: taken from DVC's run cache", data=result)
    if result.status is Status.PULLED:
        return Completed(
            name=PULLED_STATE, message="nothing ran: its data came from the DVC remote", data=result
        )
    return Completed(message="reproduced", data=result)


@contextlib.contextmanager
def hold(grant: Grant, share: bool, *, aside: bool = True) -> Iterator[Mapping[str, str]]:
    """Around a stage's command (or a sweep trial's whole `dvc repro`): the machine's limits (with
    `share`; the wait is logged and counted in the summary), its GPU indices held machine-wide
    (`proc.gpus.claimed`: the grant's, unless another run on this machine holds one), and the
    environment that names them. An empty grant holds nothing.

    The limits are released in a thread of their own while DVC records the outputs (a release is two
    API calls: 0.06 s, up to 0.13 s, measured against a local server, per stage that holds resources);
    the launcher waits for it before the scheduler hands the stage's resources to another (`_released`).
    Outside a task run, or without `aside` (a trial, which no launcher waits for), the release is done
    here."""
    from prefect.context import TaskRunContext

    if grant.empty:
        yield {}
        return

    logger = get_run_logger()
    environment = grant.environment()
    context = TaskRunContext.get()
    task_run = context.task_run.id if context is not None else None
    held = contextlib.ExitStack()
    try:
        if share:
            from dvcflow.api.limits import holding

            waited = held.enter_context(holding(grant.demand, task_run))
            if task_run is not None:
                note_wait(task_run, waited)
            if waited >= WAIT_WORTH_SAYING_S:
                logger.info(
                    "Took %.1f s to get the machine's concurrency limits for %s", waited, grant.demand
                )
        if grant.gpus:
            from dvcflow.proc.gpus import claimed

            gpus = held.enter_context(claimed(len(grant.gpus), grant.devices or grant.gpus, grant.gpus))
            environment = grant.environment(gpus)
        shown = ", ".join(f"{key}={value}" for key, value in environment.items())
        logger.info("Holding %s%s", grant.demand, f" ({shown})" if shown else "")
        yield environment
    finally:
        if task_run is None or not aside:
            _release(held, logger)
        else:
            release = threading.Thread(
                target=contextvars.copy_context().run,
                args=(_release_under_way, task_run, held, logger),
                name="dvcflow-release",
                daemon=True,
            )
            with _releasing_lock:
                _releasing.setdefault(task_run, []).append(release)
            release.start()


def _release(held: contextlib.ExitStack, logger: Any) -> None:
    try:
        held.close()
    except Exception as exc:  # the server frees the slots when their lease ends
        logger.warning("Could not release the concurrency limits (free again within %d s): %s", LEASE_S, exc)


# Task run → its limits' releases still under way: each release removes itself when done, so this holds no
# more than the stages just finished.
_releasing: dict[UUID, list[threading.Thread]] = {}
_releasing_lock = threading.Lock()


def _release_under_way(task_run: UUID, held: contextlib.ExitStack, logger: Any) -> None:
    try:
        _release(held, logger)
    finally:
        with _releasing_lock:
            under_way = _releasing.get(task_run, [])
            if threading.current_thread() in under_way:
                under_way.remove(threading.current_thread())
            if not under_way:
                _releasing.pop(task_run, None)


def _released(task_run: UUID | None) -> None:
    """Wait until the task run's limits are back on the server (see `hold`)."""
    if task_run is None:
        return
    with _releasing_lock:
        under_way = list(_releasing.get(task_run, ()))
    for release in under_way:
        release.join()


stage_task: MaterializingTask[Any, Any] = MaterializingTask(
    fn=_run_stage,
    assets=[PLACEHOLDER_ASSET],
    materialized_by="dvc",
    name="stage",
    cache_policy=NO_CACHE,
    retry_delay_seconds=RETRY_DELAY_S,
    log_prints=False,  # an in-process function's prints reach the task log through the executor
)


@task(name="stage", cache_policy=NO_CACHE)
def cached_stage_task(stage: str) -> State[Any]:
    """The cache verdict taken in the caller, as the stage's final state (touches no disk)."""
    remember_task_run()
    get_run_logger().info("Stage '%s': Prefect's cache has it, its outputs as recorded, DVC agreeing", stage)
    return Completed(name=CACHED, message="Prefect's cache had it; DVC agrees it is up to date")


def asset_key(root: Path, path: str) -> str | None:
    """`file:///abs/path` of a stage's file; None for paths Prefect cannot name (spaces, `%`, ...)."""
    key = f"file://{(root / path).as_posix()}"
    try:
        Asset(key=key)
    except ValueError:
        return None
    return key


def _describe_assets(root: Path, result: StageResult) -> None:
    """DVC's md5 and size of each output, as metadata of the asset the task materialized."""
    from prefect.assets import add_asset_metadata

    for out in result.outputs:
        key = asset_key(root, out.path)
        if key is None or out.md5 is None:
            continue
        try:
            add_asset_metadata(key, {"dvc_md5": out.md5, "size": out.size, "dvc_stage": result.stage})
        except (RuntimeError, ValueError):  # not materializing (e.g. a retry without context)
            return


class PrefectLauncher:
    """The scheduler's `StageLauncher`: one `stage_task` per stage, submitted to the flow's task runner."""

    def __init__(
        self,
        root: Path,
        session: PipelineSession,
        *,
        retries: int,
        force: bool = False,
        by_cache: bool = False,
        store: ResultStore | None = None,
        functions: Mapping[str, StageFunction] | None = None,
        name_runs_after_stages: bool = True,
        pull: bool = False,
        allow_missing: bool = False,
        resources: Resources = NO_RESOURCES,
    ) -> None:
        self.root = root
        self.session = session
        self.retries = retries
        self.force = force
        self.by_cache = by_cache
        self.store = store
        self.functions = functions or {}
        self.name_runs_after_stages = name_runs_after_stages
        self.pull = pull
        self.allow_missing = allow_missing
        self.resources = resources
        self.futures: dict[str, PrefectFuture[Any]] = {}
        self.keys: dict[str, str] = {}
        self._finished: queue.Queue[str] = queue.Queue()  # stage names; `_WOKEN` from `wake`

    def _options(
        self, stage: PlannedStage, action: Action, cache: tuple[DvcCachePolicy, Verdict] | None
    ) -> dict[str, Any]:
        spec = self.session.spec(stage.name)
        outs = [key for path in spec.outs if (key := asset_key(self.root, path))]
        deps = [key for path in spec.deps if (key := asset_key(self.root, path))]
        options: dict[str, Any] = {
            "name": stage.name,
            "retries": self.retries if action is Action.RUN else 0,
            "retry_condition_fn": _retry_helps,
            "assets": outs,
            "asset_deps": deps or None,
        }
        if self.name_runs_after_stages:
            options["task_run_name"] = stage.name
        if cache is not None:
            policy, decision = cache
            # On Dask the worker's task engine would look the key up in its own storage, which may hold a
            # record this verdict never checked: there it always recomputes (`launch` took the verdict).
            refresh = decision.refresh or self.resources.dask
            options.update(cache_policy=policy, persist_result=True, refresh_cache=refresh)
        return options

    def cache_verdict(self, stage: PlannedStage) -> tuple[DvcCachePolicy, Verdict]:
        """The stage's cache key (from DVC's view of it now, and its upstream stages' keys; remembered for
        the stages below) and whether its stored result, if any, may be trusted (`engine.cache.verdict`)."""
        from dvcflow.engine.cache import policy_for, verdict

        upstream = {up: self.keys[up] for up in stage.upstream if up in self.keys}
        policy = policy_for(self.root, self.session.fingerprint(stage.name), upstream)
        self.keys[stage.name] = policy.key
        assert self.store is not None
        decision = verdict(self.store, policy, self.session, stage.name, force=self.force)
        if decision.note:
            get_run_logger().info("%s", decision.note)
        return policy, decision

    def trusted(self, cache: tuple[DvcCachePolicy, Verdict]) -> bool:
        """The verdict trusts a record this caller's store holds: the stage is `Cached`."""
        policy, decision = cache
        assert self.store is not None
        return not decision.refresh and self.store.exists(policy.key)

    def launch_cached(self, stage: PlannedStage, edges: tuple[str, ...]) -> None:
        """The stage ends `Cached` by the verdict taken here; its task only reports it (touches no disk,
        asks no store: a worker's own storage never answers)."""
        with untagged_tasks():
            future = cached_stage_task.with_options(name=stage.name).submit(
                stage.name, wait_for=[allow_failure(self.futures[up]) for up in edges], return_state=False
            )
        self.track(stage.name, future)

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        cache = self.cache_verdict(stage) if self.by_cache and action is Action.RUN else None
        if cache is not None and self.resources.dask and self.trusted(cache):
            self.launch_cached(stage, edges)  # on Dask the verdict is taken here only (see `_options`)
            return
        task_for_stage = stage_task.with_options(**self._options(stage, action, cache))
        with untagged_tasks(), self._on_workers_with(grant):
            future = task_for_stage.submit(
                self.root,
                stage.name,
                action,
                reason,
                self.by_cache,
                self.force,
                self.functions.get(stage.name),
                self.pull,
                self.allow_missing,
                grant,
                self.resources.share,
                wait_for=[allow_failure(self.futures[up]) for up in edges],
                return_state=False,
            )
        if not grant.empty:
            note_wait(future.task_run_id, grant.waited)  # the wait for this run's own capacity
        self.track(stage.name, future)

    def track(self, name: str, future: PrefectFuture[Any]) -> None:
        """The stage's task, submitted: `next_finished` reports it when it ends."""
        self.futures[name] = future
        future.add_done_callback(partial(_report_done, self._finished, name))

    def _on_workers_with(self, grant: Grant) -> contextlib.AbstractContextManager[Any]:
        return on_dask_workers_with(grant.demand) if self.resources.dask else contextlib.nullcontext()

    def wake(self) -> None:
        self._finished.put(_WOKEN)

    def next_finished(self) -> tuple[str, Outcome] | None:
        try:
            name = self._finished.get()
            if name == _WOKEN:
                return None
            future = self.futures[name]
            future.wait()
        except KeyboardInterrupt:
            # Ctrl-C reaches this thread only: the stages' commands run in process groups of their own
            # (so that they can be stopped cleanly), and the task runner would wait for them to finish.
            children.interrupt_commands()
            raise
        _released(future.task_run_id)
        state = future.state
        if state.name == NOT_RUN_STATE:
            return name, Outcome.NOT_RUN
        return name, Outcome.SUCCEEDED if state.is_completed() else Outcome.FAILED


_WOKEN = ""  # no stage's name: `next_finished` was woken, nothing finished


def on_dask_workers_with(demand: Demand) -> contextlib.AbstractContextManager[Any]:
    """Tasks submitted in the block land only on Dask workers started with the demand's amounts
    (`--resources GPU=1`: `GPU`, `MEM_GB`), and the cluster counts them."""
    amounts = dask_resources(demand)
    if not amounts:
        return contextlib.nullcontext()
    from dask.base import annotate

    return annotate(resources=amounts)


def _retry_helps(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: no retry of a stage once a Ctrl-C stopped the run's commands, nor
    of one that another DVC process got in the way of (`DvcBusyError`): a retry would remove what the
    stage wrote and could take another process's result from DVC's run cache as its own."""
    return retry_unless(state, lambda exc: isinstance(exc, DvcBusyError))


def _report_done(finished: queue.Queue[str], name: str, _: PrefectFuture[Any]) -> None:
    finished.put(name)
