"""`dvcflow sweep`: the trials of a `-S` grid, their results, and the live state a sweep shares with
its flow runs.

Provides:
- `TrialSpec`, `TrialResult`, `SweepProgress`, `SweepReport`: plain records for the CLI to render.
- `SweepSession`: the one mutable object of a sweep (results, progress, the Ctrl-C event), found by the
  parent flow through `session(id)`, since a Prefect flow parameter must be plain JSON.
- `TrialJob`: all a trial needs, as plain data, since it may run in another process (a Dask worker); it
  learns of a Ctrl-C from a mark in the sweep's scratch folder (`mark_cancelled`).
- `best_trial` and `table_rows`: the best trial by a metric, and the trial table (CLI and artifact).
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dvcflow.core.metrics import Scalar
from dvcflow.core.records import FlowRunRecord
from dvcflow.dvc.experiments import Override

COMPLETED, FAILED, CANCELLED, NOT_RUN = "Completed", "Failed", "Cancelled", "NotRun"
CANCEL_MARK = "cancelled"  # a file in the scratch folder: the sweep was interrupted


@dataclass(frozen=True)
class TrialSpec:
    index: int  # 1-based, in the grid's order
    overrides: tuple[Override, ...]

    def values(self) -> dict[str, str]:
        return {override.label: override.value for override in self.overrides}


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: plain data, so that a Dask worker (which sees the same paths) can run it."""

    root: Path  # the user's repository
    baseline: str  # the commit the trial starts from
    scratch: Path  # the sweep's folder for trial workspaces
    cache: Path  # the repository's DVC cache, shared by the trials
    spec: TrialSpec
    name: str  # the trial's flow run name, and its experiment's name when saved
    save: bool
    per_stage: bool

    @property
    def cancelled(self) -> bool:
        """The sweep was interrupted: its scratch folder is marked, or already removed."""
        return (self.scratch / CANCEL_MARK).exists() or not self.scratch.is_dir()


def mark_cancelled(scratch: Path) -> None:
    """Tell every trial of the sweep, in this process or on a worker, that it was interrupted."""
    with contextlib.suppress(OSError):  # the folder is already gone: that says the same
        (scratch / CANCEL_MARK).touch()


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

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED


@dataclass(frozen=True)
class SweepProgress:
    total: int
    running: int
    completed: int
    failed: int  # failed or cancelled

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
    ) -> None:
        self.root, self.baseline, self.trials, self.scratch = root, baseline, trials, scratch
        self.cache = cache
        self.save, self.per_stage = save, per_stage
        self.metric, self.maximize = metric, maximize
        self.varying = varying_params(trials)
        self.run_name = "sweep"  # the parent flow run's name, set when it starts; trials are named after it
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._results: dict[int, TrialResult] = {}

    def job(self, index: int) -> TrialJob:
        spec = self.trials[index - 1]
        name = f"{self.run_name}-{index}"
        return TrialJob(
            self.root, self.baseline, self.scratch, self.cache, spec, name, self.save, self.per_stage
        )

    def interrupt(self) -> None:
        """Ctrl-C: trials not yet saved stop (see `TrialJob.cancelled`)."""
        mark_cancelled(self.scratch)

    def started(self, index: int) -> None:
        with self._lock:
            self._running.add(index)
        self._report()

    def finished(self, result: TrialResult) -> None:
        with self._lock:
            self._running.discard(result.index)
            self._results[result.index] = result
        self._report()

    def results(self) -> tuple[TrialResult, ...]:
        """Every trial, in grid order; those that never finished are NotRun."""
        with self._lock:
            done = dict(self._results)
        return tuple(
            done.get(spec.index) or TrialResult(spec.index, "", spec.values(), NOT_RUN, 0.0)
            for spec in self.trials
        )

    def progress(self) -> SweepProgress:
        with self._lock:
            completed = sum(result.completed for result in self._results.values())
            return SweepProgress(
                len(self.trials), len(self._running), completed, len(self._results) - completed
            )

    def _report(self) -> None:
        self._on_progress(self.progress())


_SESSIONS: dict[str, SweepSession] = {}


@contextmanager
def registered(session: SweepSession) -> Iterator[str]:
    """The session's id for the flows' parameters, valid while the sweep runs."""
    key = uuid.uuid4().hex
    _SESSIONS[key] = session
    try:
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

    @property
    def exit_code(self) -> int:
        """0 only when every trial Completed; 130 after Ctrl-C; 1 otherwise (`errors.ExitCode`)."""
        from dvcflow.core.errors import ExitCode, exit_code_for_state

        if self.run.completed and not all(trial.completed for trial in self.trials):
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


def table_rows(
    trials: tuple[TrialResult, ...], varying: tuple[str, ...], best: int | None
) -> list[dict[str, Scalar]]:
    """One row per trial: the Prefect artifact's table, and the data of `--json`."""
    rows: list[dict[str, Scalar]] = []
    for trial in trials:
        row: dict[str, Scalar] = {"trial": trial.index, "name": trial.name}
        row.update({label: trial.values.get(label) for label in varying})
        row.update({name: trial.metrics.get(name) for name in metric_names(trials)})
        row.update(state=trial.state, seconds=round(trial.seconds, 2), best=trial.index == best)
        rows.append(row)
    return rows
