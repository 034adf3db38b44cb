"""Launch one flow run of a repository's pipeline: check the input, choose the Prefect API, take the run lock,
run the flow under a watchdog, read it back as a `FlowRunRecord`.

Provides one function per way of running (`run_repro`: one `dvc repro` task; `run_per_stage`: one task per
stage, DVC's status decides; `run_cached_dag`: one task per stage, Prefect's cache decides; the last two on
a Dask cluster too, in this repository or in clones of this commit) and
`plan_stages`; `dvcflow.services.pipeline.Pipeline` is their one caller; they never print. What every run
shares (`connect_run`, `execute_exclusively`, `check_dask_address`) the sweep uses too
(`dvcflow.services.sweep`).

Inside a running Prefect flow (a user's flow calling `Pipeline.run`) the flow runs as a subflow of it, on
the caller's Prefect API: nothing is connected or exported, no signal handler is installed, the process's
logging and garbage collector are left alone (see docs/python-api.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from dvcflow.api.connect import connect
from dvcflow.api.execution import caller_flow_run, import_engine
from dvcflow.core.errors import UsageError
from dvcflow.core.records import NO_SYNC, DataSync, FlowRunRecord
from dvcflow.core.resources import cpu_count
from dvcflow.core.selection import EVERYTHING, Selection
from dvcflow.dvc import commands, repository, targets
from dvcflow.dvc.session import PipelineSession
from dvcflow.proc import children
from dvcflow.proc.gcpause import collector_paused
from dvcflow.proc.runlock import exclusive_run, open_ahead

if TYPE_CHECKING:
    from dvcflow.core.clones import CloneSource
    from dvcflow.core.graph import Plan
    from dvcflow.core.resources import Resources


class Hosting(TypedDict):
    """How every run is hosted and reported, as the caller's `Pipeline` was made: `ephemeral` (Prefect's
    temporary server), `debug` (tracebacks), `announce` (progress notes)."""

    ephemeral: bool
    debug: bool
    announce: Callable[[str], None]


class EngineOptions(TypedDict):
    """How the stage engine runs the stages (`run_per_stage`, `run_cached_dag`): at most `jobs` at once
    (None: the CPUs), `keep_going` after a failure, `retries` per stage, `resources` (how much there is)."""

    jobs: int | None
    keep_going: bool
    retries: int
    resources: Mapping[str, int] | None


def _prepare(
    repo: Path | None, selection: Selection, sync: DataSync, *, keep_session: bool = False
) -> tuple[Path, tuple[str, ...]]:
    """Find the repo and check what DVC will read (params, targets, tracked sources, the remote), before
    connecting: bad input never becomes a flow run. Also the stages `dvc repro` will visit.

    With `keep_session`, the checks read the repository through the run's DVC session (`open_session`),
    which the engine flow then goes on using; the caller closes it (`close_session`)."""
    from dvcflow.engine.executor import open_session

    root = repository.find_repo_root(repo)
    repository.check_params_files(root)
    session = open_session(root) if keep_session else None
    return root, targets.check_repro_inputs(root, selection, sync, session)


def _caller_api_url() -> str | None:
    """The Prefect API of the flow this process runs in (None: Prefect's temporary in-process server)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _check_retries(retries: int) -> None:
    if retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {retries}")


EPHEMERAL_INTERRUPT_GRACE_S = 2.0  # what DVC gets to stop its stage after Ctrl-C with --ephemeral


@contextlib.contextmanager
def _ctrl_c_ends_at_once(announce: Callable[[str], None]) -> Iterator[None]:
    """With Prefect's temporary server, Ctrl-C ends the process at once (exit 130).

    That server is a child in dvcflow's process group, so the terminal's SIGINT stops it too; Prefect would
    then retry for minutes to record the interrupted run on a server that is gone. Nothing can be recorded
    any more, so nothing is lost. DVC runs in a process group of its own (`commands.stream_dvc`): it is
    signalled here, as the terminal would, and given a moment to clean up its stage.
    """
    import signal
    import threading

    from dvcflow.core.errors import ExitCode

    def stop(signum: int, frame: object) -> None:
        children.interrupt_commands(grace=EPHEMERAL_INTERRUPT_GRACE_S)
        announce("Interrupted (Prefect's temporary server stopped with it; nothing more to record).")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ExitCode.INTERRUPTED)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


API_LOST_GRACE_S = 2.0  # what DVC gets to stop its stage once the API is gone


@contextlib.contextmanager
def _lost_api_ends_at_once(root: Path, announce: Callable[[str], None]) -> Iterator[None]:
    """With the API gone mid-run (its server killed or stopped), end within seconds with one error (exit
    4), not after Prefect's client has retried for ~40 s amid its workers' `EventsWorker failed` and
    `--- Error logging to API ---`: nothing could be recorded any more. The stage commands are stopped
    as a Ctrl-C stops them; the watchdog marks the run Crashed once the server is back."""
    import logging

    from dvcflow.api.lost import lost_api_ends_the_run
    from dvcflow.core.errors import ExitCode
    from dvcflow.core.settings import resolve_server_config
    from dvcflow.server import control

    api_url = os.environ.get("PREFECT_API_URL")
    config = resolve_server_config(start=root)
    server_pid = control.recorded_pid(config) if api_url == config.api_url else None

    def lost(reason: str) -> None:
        logging.disable(logging.CRITICAL)  # Prefect's workers say nothing more
        announce(f"Error: lost the Prefect API at {api_url} during the run ({reason}); stopping the run")
        announce("Hint: finished stages are recorded in dvc.lock; start the server again and re-run")
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - `--- Error logging to API ---`, until the exit
        children.interrupt_commands(grace=API_LOST_GRACE_S)
        os._exit(ExitCode.SERVER_UNREACHABLE)

    with lost_api_ends_the_run(api_url, server_pid, lost):
        yield


def execute_exclusively(
    root: Path, announce: Callable[[str], None], flow: Any, keep_link: bool, debug: bool, **parameters: Any
) -> FlowRunRecord:
    """One dvcflow run per repository at a time (see `runlock`); then run and read back the flow.

    The flow run is tagged with the repository, host and process (`dvcflow.api.tags.run_tags`) and watched
    by a watchdog that marks it Crashed if this process dies (`dvcflow.api.watchdog`; not with a temporary
    server, which dies too).
    """
    from dvcflow.api.crash import crash_orphaned_runs
    from dvcflow.api.execution import execute
    from dvcflow.api.tags import run_tags
    from dvcflow.api.watchdog import watching
    from dvcflow.engine.executor import close_session

    def on_wait(message: str) -> None:
        close_session(root)  # the other run changes the repository: the flow must read it afresh
        announce(message)

    children.clear_interrupted()  # a process may run more than one command (tests, library use)
    with exclusive_run(root, on_wait=on_wait):
        # A run of this repository left Running by a process of this host that is gone (one that died
        # before its watchdog could act, e.g. with the machine): say so instead of leaving it Running.
        orphans = crash_orphaned_runs(root)
        if orphans:
            announce(
                f"Marked {orphans} flow run(s) of this repository Crashed: their dvcflow process had died"
            )
        tags = run_tags(root)
        guard: contextlib.AbstractContextManager[None]
        if caller_flow_run() is not None:  # the caller's process: its signals, its API's settings
            guard = watching(_caller_api_url(), tags)
        elif keep_link:
            guard = watching(os.environ["PREFECT_API_URL"], tags)
        else:
            guard = _ctrl_c_ends_at_once(announce)
        lost_api: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if keep_link and caller_flow_run() is None:  # a caller's flow: its process, its API's fate
            lost_api = _lost_api_ends_at_once(root, announce)
        with guard, lost_api:
            return execute(flow, keep_link=keep_link, repo_root=root, tags=tags, debug=debug, **parameters)


def connect_run(root: Path, ephemeral: bool, announce: Callable[[str], None]) -> bool:
    """Choose the Prefect API and export it; True when the run's UI link outlives this process.

    Inside a running flow, the run is a subflow on the caller's API: nothing to choose or export."""
    if caller_flow_run() is not None:
        if ephemeral:
            raise UsageError(
                "ephemeral=True does not apply inside a running flow: the pipeline runs as its subflow, "
                "on the flow's Prefect API"
            )
        return _caller_api_url() is not None
    return connect(root, ephemeral=ephemeral or None, announce=announce).links_survive


def run_repro(
    repo: Path | None = None,
    *,
    selection: Selection = EVERYTHING,
    sync: DataSync = NO_SYNC,
    retries: int = 1,
    fail_once: bool = False,
    show_metrics: bool = True,
    ephemeral: bool = False,
    debug: bool = False,
    announce: Callable[[str], None] = lambda _: None,
) -> FlowRunRecord:
    """One Prefect task runs `dvc repro` with the selection's arguments; DVC decides what is
    up to date. With `sync.push`, a `dvc push` task uploads the selected stages' outputs afterwards."""
    _check_retries(retries)
    root, stages = _prepare(repo, selection, sync)
    keep_link = connect_run(root, ephemeral, announce)
    repro_args = (*sync.repro_args(), *selection.dvc_args())
    open_ahead(root)  # the DVC child warmed up now shares the run lock's file, to hold the lock once taken
    commands.warm_up(["repro", *repro_args], root, metrics=show_metrics)  # overlaps Prefect's import
    with collector_paused():
        from dvcflow.flows.repro import dvc_pipeline_flow

        import_engine()

    pushed = (() if selection.everything else stages) if sync.push else None
    return execute_exclusively(
        root,
        announce,
        dvc_pipeline_flow,
        keep_link,
        debug,
        fail_once=fail_once,
        show_metrics=show_metrics,
        repro_args=repro_args,
        retries=retries,
        push=pushed,
    )


def check_stage_inputs(
    root: Path, params_path: Path | None, selection: Selection = EVERYTHING
) -> Path | None:
    """The cached-DAG run's pre-flight, before Prefect is contacted: a typo costs a one-line error, not a
    failed run.

    `--params PATH` names the params file the run uses, and it must be one the pipeline already reads
    (`params.yaml`, or a file a stage lists under `params:`): run-b runs the pipeline as `dvc.yaml`
    declares it, so that DVC agrees with the result; values from anywhere else could not be honoured.
    Also refused: params the stages read that the files lack, and source data that is missing.
    """
    from dvcflow.core.errors import ConfigError
    from dvcflow.engine.executor import open_session

    default = root / repository.DEFAULT_PARAMS_FILE
    if params_path is None:
        resolved = default.resolve() if default.is_file() else None
    else:
        resolved = (params_path if params_path.is_absolute() else root / params_path).resolve()
        if not resolved.is_file():
            raise ConfigError(f"{root / params_path}: params file not found")
    session = open_session(root)  # the run's session: the flow goes on using it; the caller closes it
    read = session.params_paths()
    if params_path is not None and resolved not in read:
        shown = ", ".join(sorted(path.relative_to(root).as_posix() for path in read))
        raise ConfigError(
            f"{resolved}: no stage of this pipeline reads this params file",
            hint=f"run-b runs the pipeline as dvc.yaml declares it: edit {shown} instead"
            if shown
            else "no stage of this pipeline declares params",
        )
    for path, key, stage in session.missing_params():
        raise ConfigError(f"{path}: missing key '{key}'", hint=f"stage {stage} reads it")
    for path, stage in session.missing_sources(session.select(selection)):
        raise ConfigError(
            f"{path}: not found (stage {stage} needs it)",
            hint="fetch it with `dvc pull` or `dvc checkout`",
        )
    return resolved


def run_cached_dag(
    repo: Path | None = None,
    *,
    params_path: Path | None = None,
    selection: Selection = EVERYTHING,
    jobs: int | None = None,
    keep_going: bool = False,
    retries: int = 1,
    resources: Mapping[str, int] | None = None,
    dask_address: str | None = None,
    shared_disk: bool | None = None,
    ephemeral: bool = False,
    debug: bool = False,
    announce: Callable[[str], None] = lambda _: None,
) -> FlowRunRecord:
    """Prefect owns the stage DAG and its cache decides what runs, on any DVC repository; unchanged
    stages end Cached, and DVC agrees with the result. `resources`: the capacity of each resource the
    stages declare (over `[tool.dvcflow.capacity]`; see `dvcflow.engine.resources`). On Dask, as
    `run_per_stage`; the cache's verdict is taken here either way."""
    from dvcflow.engine.executor import close_session
    from dvcflow.engine.resources import resources_for

    _check_counts(jobs, retries)
    if dask_address is not None:
        check_dask_address(dask_address)
    root = repository.find_repo_root(repo)
    repository.check_params_files(root)
    try:
        resolved = check_stage_inputs(root, params_path, selection)
        clones = _clones(root, dask_address, shared_disk, announce)
        return _run_engine_flow(
            root,
            resources_for(root, selection, resources, dask_address=dask_address),
            Hosting(ephemeral=ephemeral, debug=debug, announce=announce),
            cached_dag=True,
            jobs=_engine_jobs(jobs, dask_address),
            dask_address=dask_address,
            params_path=resolved,
            keep_going=keep_going,
            retries=retries,
            selection=selection,
            **({"clones": clones} if clones is not None else {}),
        )
    finally:
        close_session(root)  # the flow closed it, unless it never ran


def _run_engine_flow(
    root: Path,
    planned: Resources,
    hosting: Hosting,
    *,
    cached_dag: bool,
    jobs: int,
    dask_address: str | None = None,
    **parameters: Any,
) -> FlowRunRecord:
    """The stage engine's flow (`cached_dag`: run-b's, else `--per-stage`'s) on a task runner of `jobs`
    workers, once the input is checked: connected, the run's resources shared, the engine imported with
    the collector paused."""
    from dvcflow.engine.resources import share

    announce, debug = hosting["announce"], hosting["debug"]
    keep_link = connect_run(root, hosting["ephemeral"], announce)
    planned = share(planned, keep_link, announce)
    with collector_paused():
        from dvcflow.flows.per_stage import per_stage_flow, task_runner

        flow: Any = per_stage_flow
        if cached_dag:
            from dvcflow.flows.cached_dag import cached_dag_flow

            flow = cached_dag_flow
        import_engine()

    runner = task_runner(jobs, dask_address)
    return execute_exclusively(
        root,
        announce,
        flow.with_options(task_runner=runner),
        keep_link,
        debug,
        jobs=jobs,
        resources=planned,
        **parameters,
    )


def plan_stages(repo: Path | None = None, selection: Selection = EVERYTHING) -> Plan:
    """The waves of the selected stages and which would run, from DVC's graph and one `dvc status`, each
    with the resources and mutex groups it declares; runs nothing."""
    from dvcflow.core.graph import plan
    from dvcflow.core.resources import ResourceSettings, demands_for

    root = repository.find_repo_root(repo)
    repository.check_params_files(root)  # the run commands' first check: the same line for the same input
    with PipelineSession(root) as session:
        selected = session.select(selection)
        demands = demands_for(selected, session.declarations(selected), ResourceSettings.read(root))
        return plan(session.snapshot(), selected, force=selection.force, demands=demands)


def _check_counts(jobs: int | None, retries: int) -> None:
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    _check_retries(retries)


DASK_JOBS = 10_000  # on a Dask cluster the stages queue there, for its workers' threads


def _engine_jobs(jobs: int | None, dask_address: str | None) -> int:
    """Stages submitted at once: `jobs`, else the CPUs here, or on Dask as many as are ready."""
    return jobs or (cpu_count() if dask_address is None else DASK_JOBS)


def _clones(
    root: Path, dask_address: str | None, shared_disk: bool | None, announce: Callable[[str], None]
) -> CloneSource | None:
    """Where a Dask run's stages find the code when the workers do not share this disk (asked of them
    unless `shared_disk` says); None to run them in this repository (`services.remote_stages`)."""
    if dask_address is None or shared_disk is True:
        return None
    from dvcflow.services.remote_stages import plan_clones

    return plan_clones(root, dask_address, shared_disk, announce)


def check_dask_address(address: str) -> None:
    """Fail in a second, before any flow run, when no Dask scheduler listens there."""
    import importlib.util
    import socket
    from urllib.parse import urlsplit

    from dvcflow.core.errors import ConfigError

    if importlib.util.find_spec("prefect_dask") is None:
        raise UsageError(
            "--dask-address needs prefect-dask, which is not installed", hint="pip install 'dvcflow[dask]'"
        )
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not parts.port:
        raise UsageError(f"--dask-address must look like tcp://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=3):
            pass
    except OSError as err:
        raise ConfigError(
            f"no Dask scheduler answers at {address} ({err})", hint="start one with `dask scheduler`"
        ) from None


def run_per_stage(
    repo: Path | None = None,
    *,
    jobs: int | None = None,
    keep_going: bool = False,
    retries: int = 1,
    dask_address: str | None = None,
    show_metrics: bool = True,
    sync: DataSync = NO_SYNC,
    resources: Mapping[str, int] | None = None,
    ephemeral: bool = False,
    debug: bool = False,
    selection: Selection = EVERYTHING,
    announce: Callable[[str], None] = lambda _: None,
    shared_disk: bool | None = None,
) -> FlowRunRecord:
    """One Prefect task per DVC stage of `selection`, at most `jobs` running at once (default: the CPUs
    here; on a Dask cluster, as many as it takes). `resources`: the capacity of each resource the stages
    declare (over `[tool.dvcflow.capacity]`; see `dvcflow.engine.resources`). On Dask, `shared_disk`
    (None: asked of the workers) says whether they run the stages in this repository or each in a clone
    of this commit (`dvcflow.services.remote_stages`)."""
    _check_counts(jobs, retries)
    if dask_address is not None:
        check_dask_address(dask_address)
    from dvcflow.engine.executor import close_session
    from dvcflow.engine.resources import resources_for

    root = repository.find_repo_root(repo)
    try:
        _, stages = _prepare(root, selection, sync, keep_session=True)
        clones = _clones(root, dask_address, shared_disk, announce)
        return _run_engine_flow(
            root,
            resources_for(root, selection, resources, dask_address=dask_address),
            Hosting(ephemeral=ephemeral, debug=debug, announce=announce),
            cached_dag=False,
            jobs=_engine_jobs(jobs, dask_address),
            dask_address=dask_address,
            keep_going=keep_going,
            retries=retries,
            show_metrics=show_metrics,
            selection=selection,
            push=(() if selection.everything else stages) if sync.push else None,
            pull=sync.pull,
            allow_missing=sync.allow_missing,
            **({"clones": clones} if clones is not None else {}),
        )
    finally:
        close_session(root)  # the flow closed it, unless it never ran
