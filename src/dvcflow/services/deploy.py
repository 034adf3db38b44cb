"""Pipelines that run without a person: a deployment of this repository's pipeline flow.

Provides:
- `check_request`: every flag checked before anything is registered (a `UsageError` otherwise).
- `serve`: registers the deployment and runs its runs from this process until Ctrl-C, reporting each
  run as it starts and ends through a callback.
- `register_to_pool`: registers the deployment with a Prefect process work pool; Prefect's own
  `prefect worker start --pool NAME` runs it.
- `trigger`: starts a run of a deployment now (optionally waiting for its end).

With `--on-change` (a `WatchOptions`), the deployment gets a trigger on dvcflow's change event and a
concurrency of one, and `serve` runs the watchers of `dvcflow.services.watch` beside its runs.

Over 500 lines on purpose: the life of one deployment, from its checked request through registering,
serving (the runner, the watcher of its runs, pausing at stop) to a run triggered by hand, each step
reading what the one before set up; the runs on another machine are `dvcflow.services.remote_runs`.

The flow is `dvcflow.flows.deployed.deployed_pipeline_flow`; its runs carry the repository's tag
(`api.tags.repo_tag`) from the deployment, so `dvcflow runs` and `dvcflow notify` see them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvcflow.core.changes import Change
from dvcflow.core.errors import DvcflowError, UsageError
from dvcflow.dvc import repository
from dvcflow.services.watch import WatchOptions, WatchPlan, check_options

POLL_S = 1.0  # how often the serving process looks at its deployment's runs
RUNNER_POLL_S = 2.0  # how often it asks for runs to start (Prefect's default, 10 s, delays the Run button)
TRIGGER_POLL_S = 1.0  # how often `trigger --wait` reads the run's state
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass(frozen=True)
class DeployRequest:
    """What `dvcflow deploy` was asked for, checked."""

    root: Path
    name: str
    cron: str | None = None
    interval: float | None = None
    per_stage: bool = False
    jobs: int | None = None
    keep_going: bool = False
    pool: str | None = None
    watch: WatchOptions | None = None  # --on-change
    targets: tuple[str, ...] = ()
    resources: tuple[tuple[str, int], ...] = ()  # --resource: the capacity, with --per-stage

    @property
    def run_parameters(self) -> dict[str, Any]:
        """How each run reproduces the pipeline: the parameters both deployed flows take."""
        return {
            "per_stage": self.per_stage,
            "jobs": self.jobs,
            "keep_going": self.keep_going,
            "targets": list(self.targets) or None,
            "resources": dict(self.resources) or None,
        }

    @property
    def parameters(self) -> dict[str, Any]:
        """The deployment's default parameters; a custom run may override all but the repository."""
        return {"repo_root": str(self.root), **self.run_parameters}

    @property
    def schedule(self) -> str:
        if self.cron is not None:
            timing = f"cron {self.cron!r}"
        elif self.interval is not None:
            timing = f"every {self.interval:g} s"
        else:
            timing = "on demand" + ("" if self.watch is not None else " only")
        return timing + (" and on change" if self.watch is not None else "")


@dataclass(frozen=True)
class DeploymentInfo:
    id: str
    name: str
    flow_name: str
    schedule: str
    pool: str | None
    ui_link: str | None

    @property
    def full_name(self) -> str:
        """What `prefect deployment run` takes."""
        return f"{self.flow_name}/{self.name}"


@dataclass(frozen=True)
class RunEvent:
    """A served run started or ended."""

    ended: bool
    run_name: str
    state: str
    seconds: float
    ui_link: str | None
    message: str | None = None
    change: str | None = None  # what changed, for a run an on-change trigger started


@dataclass(frozen=True)
class TriggeredRun:
    id: str
    name: str
    deployment: str
    state: str
    ui_link: str | None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The one exit-code table (`errors.exit_code_for_state`): Cancelled is 130, as for run-a."""
        from dvcflow.core.errors import ExitCode, exit_code_for_state

        if self.state in ("Scheduled", "Pending", "Running"):  # not waited for: started is success
            return int(ExitCode.OK)
        return int(exit_code_for_state(self.state))


def connect_lasting(root: Path, announce: Callable[[str], None]) -> None:
    """Use the configured API, or dvcflow's local server (started if need be): schedules, runs started
    from the UI and automations need a server that outlives this process, never a temporary one."""
    from dvcflow.api.connect import connect

    connect(root, ephemeral=False, announce=announce)


def check_request(
    repo: Path | None,
    *,
    name: str | None,
    cron: str | None,
    interval: float | None,
    per_stage: bool,
    jobs: int | None,
    keep_going: bool,
    pool: str | None,
    on_change: bool = False,
    debounce: float | None = None,
    watch_branch: str | None = None,
    watch_imports: float | None = None,
    targets: Sequence[str] = (),
    resources: Mapping[str, int] | None = None,
) -> DeployRequest:
    """Refuse contradictions and nonsense before Prefect is contacted: unknown targets included."""
    if cron is not None and interval is not None:
        raise UsageError("--cron and --interval exclude each other: give one schedule")
    if interval is not None and not interval > 0:
        raise UsageError(f"--interval must be more than 0 seconds, got {interval:g}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if (jobs is not None or keep_going) and not per_stage:
        raise UsageError(f"{'--jobs' if jobs is not None else '--keep-going'} needs --per-stage")
    if resources and not per_stage:
        raise UsageError("--resource needs --per-stage: each stage holds what it declares")
    if pool is not None and not pool.strip():
        raise UsageError("--pool needs a work pool name")
    watch = check_options(debounce=debounce, branch=watch_branch, imports_every=watch_imports)
    if not on_change:
        for flag, value in (("--debounce", debounce), ("--watch-branch", watch_branch),
                            ("--watch-imports", watch_imports)):  # fmt: skip
            if value is not None:
                raise UsageError(f"{flag} needs --on-change")
    root = repository.find_repo_root(repo)
    chosen = name if name is not None else root.name
    if not chosen or "/" in chosen or "%" in chosen:
        raise UsageError(f"--name must be non-empty and contain no '/' or '%', got {chosen!r}")
    if targets or resources:
        from dvcflow.core.selection import Selection
        from dvcflow.dvc.targets import selected_stages

        selection = Selection(targets=tuple(targets))
        selected_stages(root, selection)  # an unknown target: one line, now
        if resources:
            from dvcflow.engine.resources import check_given_capacity

            check_given_capacity(root, selection, resources)  # every run would fail on it
    return DeployRequest(
        root,
        chosen,
        cron,
        interval,
        per_stage,
        jobs,
        keep_going,
        pool,
        watch if on_change else None,
        tuple(targets),
        tuple(sorted((resources or {}).items())),
    )


def check_cron(cron: str | None) -> None:
    """`--cron` checked as Prefect will read it, before anything is registered."""
    """Prefect's own cron validation; needs Prefect imported, so it runs after `connect`."""
    if cron is None:
        return
    from prefect._internal.schemas.validators import validate_cron_string

    try:
        validate_cron_string(cron)
    except ValueError as err:
        raise UsageError(
            f"--cron: {err}", hint="five fields: minute hour day month weekday, e.g. '0 3 * * *'"
        ) from None


def _deployment_options(request: DeployRequest) -> dict[str, Any]:
    """What a served and a work-pool deployment share (Prefect's `to_deployment` / `add_flow` keywords)."""
    from prefect.types.entrypoint import EntrypointType

    from dvcflow.api.events import change_trigger, one_at_a_time
    from dvcflow.api.tags import repo_tag

    on_change = request.watch is not None
    return {
        "name": request.name,
        "interval": request.interval,
        "cron": request.cron,
        "paused": False,
        "parameters": request.parameters,
        "tags": [repo_tag(request.root)],
        "description": f"The DVC pipeline of {request.root}, registered by `dvcflow deploy`.",
        # imported by module path: any machine with dvcflow installed can run it
        "entrypoint_type": EntrypointType.MODULE_PATH,
        # deploying again without --on-change removes the trigger (Prefect replaces a deployment's own)
        "triggers": [change_trigger(request.root, request.name)] if on_change else [],
        "concurrency_limit": one_at_a_time() if on_change else None,
    }


def _to_deployment(request: DeployRequest) -> Any:
    from dvcflow.flows.deployed import deployed_pipeline_flow

    return deployed_pipeline_flow.to_deployment(
        **_deployment_options(request),
        job_variables={"working_dir": str(request.root)},
        work_pool_name=request.pool,
    )


def deployment_info(
    deployment_id: Any, request: DeployRequest, flow_name: str | None = None
) -> DeploymentInfo:
    """What `deploy` reports of a registered deployment (of the deployed flow unless `flow_name` says)."""
    from dvcflow.api.links import deployment_link
    from dvcflow.flows.deployed import FLOW_NAME

    return DeploymentInfo(
        id=str(deployment_id),
        name=request.name,
        flow_name=flow_name or FLOW_NAME,
        schedule=request.schedule,
        pool=request.pool,
        ui_link=deployment_link(deployment_id),
    )


def register_to_pool(request: DeployRequest, *, announce: Callable[[str], None]) -> DeploymentInfo:
    """Register the deployment with a process work pool (created if missing); a worker runs it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    assert request.pool is not None
    check_cron(request.cron)
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(request.pool)
            if pool.type != "process":
                raise UsageError(
                    f"work pool {request.pool!r} is of type {pool.type!r}; dvcflow registers with "
                    "'process' pools only"
                )
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=request.pool, type="process"))
            announce(f"Created the process work pool {request.pool!r}")
    deployment_id = _to_deployment(request).apply()
    return deployment_info(deployment_id, request)


class _RunWatcher:
    """Reports the deployment's runs as they start and end, from the API (polled every `POLL_S`)."""

    def __init__(self, deployment_id: Any, on_run: Callable[[RunEvent], None]) -> None:
        self.deployment_id = deployment_id
        self.on_run = on_run
        self.stop = threading.Event()
        # (flow run id, attempt): a retried run (the UI's Retry) starts and ends again
        self.started: set[tuple[Any, int]] = set()
        self.ended: set[tuple[Any, int]] = set()
        self.thread = threading.Thread(target=self._loop, name="dvcflow-run-watcher", daemon=True)

    def _loop(self) -> None:
        from prefect.client.orchestration import get_client

        first = True
        with get_client(sync_client=True) as client:
            while not self.stop.is_set():
                try:
                    self._poll(client, report=not first)
                    first = False
                except Exception:  # a hiccup of the API must not end serving
                    pass
                self.stop.wait(POLL_S)

    def _poll(self, client: Any, report: bool) -> None:
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        from dvcflow.api.links import flow_run_link

        begun = FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, *(StateType(kind) for kind in FINAL)])
            )
        )
        runs = client.read_flow_runs(
            flow_run_filter=begun,
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=20,
        )
        for run in reversed(runs):
            state = run.state
            if state is None:
                continue
            kind = state.type.value
            link = flow_run_link(run.id)
            attempt = (run.id, run.run_count)
            if kind in FINAL and attempt in self.ended:
                continue
            if not report:  # what was there before serving began is history, not news
                if kind in FINAL:
                    self.ended.add(attempt)
                elif kind == "RUNNING":
                    self.started.add(attempt)
                continue
            if kind in ("RUNNING", *FINAL) and attempt not in self.started and run.start_time:
                self.started.add(attempt)
                change = Change.from_parameter((getattr(run, "parameters", None) or {}).get("change"))
                summary = change.summary() if change is not None else None
                self.on_run(RunEvent(False, run.name, "Running", 0.0, link, change=summary))
            if kind in FINAL:
                self.ended.add(attempt)
                message = state.message if kind != "COMPLETED" else None
                seconds = run.total_run_time.total_seconds()
                self.on_run(RunEvent(True, run.name, state.name or kind.title(), seconds, link, message))

    def __enter__(self) -> _RunWatcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def serve(
    request: DeployRequest,
    *,
    on_registered: Callable[[DeploymentInfo], None],
    on_run: Callable[[RunEvent], None],
    watching: WatchPlan | None = None,
    on_watching: Callable[[WatchPlan], None] = lambda _: None,
    on_change: Callable[[Change], None] = lambda _: None,
    on_problem: Callable[[str], None] = lambda _: None,
) -> None:
    """Register the deployment and run its runs in this process until Ctrl-C (SIGINT) or SIGTERM.

    One run at a time (runs of one repository would wait for each other anyway). When serving stops,
    the deployment is paused and its scheduled runs dropped, so runs do not pile up unserved; runs
    started by hand meanwhile wait for the next `dvcflow deploy`.

    With `watching` (`--on-change`), its watchers run here too, from registration until serving stops
    (`on_watching` once they watch, `on_change` per event sent, `on_problem` per failed check). The
    process's console and logging are the caller's (`dvcflow deploy` quiets the served runs' logs).
    """
    import asyncio

    check_cron(request.cron)
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    from dvcflow.flows.deployed import deployed_pipeline_flow

    runner = Runner(
        name=f"dvcflow-{request.name}", query_seconds=RUNNER_POLL_S, limit=1, pause_on_shutdown=False
    )
    deployment_id = runner.add_flow(deployed_pipeline_flow, **_deployment_options(request))
    with get_client(sync_client=True) as client:
        # Late runs left by a serving process that was killed are not made up: a run now reproduces
        # whatever changed meanwhile anyway.
        _set_paused(client, deployment_id, True)
        _set_paused(client, deployment_id, False)
    on_registered(deployment_info(deployment_id, request))
    try:
        with _RunWatcher(deployment_id, on_run), _watchers(watching, on_watching, on_change, on_problem):
            asyncio.run(_run_until_signalled(runner))
    finally:
        _pause_at_stop(deployment_id, request.name)


@contextlib.contextmanager
def _watchers(
    watching: WatchPlan | None,
    on_watching: Callable[[WatchPlan], None],
    on_change: Callable[[Change], None],
    on_problem: Callable[[str], None],
) -> Iterator[None]:
    """The watchers of `watching` for the block (nothing without one); the events they sent are handed
    to the server before it ends."""
    if watching is None:
        yield
        return
    from dvcflow.api.events import drain_events, emit_change
    from dvcflow.services.watch import Watchers

    def send(change: Change) -> Change:
        return emit_change(watching.root, change)

    try:
        with Watchers(watching, send=send, on_change=on_change, on_problem=on_problem):
            on_watching(watching)
            yield
    finally:
        drain_events()


def _pause_at_stop(deployment_id: Any, name: str) -> None:
    """Pause the deployment as serving stops; a server already gone is a clear error, not a crash."""
    import httpx
    from prefect.client.orchestration import get_client

    from dvcflow.core.errors import ApiLostError

    try:
        with get_client(sync_client=True) as client:
            _set_paused(client, deployment_id, True)
    except (httpx.HTTPError, OSError) as err:
        raise ApiLostError(
            f"the Prefect API went away; deployment {name!r} could not be paused ({type(err).__name__})",
            hint="its scheduled runs are marked Late; the next `dvcflow deploy` skips them",
        ) from None


def _set_paused(client: Any, deployment_id: Any, paused: bool) -> None:
    """Pause or resume the deployment's schedule; pausing drops its scheduled runs not yet started
    (the server's `pause_deployment` does; setting `paused` on the deployment keeps the late ones)."""
    action = "pause_deployment" if paused else "resume_deployment"
    client.request("POST", f"/deployments/{{id}}/{action}", path_params={"id": deployment_id})


async def _run_until_signalled(runner: Any) -> None:
    """Run `runner` until SIGINT or SIGTERM, then cancel it, which stops its flow-run processes.

    An anyio cancel scope, not asyncio's one-shot task cancellation: a Ctrl-C that lands while the
    runner is starting up must not be swallowed (it was, and serving went on).
    """
    import asyncio
    import signal

    import anyio

    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    async def run() -> None:
        try:
            await runner.start()
        finally:
            stop.set()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await stop.wait()
            group.cancel_scope.cancel()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def check_timeout(timeout: float) -> float:
    """`trigger --timeout`, refused before Prefect is contacted."""
    if not timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds, got {timeout:g}")
    return timeout


def trigger(
    name: str,
    *,
    parameters: dict[str, Any] | None = None,
    wait: bool = False,
    timeout: float,
    announce: Callable[[str], None] = lambda _: None,
) -> TriggeredRun:
    """Start a run of deployment `name` (of dvcflow's pipeline flow) now; with `wait`, until it ends
    or `timeout` seconds pass (a run nobody serves stays Scheduled forever)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from dvcflow.flows.deployed import FLOW_NAME

    full_name = f"{FLOW_NAME}/{name}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            raise UsageError(
                f"no deployment named {name!r}", hint="register one with `dvcflow deploy --name NAME`"
            ) from None
        if getattr(deployment.status, "value", deployment.status) == "NOT_READY":
            announce(
                f"No process serves {full_name!r} now (status NOT_READY): the run waits for "
                "`dvcflow deploy` or a worker of its pool."
            )
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {})
        if wait:
            deadline = time.monotonic() + timeout
            while not (run.state and run.state.is_final()):
                if time.monotonic() > deadline:
                    state = (run.state.name if run.state else None) or "Scheduled"
                    raise DvcflowError(
                        f"flow run {run.name!r} still {state} after {timeout:g} s: "
                        "is `dvcflow deploy` or a worker running?",
                        hint="the run stays queued; `dvcflow runs` shows how it ends",
                    )
                time.sleep(TRIGGER_POLL_S)
                run = client.read_flow_run(run.id)
    from dvcflow.api.links import flow_run_link

    return TriggeredRun(
        id=str(run.id),
        name=run.name,
        deployment=full_name,
        state=(run.state.name if run.state else None) or "Unknown",
        ui_link=flow_run_link(run.id),
        parameters=dict(run.parameters),
    )
