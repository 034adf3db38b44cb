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

from prefect.results import ResultStore

from dvcflow.core.clones import CloneSource
from dvcflow.core.graph import PlannedStage
from dvcflow.core.resources import NO_RESOURCES, Grant, Resources
from dvcflow.dvc.session import PipelineSession
from dvcflow.engine.cache import policy_for
from dvcflow.engine.clone_task import CloneLauncher
from dvcflow.engine.executor import StageResult, Status
from dvcflow.engine.scheduler import Action


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
        resources: Resources = NO_RESOURCES,
    ) -> None:
        super().__init__(
            root, session, source, order=order, retries=retries, force=force, resources=resources
        )
        self.store = self.records = store  # `records`: the same store, never None here
        self._to_run: dict[str, PlannedStage] = {}  # the stages launched to run, upstream ones first

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        if action is Action.RUN:
            self._to_run[stage.name] = stage
            if self._vouched(stage):
                self.launch_cached(stage, edges)
                return
        super().launch(stage, action, reason, edges, grant)

    def _vouched(self, stage: PlannedStage) -> bool:
        """A stored result trusted now, for a stage none of whose upstream stages went to a clone."""
        if any(up in self._in_clones for up in stage.upstream):
            return False
        return self.trusted(self.cache_verdict(stage))

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
