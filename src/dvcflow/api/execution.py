"""After a flow: its run and task runs read back from the Prefect API as plain records.

Imported only once Prefect's settings are in the environment (see `dvcflow.api.connect`)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from uuid import UUID

from dvcflow.api.failures import state_message
from dvcflow.api.links import flow_run_link
from dvcflow.api.tags import IDENTITY_TAGS
from dvcflow.core.errors import ApiLostError, ApiUnreachableError, ServerError
from dvcflow.core.metrics import MetricsSnapshot
from dvcflow.core.records import FlowRunRecord, ReproOutcome, TaskRunRecord
from dvcflow.proc.gcpause import freeze_for_exit

PAGE = 200  # the server's default and maximum page size


# What running a flow imports lazily (seen with `python -X importtime`); `import_engine` imports them
# up front, while the caller has the garbage collector paused (see `dvcflow.proc.gcpause`).
_ENGINE_MODULES = ("prefect.flow_engine", "prefect.task_engine", "prefect.artifacts", "fastapi.encoders")


def import_engine() -> None:
    import importlib

    for name in _ENGINE_MODULES:
        importlib.import_module(name)


# Prefect names a task run "<task name>-<3 hex digits>" unless given a task_run_name.
_DEFAULT_SUFFIX = re.compile(r"-[0-9a-f]{3}$")


def _quiet_heartbeats() -> dict[str, Any]:
    """The heartbeat thread costs ~1 s at the end of every flow run and nothing here consumes it."""
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        return {}
    return {"flows.heartbeat_frequency": None}


class _WithoutTraceback(logging.Formatter):
    """Formats like the wrapped formatter, minus the traceback: the summary says what failed."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def hide_console_tracebacks() -> None:
    """Prefect prints a task's traceback on the terminal; dvcflow shows one only with --debug.

    The Prefect UI (the API log handler) still receives the full traceback.
    """
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in [logging.getLogger(), *loggers]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler.formatter, _WithoutTraceback
            ):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


def caller_flow_run() -> Any | None:
    """The flow run this code runs inside of (a user's flow calling `dvcflow.Pipeline`), or None.

    Never imports Prefect: a process that has not imported it runs no flow."""
    context = sys.modules.get("prefect.context")
    if context is None:
        return None
    run = context.FlowRunContext.get()
    return run.flow_run if run is not None else None


def execute(
    flow: Callable[..., Any],
    *,
    keep_link: bool,
    tags: tuple[str, ...] = (),
    debug: bool = False,
    **parameters: Any,
) -> FlowRunRecord:
    """Run `flow`, wait for its end, and read the flow run and its task runs back.

    Inside a running flow (`caller_flow_run`), `flow` runs as its subflow, and the record is the
    subflow run's; the process, which goes on after it, is not frozen for exit.

    Losing the API mid-run is a one-line `ApiUnreachableError`, not a client traceback: DVC writes
    `dvc.lock` per finished stage, so the repository stays consistent and a re-run resumes.
    """
    import httpx

    api = os.environ.get("PREFECT_API_URL") or "Prefect's temporary server"
    try:
        return _execute(flow, keep_link=keep_link, tags=tags, debug=debug, parameters=parameters)
    except httpx.TransportError as err:
        raise ApiLostError(
            f"lost the Prefect API at {api} during the run ({type(err).__name__}: {err})",
            hint="finished stages are recorded in dvc.lock; start the server again and re-run",
        ) from None
    except httpx.HTTPStatusError as err:
        if err.response.status_code not in (401, 403):
            raise
        raise ApiUnreachableError(
            f"the Prefect API at {api} refused the credentials ({err.response.status_code})",
            hint="set DVCFLOW_AUTH (or PREFECT_API_AUTH_STRING) to the server's USER:PASS",
        ) from None
    except RuntimeError as err:
        if "ephemeral Prefect API server" not in str(err):
            raise
        raise ServerError(
            f"Prefect's temporary server did not start ({err})",
            hint="run `dvcflow server start` and drop --ephemeral",
        ) from None


def _execute(
    flow: Callable[..., Any],
    *,
    keep_link: bool,
    tags: tuple[str, ...],
    debug: bool,
    parameters: dict[str, Any],
) -> FlowRunRecord:
    from prefect import tags as prefect_tags
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    if not debug:
        hide_console_tracebacks()
    subflow = caller_flow_run() is not None
    with temporary_settings(updates=_quiet_heartbeats()), prefect_tags(*tags), _task_runs_seen():
        state = flow(**parameters, return_state=True)
        flow_run_id: UUID = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            seen = sum(1 for run in _seen_task_runs.values() if run.flow_run_id == flow_run_id)
            task_runs = _known_task_runs(flow_run_id) or _final_task_runs(client, flow_run_id, seen)
            waits = dict(_waits)
        ui_link = flow_run_link(flow_run_id) if keep_link else None
    returned = _returned(state)
    if not subflow:  # a top-level run is its process's last work (`gcpause`); a caller's flow goes on
        freeze_for_exit()
    tasks = tuple(
        TaskRunRecord(
            name=_DEFAULT_SUFFIX.sub("", run.name),
            state=run.state_name or "Unknown",
            attempts=run.run_count,
            seconds=run.total_run_time.total_seconds(),
            message=state_message(run.state) if run.state and not run.state.is_completed() else None,
            waited=waits.get(run.id),
        )
        for run in task_runs
    )
    return FlowRunRecord(
        id=str(flow_run_id),
        name=flow_run.name,
        flow_name=getattr(flow, "name", "flow"),
        state=state.name or state.type.value,
        seconds=flow_run.total_run_time.total_seconds() or _elapsed(flow_run),
        tasks=tasks,
        ui_link=ui_link,
        message=state_message(state) if not state.is_completed() else None,
        metrics=returned.metrics if isinstance(returned, ReproOutcome) else returned,
        stages=returned.stages if isinstance(returned, ReproOutcome) else None,
    )


# The engine's own `TaskRun` objects, which it keeps updating (state, attempts, run time) until the final
# state: what the summary shows, without waiting for the server to record them from events. A flow that
# knows every task run it submitted declares them (`declare_task_runs`); otherwise the API is read.
# Only while `execute` runs a flow (not in a long-lived `serve` process, where nothing would read them).
_seen_task_runs: dict[UUID, Any] = {}


_declared: dict[UUID, tuple[UUID, ...]] = {}


_collecting = False


_waits: dict[UUID, float] = {}  # task run → seconds it waited for resources (`note_wait`)


def note_wait(task_run_id: UUID, seconds: float) -> None:
    """A stage that declares resources waited `seconds` for them (for this run's capacity in the
    scheduler, for another run's in the server's limits): added up, shown in the summary."""
    if _collecting:
        _waits[task_run_id] = _waits.get(task_run_id, 0.0) + seconds


def remember_task_run(task_run: Any = None) -> None:
    """Called by a task as it starts (the current one), and by a cache policy, which also sees cache
    hits (whose function never runs)."""
    if not _collecting:
        return
    if task_run is None:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if context is None:
            return
        task_run = context.task_run
    _seen_task_runs[task_run.id] = task_run


def declare_task_runs(flow_run_id: UUID, task_run_ids: Iterable[UUID]) -> None:
    """Every task run of the flow run, all finished: the summary may be built from them."""
    if _collecting:
        _declared[flow_run_id] = tuple(task_run_ids)


@contextlib.contextmanager
def untagged_tasks() -> Iterator[None]:
    """Inside a flow: task runs submitted here do not inherit dvcflow's identity tags (`run_tags`, which
    only identify flow runs). Prefect asks the API for a concurrency slot for each tag of each task run,
    a database write that a busy SQLite answers 503 and the client retries after ~2 s. A user's own tags
    (`prefect.tags(...)` around a run) still reach the task runs: tag concurrency limits and filters apply."""
    from prefect.context import TagsContext

    inherited = TagsContext.get().current_tags
    with TagsContext(current_tags={tag for tag in inherited if not tag.startswith(IDENTITY_TAGS)}):
        yield


@contextlib.contextmanager
def _task_runs_seen() -> Iterator[None]:
    """Collect the task runs of the flow `execute` runs, and forget them afterwards."""
    global _collecting
    _collecting = True
    try:
        yield
    finally:
        _collecting = False
        _seen_task_runs.clear()
        _declared.clear()
        _waits.clear()


def _known_task_runs(flow_run_id: UUID) -> list[Any] | None:
    """The declared task runs, as `_final_task_runs` orders them, if each was seen in a final state."""
    ids = _declared.pop(flow_run_id, None)
    runs = [_seen_task_runs.pop(task_run_id, None) for task_run_id in ids or ()]
    if ids is None or not all(run is not None and run.state and run.state.is_final() for run in runs):
        return None
    return sorted(runs, key=_summary_order)


def _summary_order(run: Any) -> tuple[bool, float, str]:
    """The summary's order, whether its task runs were seen here or read from the API: expected start
    (the client's, which the server stores), then name for task runs submitted in the same instant."""
    when = run.expected_start_time or (run.state.timestamp if run.state is not None else None)
    return (when is None, when.timestamp() if when is not None else 0.0, run.name)


def _final_task_runs(client: Any, flow_run_id: UUID, at_least: int = 0, patience: float = 5.0) -> list[Any]:
    """The flow run's task runs once the API shows each in its final state (and at least the `at_least`
    this process saw run).

    The server records task runs and their states from events, a moment after they happen; read too
    early and the summary would show a stage still Running, or miss a task run altogether.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + patience
    while True:
        runs: list[Any] = []
        while True:  # the API answers at most PAGE task runs per call
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=PAGE,
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < PAGE:
                break
        if len(runs) >= at_least and all(run.state is not None and run.state.is_final() for run in runs):
            return sorted(runs, key=_summary_order)
        if time.monotonic() > deadline:
            return sorted(runs, key=_summary_order)
        time.sleep(0.1)


def _returned(state: Any) -> MetricsSnapshot | ReproOutcome | None:
    """The flow's return value: the metrics snapshot of its `metrics summary` task, or run-a's outcome
    (which a Failed run-a flow carries too, to say which stages ran before the failure)."""
    if not (state.is_completed() or state.is_failed()):
        return None
    try:
        value = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read back is not worth failing the summary for
        return None
    return value if isinstance(value, MetricsSnapshot | ReproOutcome) else None


def _elapsed(flow_run: Any) -> float:
    if flow_run.start_time and flow_run.end_time:
        return float((flow_run.end_time - flow_run.start_time).total_seconds())
    return 0.0
