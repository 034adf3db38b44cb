"""Stages on Dask workers that do not share the caller's disk: each runs in a clone at the caller's commit
(`dvcflow.dvc.clone_stage`), its data through the DVC remote, and its `dvc.lock` entry comes back.

`CloneLauncher` is the scheduler's `StageLauncher` for such a run: a stage to reproduce becomes a
`clone_stage_task` on the cluster, with the caller's `dvc.lock` files as they stand with the entries of the
stages finished so far (an upstream stage's outputs are found by those entries in the DVC remote) and its
`.dvc` files (a data source the flow verified has its new hash only there); the rest (up to date, not run)
are the engine's usual tasks, which touch no disk. `settle` then writes the entries into the caller's
`dvc.lock` files in `dvc repro`'s order and brings the outputs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import allow_failure, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed

from dvcflow.api.execution import remember_task_run, untagged_tasks
from dvcflow.api.failures import failed
from dvcflow.core.clones import CloneResult, CloneSource
from dvcflow.core.graph import PlannedStage, StageKind
from dvcflow.core.resources import NO_RESOURCES, Grant, Resources
from dvcflow.dvc import clone_stage
from dvcflow.dvc.session import PipelineSession
from dvcflow.engine.scheduler import Action, Outcome
from dvcflow.engine.task import RETRY_DELAY_S, UP_TO_DATE_STATE, PrefectLauncher
from dvcflow.proc import children


@task(name="stage in a clone", cache_policy=NO_CACHE, retry_delay_seconds=RETRY_DELAY_S)
def clone_stage_task(
    source: CloneSource, stage: str, deps: tuple[str, ...], locks: str | None, force: bool = False
) -> CloneResult | State[Any]:
    """`stage` reproduced in a clone of `source` on this worker; its `dvc.lock` entry and uncached outputs."""
    remember_task_run()
    logger = get_run_logger()
    logger.info("Reproducing %s in a clone at %s", stage, source.commit[:9])
    try:
        result = clone_stage.run_in_clone(source, stage, deps, locks, force=force, log=logger.info)
    except Exception as exc:  # the state says why in the stage's own words
        return failed(exc)
    logger.info(
        "On %s: %s",
        result.host,
        ", ".join(f"{step} {seconds:.2f} s" for step, seconds in result.seconds.items()),
    )
    if not result.ran:
        return Completed(name=UP_TO_DATE_STATE, message="DVC found it up to date in the clone", data=result)
    return Completed(message=f"reproduced in a clone on {result.host}", data=result)


def _unless_interrupted(_task: Any, _task_run: Any, _state: Any) -> bool:
    return not children.interrupted()


class CloneLauncher(PrefectLauncher):
    """`PrefectLauncher` whose stages to reproduce run in clones of `source` (see the module doc)."""

    def __init__(
        self,
        root: Path,
        session: PipelineSession,
        source: CloneSource,
        *,
        order: Sequence[str],
        retries: int,
        force: bool = False,
        resources: Resources = NO_RESOURCES,
    ) -> None:
        super().__init__(root, session, retries=retries, force=force, resources=resources)
        self.source = source
        self.order = tuple(order)
        self.sent_files = clone_stage.sent_files(root)  # every stage's clone gets them all, as they stand
        self.results: list[CloneResult] = []
        self._in_clones: set[str] = set()

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        if action is Action.RUN and stage.kind is StageKind.DATA_SOURCE:
            # The flow verified it here (`flows.per_stage.verify_sources`): a clone lacks its data, and its
            # `.dvc` file travels to the stages below. Only `--force` plans it to run.
            action, reason = Action.MARK_UP_TO_DATE, "verified by DVC in the flow"
        if action is not Action.RUN:
            super().launch(stage, action, reason, edges, grant)
            return
        spec = self.session.spec(stage.name)
        locks = clone_stage.lock_text(self.root, self.results, self.order, self.sent_files)
        options: dict[str, Any] = {
            "name": stage.name,
            "task_run_name": stage.name,
            "retries": self.retries,
            "retry_condition_fn": _unless_interrupted,
        }
        with untagged_tasks(), self._on_workers_with(grant):  # on a worker with what the stage declares
            future = clone_stage_task.with_options(**options).submit(
                self.source,
                stage.name,
                spec.deps,
                locks,
                self.force,
                wait_for=[allow_failure(self.futures[up]) for up in edges],
                return_state=False,
            )
        self._in_clones.add(stage.name)
        self.track(stage.name, future)

    def next_finished(self) -> tuple[str, Outcome] | None:
        finished = super().next_finished()
        if finished is None:
            return None
        name, outcome = finished
        if name in self._in_clones and outcome is Outcome.SUCCEEDED:
            result = self.futures[name].result()
            if isinstance(result, CloneResult):
                self.results.append(result)
        return name, outcome

    def settle(self, log: Callable[[str], None]) -> None:
        """The finished stages' entries into the caller's `dvc.lock` files (in `dvc repro`'s order), their
        outputs into the caller's workspace (uncached ones as sent, cached ones by `dvc pull`)."""
        clone_stage.write_lock(self.root, self.results, self.order)
        clone_stage.bring_outputs(self.root, self.results, self.order, log)
