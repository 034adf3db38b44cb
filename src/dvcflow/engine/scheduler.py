"""Which stage starts when: the one scheduler behind `run-b` and `run-a --per-stage`.

`run_stages` walks a `Plan` and hands each stage to a `StageLauncher` as soon as its upstream stages have
finished: at most `jobs` stages running at once; descendants of a failure are not run; without
`keep_going`, nothing new starts after a failure. The launcher is a protocol, so the unit tests drive the
scheduler with a fake (no Prefect, no DVC) and the flows with Prefect tasks.

Pure logic: no DVC, no Prefect.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from dvcflow.core.graph import Decision, Plan, PlannedStage


class Action(StrEnum):
    """What the launcher is told to do with a stage."""

    RUN = "run"
    """Run it (DVC's status or Prefect's cache may still find nothing to do)."""
    MARK_UP_TO_DATE = "mark up to date"
    """Nothing changed here or upstream (by the one `dvc status` at the start): no work at all."""
    NOT_RUN = "not run"
    """An upstream stage failed, or another stage failed without --keep-going."""


class Outcome(StrEnum):
    """How a launched stage ended, as far as scheduling cares."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_RUN = "not run"


class StageLauncher(Protocol):
    """Starts stages and reports them finished; `edges` are the upstream stages that were launched
    (the UI draws them), never those that were not run."""

    def launch(self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...]) -> None: ...

    def next_finished(self) -> tuple[str, Outcome]:
        """Block until a launched stage has finished; its name and outcome."""
        ...


def decide(
    stage: PlannedStage, blamed: dict[str, str], first_failure: str | None, keep_going: bool
) -> tuple[Action, str, str | None]:
    """What to do with a stage whose upstream stages have all finished, why, and which failed stage is
    to blame if it does not run."""
    culprits = sorted({blamed[up] for up in stage.upstream if up in blamed})
    if culprits:
        named = ", ".join(f"'{name}'" for name in culprits)
        return Action.NOT_RUN, f"upstream stage {named} failed", culprits[0]
    if first_failure is not None and not keep_going:
        return Action.NOT_RUN, f"stage '{first_failure}' failed and --keep-going is off", None
    if stage.decision is Decision.UP_TO_DATE:
        return Action.MARK_UP_TO_DATE, stage.reason, None
    return Action.RUN, stage.reason, None


def run_stages(plan: Plan, launcher: StageLauncher, *, jobs: int, keep_going: bool) -> dict[str, Outcome]:
    """Launch every stage of `plan` once, upstream first, at most `jobs` running at once; the outcomes.

    A stage never starts while an upstream one runs (DVC's per-path locks would fail it as "busy").
    Descendants of a failure end not run; without `keep_going` so does every stage not started yet.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    stages = {stage.name: stage for stage in plan.stages}
    waiting = [stage.name for stage in plan.stages]  # wave order
    outcomes: dict[str, Outcome] = {}
    in_flight: set[str] = set()
    running: set[str] = set()  # launched with Action.RUN and not finished
    blamed: dict[str, str] = {}  # failed or not-run stage → the failed stage that caused it
    not_run: set[str] = set()
    first_failure: str | None = None
    while True:
        for name in list(waiting):
            stage = stages[name]
            if not all(up in outcomes for up in stage.upstream):
                continue
            action, reason, culprit = decide(stage, blamed, first_failure, keep_going)
            if action is Action.RUN:
                if len(running) >= jobs:
                    continue
                running.add(name)
            if culprit is not None:
                blamed[name] = culprit
            if action is Action.NOT_RUN:
                not_run.add(name)
            waiting.remove(name)
            in_flight.add(name)
            launcher.launch(stage, action, reason, tuple(up for up in stage.upstream if up not in not_run))
        if not in_flight:
            if waiting:
                raise RuntimeError(f"stages that can never start: {', '.join(waiting)}")
            return {name: outcomes[name] for name in stages}
        name, outcome = launcher.next_finished()
        in_flight.discard(name)
        running.discard(name)
        outcomes[name] = outcome
        if outcome is Outcome.FAILED:
            blamed[name] = name
            first_failure = first_failure or name
