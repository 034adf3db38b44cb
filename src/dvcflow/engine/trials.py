"""`dvcflow sweep`: the trials of a `-S` grid, their results, and the live state a sweep shares with
its flow runs.

Provides:
- `TrialSpec`, `TrialResult`, `SweepProgress`, `SweepReport`: plain records for the CLI to render.
- `SweepSession`: the one mutable object of a sweep (results, progress, the Ctrl-C event), found by the
  parent flow through `session(id)`, since a Prefect flow parameter must be plain JSON.
- `TrialJob`: all a trial needs, as plain data, since it may run in another process (a Dask worker); it
  learns of a Ctrl-C from a mark in the sweep's scratch folder (`mark_cancelled`). On workers that do not
  see this disk (`clone`), it runs in a clone of the caller's commit instead (docs/remote.md), and learns
  of a Ctrl-C from a Dask event of the sweep's (`announce_cancel`), the mark's twin on the cluster.
- Resources (docs/resources.md): a trial that is one `dvc repro` starts only when what its stages need
  one at a time fits what is free, and holds it to its end (`SweepSession.room`, `TrialJob.grant`);
  per-stage trials take each stage's from one pool the trials share (`Resources.pool`), except on Dask,
  where a trial holds the whole of it and its stages share what its worker reserved for it
  (`TrialJob.stage_resources`).
- `best_trial` and `table_rows`: the best trial by a metric, and the trial table (CLI and artifact).

A grid sweep knows its trials up front; a search (`--search`, `dvcflow.engine.search`) asks its study
for the next point as a trial ends (`SweepSession.next_trial`) and tells it how each ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvcflow.core.clones import CloneSource
from dvcflow.core.metrics import Scalar
from dvcflow.core.records import FlowRunRecord
from dvcflow.core.resources import (
    NO_DEMAND,
    NO_GRANT,
    NO_RESOURCES,
    Capacity,
    Grant,
    Resources,
    one_at_a_time,
)
from dvcflow.dvc.experiments import Override
from dvcflow.engine.scheduler import ResourcePool, shared

if TYPE_CHECKING:
    from dvcflow.engine.search import Search

COMPLETED, FAILED, CANCELLED, NOT_RUN = "Completed", "Failed", "Cancelled", "NotRun"
PRUNED = "Pruned"  # a search stopped it early (`--prune`); kept as an experiment
ENDED_WELL = (COMPLETED, PRUNED)
CANCEL_MARK = "cancelled"  # a file in the scratch folder: the sweep was interrupted
DASK_TIMEOUT_S = 10  # to reach the Dask scheduler when a Ctrl-C is announced there


@dataclass(frozen=True)
class TrialSpec:
    index: int  # 1-based, in the grid's order
    overrides: tuple[Override, ...]

    def values(self) -> dict[str, str]:
        return {override.label: override.value for override in self.overrides}


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: plain data, so that a Dask worker can run it: in the caller's paths (a shared
    disk), or, with `clone`, in a clone of the caller's commit with the caller's `dvc.lock` files
    (`lock`)."""

    root: Path  # the user's repository
    baseline: str  # the commit the trial starts from
    scratch: Path  # the sweep's folder for trial workspaces
    cache: Path  # the repository's DVC cache, shared by the trials
    spec: TrialSpec
    name: str  # the trial's flow run name, and its experiment's name when saved
    save: bool
    per_stage: bool
    clone: CloneSource | None = None  # the worker does not see `root`: the commit its clone runs
    # With `clone`: every lock file of the pipeline as it stands here, as one JSON text (lock file → its
    # text, None for one the caller lacks: `dvc.clone_stage.lock_text`); None: the clone's own.
    lock: str | None = None
    resources: Resources = NO_RESOURCES  # the sweep's: its stages' demands, the capacity, the shared pool
    grant: Grant = NO_GRANT  # what the trial holds while it runs (see `SweepSession.holds`)
    cancel_event: str = ""  # on Dask: the sweep's event that says it was interrupted (`announce_cancel`)

    @property
    def cancelled(self) -> bool:
        """The sweep was interrupted: its scratch folder is marked, or already removed; in a clone, where
        that folder is on another machine's disk, the sweep's Dask event is set (`announce_cancel`)."""
        if self.clone is None:
            return (self.scratch / CANCEL_MARK).exists() or not self.scratch.is_dir()
        return bool(self.cancel_event) and _announced(self.cancel_event)

    @property
    def stage_resources(self) -> Resources:
        """What a per-stage trial's stages are scheduled against: the sweep's (their pool shared with the
        other trials, in the sweep's process); on Dask, what the trial's task reserved on its worker (its
        stages' needs one at a time), so two `gpu: 1` stages of one trial never run at once on a `GPU=1`
        worker. Mutex groups across trials the sweep keeps apart: such a trial holds them whole."""
        if not self.resources.dask:
            return self.resources
        reserved = Capacity(one_at_a_time(self.resources.demands.values()).resources)
        return dataclasses.replace(self.resources, capacity=reserved, dask=False, pool="")

    @property
    def folder(self) -> Path:
        """The trial's workspace folder (a git worktree)."""
        return self.scratch / f"trial-{self.spec.index}"

    @property
    def pruned(self) -> bool:
        """A search stopped this trial early (`mark_pruned`)."""
        return (self.scratch / f"trial-{self.spec.index}.pruned").exists()


def mark_pruned(scratch: Path, index: int) -> None:
    with contextlib.suppress(OSError):
        (scratch / f"trial-{index}.pruned").touch()


def mark_cancelled(scratch: Path) -> None:
    """Tell every trial of the sweep that sees this disk, in this process or on a worker, that it was
    interrupted."""
    with contextlib.suppress(OSError):  # the folder is already gone: that says the same
        (scratch / CANCEL_MARK).touch()


def announce_cancel(address: str, event: str) -> None:
    """Tell every trial of the sweep on the Dask cluster at `address`, in a clone on a machine that does
    not see the scratch folder too, that it was interrupted: the mark's twin, a `distributed.Event` the
    trials ask for (`TrialJob.cancelled`). It stays set on the scheduler (a name and a flag), so that a
    trial that starts late still sees it. Raises `OSError` when the scheduler cannot be reached."""
    from distributed import Client

    connect: Any = Client
    with connect(address, timeout=DASK_TIMEOUT_S, set_as_default=False) as client:
        _dask_event(event, client).set()


def _announced(event: str) -> bool:
    """Whether the sweep's Dask event is set, asked from a trial on a worker (through its client); False
    where there is no worker to ask through, or its scheduler is gone (nobody left to say so)."""
    from distributed import get_client

    try:
        return bool(_dask_event(event, get_client()).is_set())
    except Exception:  # no worker here, the scheduler unreachable, a closing client: ask again next time
        return False


def _dask_event(name: str, client: Any) -> Any:
    """`distributed.Event` (untyped) by its name, through `client`."""
    from distributed import Event

    event: Any = Event
    return event(name, client=client)


@dataclass(frozen=True)
class TrialResult:
    index: int
    name: str  # the trial's flow run name, and its experiment's name when saved
    values: dict[str, str]
    state: str
    seconds: float
    metrics: dict[str, Scalar] = field(default_factory=dict)
    experiment: str | None = None  # the saved experiment's commit
    message: str | None = None
    number: int | None = None  # a search's trial number in its study
    steps: int | None = None  # a search's steps of the metric seen while it ran
    pruned_at: tuple[int, float] | None = None  # a pruned trial's last step reported, and its value

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED

    @property
    def ended_well(self) -> bool:
        """Completed, or pruned by the search (both are what was asked for)."""
        return self.state in ENDED_WELL


@dataclass(frozen=True)
class SweepProgress:
    total: int
    running: int
    completed: int
    failed: int  # failed or cancelled
    rows: tuple[TrialResult, ...] = ()  # the trials ended so far, for a live table
    best: int | None = None  # the best of them so far by the sweep's metric

    @property
    def finished(self) -> int:
        return self.completed + self.failed


class SweepSession:
    """What the sweep's flows share with the process that started them; thread-safe."""

    def __init__(
        self,
        root: Path,
        baseline: str,
        trials: tuple[TrialSpec, ...],
        scratch: Path,
        cache: Path,
        *,
        save: bool,
        per_stage: bool,
        metric: str | None,
        maximize: bool,
        on_progress: Callable[[SweepProgress], None] = lambda _: None,
        search: Search | None = None,
        clone: CloneSource | None = None,
        lock: str | None = None,
        resources: Resources = NO_RESOURCES,
        dask_address: str | None = None,
    ) -> None:
        self.root, self.baseline, self.trials, self.scratch = root, baseline, list(trials), scratch
        self.cache = cache
        self.clone, self.lock = clone, lock  # trials in clones of this commit (`TrialJob.clone`)
        self.save, self.per_stage = save, per_stage
        # What is free, shared by the trials; a trial that is one `dvc repro` holds what its stages need
        # one at a time, from its start to its end (per stage, each stage takes its own).
        self.resources = dataclasses.replace(resources, pool="" if resources.empty else uuid.uuid4().hex)
        self.pool = ResourcePool(None if resources.dask else resources.capacity)
        self.needs = one_at_a_time(resources.demands.values())  # what a trial needs of one Dask worker
        # Per stage here, each stage takes its own from the pool; on Dask the trial's worker reserves the
        # amounts (`TrialJob.stage_resources`) and the trial holds the mutex groups here, for its whole run.
        self.holds = NO_DEMAND if per_stage and not resources.dask else self.needs
        # On Dask, how the trials on the cluster learn of a Ctrl-C (`announce_cancel`).
        self.dask_address = dask_address
        self.cancel_event = f"dvcflow-sweep-cancelled-{uuid.uuid4().hex}" if dask_address else ""
        self._interrupted = False
        self._grants: dict[int, Grant] = {}
        self.metric, self.maximize = metric, maximize
        self.search = search
        if search is None:
            self.varying = varying_params(trials)
            self.planned = len(trials)
        else:
            self.varying = tuple(param.label for param in search.plan.searched)
            self.planned = search.trials
        self.run_name = "sweep"  # the parent flow run's name, set when it starts; trials are named after it
        self.notes: list[str] = []  # warnings for the user (e.g. --prune without a step metric)
        self.stopped: str | None = None  # why a search asks for no more trials
        self.summary: str | None = None  # a search's end-of-run summary (markdown)
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._results: dict[int, TrialResult] = {}
        self._numbers: dict[int, int] = {}  # a search's trial index -> its study trial number
        self._next = 1

    def next_trial(self) -> int | None:
        """The index of the next trial to start, or None when there is none: a grid's next point, or a
        search's next point asked of the study now (so it learns from every trial ended so far)."""
        with self._lock:
            if self._next > self.planned or self.stopped is not None:
                return None
            index = self._next
            self._next += 1
            if self.search is not None:
                number, overrides = self.search.ask()
                self._numbers[index] = number
                self.trials.append(TrialSpec(index, overrides))
            return index

    def number(self, index: int) -> int | None:
        return self._numbers.get(index)

    def room(self) -> bool:
        """Whether what a trial holds fits what is free now (always, when it holds nothing)."""
        return self.pool.fits(self.holds)

    def unstarted(self) -> list[int]:
        """A grid's trials not started (a search asks for none it does not start)."""
        with self._lock:
            return list(range(self._next, len(self.trials) + 1))

    def stop(self, why: str) -> None:
        """Ask for no more trials (a search whose metric no trial reports)."""
        with self._lock:
            self.stopped = self.stopped or why

    def note(self, text: str) -> None:
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def job(self, index: int) -> TrialJob:
        spec = self.trials[index - 1]
        name = f"{self.run_name}-{index}"
        return TrialJob(
            self.root, self.baseline, self.scratch, self.cache, spec, name, self.save, self.per_stage,
            self.clone, self.lock, self.resources, self._grants.get(index, NO_GRANT), self.cancel_event,
        )  # fmt: skip

    def interrupt(self) -> None:
        """Ctrl-C: trials not yet saved stop (see `TrialJob.cancelled`), wherever they run; once."""
        with self._lock:
            if self._interrupted:
                return
            self._interrupted = True
        mark_cancelled(self.scratch)
        if self.dask_address is not None:
            try:
                announce_cancel(self.dask_address, self.cancel_event)
            except OSError as err:  # TimeoutError included
                self.note(f"could not tell the trials on the Dask cluster of the Ctrl-C ({err}): they run on")

    def started(self, index: int) -> None:
        """The trial starts: it takes what it holds (`room` said it fits)."""
        if not self.holds.empty:
            grant = self.pool.take(self.holds)
            if grant is None:  # a caller's bug, even under `python -O`
                raise RuntimeError(f"trial {index} started while what it holds ({self.holds}) is taken")
            self._grants[index] = grant
        with self._lock:
            self._running.add(index)
        self._report()

    def finished(self, result: TrialResult) -> None:
        number = self._numbers.get(result.index)
        if number is not None and result.number is None:
            result = dataclasses.replace(result, number=number)
        if self.search is not None and number is not None:
            value = _number(result.metrics.get(self.metric)) if self.metric else None
            outcome = {COMPLETED: "complete", PRUNED: "pruned"}.get(result.state, "fail")
            if outcome == "complete" and value is None:
                outcome = "fail"
            self.search.tell(number, outcome, value, result.name)
        grant = self._grants.pop(result.index, None)
        if grant is not None:
            self.pool.give(grant)
        with self._lock:
            self._running.discard(result.index)
            self._results[result.index] = result
        self._report()

    def results(self) -> tuple[TrialResult, ...]:
        """Every trial, in grid order; those that never finished are NotRun."""
        with self._lock:
            done = dict(self._results)
            trials = list(self.trials)
        return tuple(
            done.get(spec.index) or TrialResult(spec.index, "", spec.values(), NOT_RUN, 0.0)
            for spec in trials
        )

    def progress(self) -> SweepProgress:
        with self._lock:
            ended = tuple(self._results[index] for index in sorted(self._results))
            running = len(self._running)
        completed = sum(result.ended_well for result in ended)
        best = pick_best(ended, self.metric, self.maximize)[1]
        return SweepProgress(self.planned, running, completed, len(ended) - completed, ended, best)

    def _report(self) -> None:
        self._on_progress(self.progress())


_SESSIONS: dict[str, SweepSession] = {}


@contextmanager
def registered(session: SweepSession) -> Iterator[str]:
    """The session's id for the flows' parameters, valid while the sweep runs."""
    key = uuid.uuid4().hex
    _SESSIONS[key] = session
    try:
        with shared(session.pool, session.resources.pool):
            yield key
    finally:
        del _SESSIONS[key]


def session(key: str) -> SweepSession:
    return _SESSIONS[key]


@dataclass(frozen=True)
class SweepReport:
    run: FlowRunRecord
    trials: tuple[TrialResult, ...]
    varying: tuple[str, ...]  # the params whose value differs between trials
    metric: str | None  # the metric that picks the best trial
    maximize: bool
    best: int | None  # the best trial's index
    saved: bool
    notes: tuple[str, ...] = ()  # warnings for the user
    search: str | None = None  # `--search`'s end-of-run summary (markdown), for a search
    applied: str | None = None  # the experiment `--apply-best` applied to the workspace

    @property
    def exit_code(self) -> int:
        """0 only when every trial Completed; 130 after Ctrl-C; 1 otherwise (`errors.ExitCode`)."""
        from dvcflow.core.errors import ExitCode, exit_code_for_state

        if self.run.completed and not all(trial.ended_well for trial in self.trials):
            return ExitCode.PIPELINE_FAILED
        return exit_code_for_state(self.run.state)


def varying_params(trials: tuple[TrialSpec, ...]) -> tuple[str, ...]:
    labels = dict.fromkeys(label for spec in trials for label in spec.values())
    return tuple(
        label
        for label in labels
        if len({spec.values().get(label) for spec in trials}) > 1 or len(trials) == 1
    )


def _number(value: Scalar) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def best_trial(trials: tuple[TrialResult, ...], metric: str, maximize: bool) -> int | None:
    """The completed trial with the best numeric `metric`; the first of equals."""
    scored = [
        (score, trial.index)
        for trial in trials
        if trial.completed and (score := _number(trial.metrics.get(metric))) is not None
    ]
    if not scored:
        return None
    pick = max if maximize else min
    best_score = pick(score for score, _ in scored)
    return next(index for score, index in scored if score == best_score)


def metric_names(trials: tuple[TrialResult, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for trial in trials for name in trial.metrics))


def pick_best(
    trials: tuple[TrialResult, ...], metric: str | None, maximize: bool
) -> tuple[str | None, int | None]:
    """The metric that ranks the trials (`metric`, or the first one they report) and the best trial."""
    chosen = metric or next(iter(metric_names(trials)), None)
    return chosen, best_trial(trials, chosen, maximize) if chosen else None


def _pruned_text(trial: TrialResult) -> str | None:
    """What a pruned trial shows for the metric it never wrote: its last value reported and the step it
    was stopped at (`12.3 (pruned at step 4)`); None for any other trial."""
    if trial.state != PRUNED or trial.pruned_at is None:
        return None
    step, value = trial.pruned_at
    return f"{value:.6g} (pruned at step {step})"


def metric_cell(trial: TrialResult, name: str, metric: str | None = None) -> Scalar:
    """A trial's value of the metric `name`; with `metric` (a table for people), a pruned trial's empty
    cell of that one says what the trial reported instead (`_pruned_text`)."""
    value = trial.metrics.get(name)
    if value is None and name == metric and (text := _pruned_text(trial)) is not None:
        return text
    return value


def table_rows(
    trials: tuple[TrialResult, ...], varying: tuple[str, ...], best: int | None, metric: str | None = None
) -> list[dict[str, Scalar]]:
    """One row per trial: the Prefect artifact's table, and the data of `--json`. With `metric` (a table
    for people), a pruned trial's empty cell of it says what the trial reported (`metric_cell`). A metric
    named like a fixed column (`state`, `best`, ...) is overwritten here: read cells with `metric_cell`."""
    rows: list[dict[str, Scalar]] = []
    for trial in trials:
        row: dict[str, Scalar] = {"trial": trial.index, "name": trial.name}
        row.update({label: trial.values.get(label) for label in varying})
        row.update({name: metric_cell(trial, name, metric) for name in metric_names(trials)})
        if trial.number is not None:  # a search's trial: its number in the study, the steps it logged
            step, value = trial.pruned_at or (None, None)
            row.update(study_trial=trial.number, steps=trial.steps, pruned_at_step=step, pruned_value=value)
        row.update(state=trial.state, seconds=round(trial.seconds, 2), best=trial.index == best)
        rows.append(row)
    return rows
