"""What `dvcflow.Pipeline.run` hands back: a frozen `RunResult`, or a `PipelineRunError` that carries one.

Provides:
- `StageRun`: how one stage ended (its state, attempts, duration, why).
- `RunResult`: the flow run, every stage, what ran and what was up to date, the metrics; built from the
  `FlowRunRecord` the CLI summary is rendered from (`RunResult.from_record`), which it keeps.
- `PipelineRunError`: the one exception `Pipeline.run` raises when the run did not end Completed.

Pure data: no DVC, no Prefect, cheap to import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dvcflow.core.errors import DvcflowError, ExitCode, exit_code_for_state
from dvcflow.core.metrics import Scalar
from dvcflow.core.records import FlowRunRecord, StagesReport, TaskRunRecord

# The tasks of dvcflow's flows that are not stages (`dvcflow.flows.repro`; a test checks the names).
REPRO_TASK = "dvc repro"
PUSH_TASK = "dvc push"
METRICS_TASK = "metrics summary"
NON_STAGE_TASKS = frozenset({REPRO_TASK, PUSH_TASK, METRICS_TASK})

# The stage states of a per-stage run (`dvcflow.engine.task`), and Prefect's for a cache hit.
UP_TO_DATE = "UpToDate"
RESTORED = "Restored"
PULLED = "Pulled"
NOT_RUN = "NotRun"
CACHED = "Cached"
COMPLETED = "Completed"
FAILED = "Failed"

# DVC's error line for the stage a `dvc repro` stopped at (`dvc.repo.reproduce._raise_error`).
_FAILED_STAGE = re.compile(r"failed to reproduce '(?P<name>[^']+)'")


@dataclass(frozen=True)
class StageRun:
    """How one stage of the run ended."""

    name: str
    """As `dvc repro` names it: `train`, `branch@3`, `sub/dvc.yaml:train`, `data/raw/iris.csv.dvc`."""
    state: str
    """`Completed` (reproduced: its command ran, or, from one `dvc repro` task, DVC restored it from its
    run cache), `Restored` (with a task per stage: DVC restored it from its run cache), `UpToDate`,
    `Cached` (with `cached_dag=True`: Prefect's cache had it), `Pulled` (only its data was missing, fetched
    from the DVC remote), `Failed`, `NotRun` (an upstream stage failed), or another Prefect state name
    (`Crashed`, `Cancelled`)."""
    attempts: int | None = None
    """Runs of its task, retries included; None when the whole run was one `dvc repro` task."""
    seconds: float | None = None
    """Its task's run time; None when the whole run was one `dvc repro` task."""
    message: str | None = None
    """Why it ended so, when Prefect or DVC said (the error of a failed stage)."""

    @property
    def ran(self) -> bool:
        return self.state in (COMPLETED, RESTORED)

    @property
    def up_to_date(self) -> bool:
        return self.state in (UP_TO_DATE, CACHED)


@dataclass(frozen=True)
class RunResult:
    """One run of the pipeline: a Prefect flow run and how each of its stages ended."""

    flow_run_id: str
    flow_run_name: str
    flow_name: str
    state: str
    """The flow run's final state: `Completed` on success; `Failed`, `Crashed` or `Cancelled` otherwise."""
    seconds: float
    stages: dict[str, StageRun]
    """Every stage the run visited: in the order of their tasks with one task per stage; from one
    `dvc repro` task, those that ran, then those restored, pulled and up to date (DVC stops at a failure,
    so the stages after it are missing)."""
    metrics: dict[str, Scalar]
    """The pipeline's metrics after the run, `{"accuracy": 0.97}` (`{"file:name": ...}` when several
    files declare metrics); empty when none were read (a stage failed, or `show_metrics=False`)."""
    message: str | None = None
    """Why the flow run did not complete (None when it did)."""
    ui_link: str | None = None
    """The flow run's page in the Prefect UI, when the server outlives the run."""
    record: FlowRunRecord | None = field(default=None, repr=False, compare=False)
    """The flow run and its task runs as dvcflow's CLI summary shows them."""

    @classmethod
    def from_record(cls, record: FlowRunRecord) -> RunResult:
        """The stages from the stage tasks (one task per stage) or, for one `dvc repro` task, from what
        DVC's log said about each stage."""
        if record.stages is None:
            stages = {
                task.name: StageRun(task.name, task.state, task.attempts, task.seconds, task.message)
                for task in record.tasks
                if task.name not in NON_STAGE_TASKS
            }
        else:
            repro = next((task for task in record.tasks if task.name == REPRO_TASK), None)
            stages = _stages_of_repro(record.stages, repro)
        return cls(
            flow_run_id=record.id,
            flow_run_name=record.name,
            flow_name=record.flow_name,
            state=record.state,
            seconds=record.seconds,
            stages=stages,
            metrics=record.metrics.flat() if record.metrics is not None else {},
            message=record.message,
            ui_link=record.ui_link,
            record=record,
        )

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED

    @property
    def exit_code(self) -> ExitCode:
        """What `dvcflow run-a` exits with for this run (`dvcflow.core.errors.ExitCode`)."""
        return exit_code_for_state(self.state)

    @property
    def ran(self) -> tuple[str, ...]:
        """The stages reproduced: their command ran, or DVC restored them from its run cache."""
        return tuple(name for name, stage in self.stages.items() if stage.ran)

    @property
    def up_to_date(self) -> tuple[str, ...]:
        """The stages nothing had to be done for (`UpToDate`, or `Cached` with `cached_dag=True`)."""
        return tuple(name for name, stage in self.stages.items() if stage.up_to_date)

    @property
    def failed(self) -> tuple[str, ...]:
        """The stages that failed (not those left `NotRun` behind them)."""
        return tuple(name for name, stage in self.stages.items() if stage.state in (FAILED, "Crashed"))

    @property
    def tasks(self) -> tuple[TaskRunRecord, ...]:
        """Every task run of the flow run (stages, `dvc repro`, `dvc push`, `metrics summary`)."""
        return self.record.tasks if self.record is not None else ()

    def __str__(self) -> str:
        counts = [
            f"{len(self.ran)} ran",
            f"{len(self.up_to_date)} up to date",
            *([f"{len(self.failed)} failed"] if self.failed else []),
        ]
        line = f"flow run {self.flow_run_name!r} {self.state} in {self.seconds:.1f}s: {', '.join(counts)}"
        return line + (f" ({self.message.splitlines()[0]})" if self.message else "")


def _stages_of_repro(report: StagesReport, repro: TaskRunRecord | None) -> dict[str, StageRun]:
    """`dvc repro` runs stages one at a time and stops at the first failure, which its error names."""
    stages = {name: StageRun(name, COMPLETED) for name in report.ran}
    stages.update(
        {name: StageRun(name, COMPLETED, message="restored from DVC's run cache") for name in report.restored}
    )
    stages.update({name: StageRun(name, PULLED) for name in report.pulled})
    stages.update({name: StageRun(name, UP_TO_DATE) for name in report.skipped})
    if repro is not None and repro.state != COMPLETED:
        match = _FAILED_STAGE.search(repro.message or "")
        for name in report.failed or ((match["name"],) if match else ()):
            stages[name] = StageRun(name, repro.state, message=repro.message)
    return stages


class PipelineRunError(DvcflowError):
    """The pipeline's flow run ended in a state other than Completed: a stage failed (after its retries),
    the run crashed, or it was cancelled. `result` says how every stage ended; `exit_code` is what
    `dvcflow run-a` exits with for such a run (1, or 130 when cancelled)."""

    def __init__(self, result: RunResult) -> None:
        detail = f": {result.message.splitlines()[0]}" if result.message else ""
        super().__init__(
            f"flow run {result.flow_run_name!r} ended {result.state}{detail}",
            hint=f"see {result.ui_link}" if result.ui_link else None,
        )
        self.result = result
        self.exit_code = result.exit_code

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: Prefect stores a failed flow's exception
        return (type(self), (self.result,))
