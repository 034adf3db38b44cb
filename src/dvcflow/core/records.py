"""What a run asks and what it did, as plain values every layer can pass around: what to move between the
workspace and the DVC remote (`DataSync`), what DVC did with each stage (`StagesReport`, `ReproOutcome`),
and the flow run with its task runs as read back from Prefect (`FlowRunRecord`, `TaskRunRecord`).

Why in `core`: the engine, the flows, the services and the renderer all hold these, and none of them
should import the layer that fills them (DVC's log is read in `dvcflow.dvc.commands`, Prefect's API in
`dvcflow.api.execution`). Pure data: no DVC, no Prefect, cheap to import.

`dvc repro --pull` restores from the remote what a stage would otherwise have to recompute (a fresh clone
reproduces with every stage restored, none rerun); `--allow-missing` skips stages whose only change is
missing data; `--push` uploads the outputs after a Completed run. Every run mode takes one `DataSync`
value (keyword `sync=`), so the flags mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dvcflow.core.errors import ExitCode, exit_code_for_state

if TYPE_CHECKING:
    from dvcflow.core.metrics import MetricsSnapshot


@dataclass(frozen=True)
class DataSync:
    """What to fetch before and upload after the stages run; the default moves nothing."""

    pull: bool = False
    """Fetch missing outputs and dependencies from the default remote (and its run cache) first."""
    allow_missing: bool = False
    """Skip stages whose only change is missing data (`dvc repro --allow-missing`)."""
    push: bool = False
    """After a Completed run, upload the outputs to the default remote (`dvc push`, a task of its own)."""

    @property
    def needs_remote(self) -> bool:
        return self.pull or self.push

    def repro_args(self) -> list[str]:
        """The `dvc repro` arguments for the fetch side (`--push` is a separate `dvc push`)."""
        return [flag for flag, on in (("--pull", self.pull), ("--allow-missing", self.allow_missing)) if on]

    def flags(self) -> list[str]:
        """The command-line flags in use, for messages."""
        return [
            flag
            for flag, on in (
                ("--pull", self.pull),
                ("--allow-missing", self.allow_missing),
                ("--push", self.push),
            )
            if on
        ]


NO_SYNC = DataSync()


@dataclass(frozen=True)
class StagesReport:
    """What DVC did with each stage it visited, in the order it said so, named as `dvc repro` names them."""

    ran: tuple[str, ...] = ()
    """Their commands ran (`Running stage 'x':`)."""
    skipped: tuple[str, ...] = ()
    """Up to date (`Stage 'x' didn't change, skipping`)."""
    pulled: tuple[str, ...] = ()
    """Restored from the remote (`Pulling data for stage: 'x'`, with --pull)."""
    restored: tuple[str, ...] = ()
    """Restored from DVC's run cache without running (`Stage 'x' is cached`)."""
    failed: tuple[str, ...] = ()
    """The stage DVC stopped at (`ERROR: failed to reproduce 'x'`): not among those that ran."""

    def merged(self, later: StagesReport) -> StagesReport:
        """This attempt and a later retry of it: a stage that ran in either ran, unless the retry failed
        it; what failed is what the last attempt failed; the rest as last seen."""
        failed = later.failed
        ran = tuple(name for name in dict.fromkeys((*self.ran, *later.ran)) if name not in failed)

        def rest(earlier: tuple[str, ...], now: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(name for name in dict.fromkeys((*earlier, *now)) if name not in ran + failed)

        return StagesReport(
            ran,
            rest(self.skipped, later.skipped),
            rest(self.pulled, later.pulled),
            rest(self.restored, later.restored),
            failed,
        )

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "ran": list(self.ran),
            "skipped": list(self.skipped),
            "pulled": list(self.pulled),
            "restored": list(self.restored),
            "failed": list(self.failed),
        }


@dataclass(frozen=True)
class ReproOutcome:
    """What run-a's flow returns: the stages DVC visited, and the metrics when the summary task ran."""

    stages: StagesReport = field(default_factory=StagesReport)
    metrics: MetricsSnapshot | None = None


@dataclass(frozen=True)
class TaskRunRecord:
    name: str
    state: str
    attempts: int
    seconds: float
    message: str | None = None
    waited: float | None = None
    """Seconds a stage that declares resources waited for them (None: it declares none)."""


@dataclass(frozen=True)
class FlowRunRecord:
    id: str
    name: str
    flow_name: str
    state: str
    seconds: float
    tasks: tuple[TaskRunRecord, ...]
    ui_link: str | None
    message: str | None = None
    metrics: MetricsSnapshot | None = None
    stages: StagesReport | None = None
    """What `dvc repro` did with each stage, for run-a's single `dvc repro` task (None otherwise)."""

    @property
    def completed(self) -> bool:
        return self.state == "Completed"

    @property
    def exit_code(self) -> ExitCode:
        """From the final state, by the one exit-code table (`dvcflow.core.errors`)."""
        return exit_code_for_state(self.state)
