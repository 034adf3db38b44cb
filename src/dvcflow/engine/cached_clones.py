"""`run-b` on Dask workers that do not share the caller's disk: Prefect's cache verdict is still taken here,
where its records and the workspace are; what it cannot vouch for runs in a clone, where DVC decides.

A stage whose stored result the verdict trusts (`engine.cache.verdict`: the outputs it recorded are on this
disk with those hashes, and DVC finds the stage up to date here) ends `Cached`; its task on the cluster only
reports that (a worker cannot read the records, which are on this disk). Every other stage goes to a clone
(`CloneLauncher`), and so does every stage below one that did: until `settle` its inputs exist only on the
workers' side, so nothing on this disk can vouch for it, and DVC decides in its clone (up to date there, or
run). After `settle`, each stage that came back is stored under the key the next run computes for it, with
its outputs as they are here, so that the next run of an unchanged pipeline is all `Cached`; that run's
verdict checks them again before trusting them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import allow_failure, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.results import ResultStore
from prefect.states import Completed

from dvcflow.api.execution import remember_task_run, untagged_tasks
from dvcflow.core.clones import CloneSource
from dvcflow.core.graph import PlannedStage
from dvcflow.core.resources import Grant
from dvcflow.core.results import CACHED
from dvcflow.dvc.session import PipelineSession
from dvcflow.engine.cache import policy_for
from dvcflow.engine.clone_task import CloneLauncher
from dvcflow.engine.executor import StageResult, Status
from dvcflow.engine.scheduler import Action


@task(name="stage", cache_policy=NO_CACHE)
def cached_stage_task(stage: str) -> State[Any]:
    """The verdict taken in the caller, as the stage's final state (touches no disk)."""
    remember_task_run()
    get_run_logger().info("Stage '%s': Prefect's cache has it, its outputs as recorded, DVC agreeing", stage)
    return Completed(name=CACHED, message="Prefect's cache had it; DVC agrees it is up to date")


class CachedCloneLauncher(CloneLauncher):
    """`CloneLauncher` that asks Prefect's cache first, in the caller (see the module doc)."""

    def __init__(
        self,
        root: Path,
        session: PipelineSession,
        source: CloneSource,
        *,
        order: Sequence[str],
        store: ResultStore,
        retries: int,
        force: bool = False,
    ) -> None:
        super().__init__(root, session, source, order=order, retries=retries, force=force)
        self.store = self.records = store  # `records`: the same store, never None here
        self._to_run: dict[str, PlannedStage] = {}  # the stages launched to run, upstream ones first

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        if action is Action.RUN:
            self._to_run[stage.name] = stage
            if self._vouched(stage):
                with untagged_tasks():
                    future = cached_stage_task.with_options(name=stage.name).submit(
                        stage.name,
                        wait_for=[allow_failure(self.futures[up]) for up in edges],
                        return_state=False,
                    )
                self.track(stage.name, future)
                return
        super().launch(stage, action, reason, edges, grant)

    def _vouched(self, stage: PlannedStage) -> bool:
        """A stored result trusted now, for a stage none of whose upstream stages went to a clone."""
        if any(up in self._in_clones for up in stage.upstream):
            return False
        policy, decision = self.cache_verdict(stage)
        return not decision.refresh and self.records.exists(policy.key)

    def settle(self, log: Callable[[str], None]) -> None:
        """`CloneLauncher.settle`, then the stages that came back stored for the next run's verdict."""
        super().settle(log)
        came_back = {result.stage: result for result in self.results}
        keys: dict[str, str] = {}
        for name, stage in self._to_run.items():
            if name not in self._in_clones:  # Cached: its key, computed from this disk, still holds
                keys[name] = self.keys[name]
                continue
            if name not in came_back:  # failed
                continue
            upstream = {up: keys[up] for up in stage.upstream if up in keys}
            key = policy_for(self.root, self.session.fingerprint(name), upstream).key
            keys[name] = key
            status = Status.RAN if came_back[name].ran else Status.UP_TO_DATE
            self.records.write(StageResult(name, status, self.session.current_outputs(name)), key=key)
