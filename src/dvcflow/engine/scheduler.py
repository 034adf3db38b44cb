"""Which stage starts when: the one scheduler behind `run-b` and `run-a --per-stage`.

`run_stages` walks a `Plan` and hands each stage to a `StageLauncher` as soon as its upstream stages have
finished: at most `jobs` stages running at once; descendants of a failure are not run; without
`keep_going`, nothing new starts after a failure. The launcher is a protocol, so the unit tests drive the
scheduler with a fake (no Prefect, no DVC) and the flows with Prefect tasks.

Resources (`dvcflow.core.resources`): a stage that declares a demand starts only when it fits what is free
(`ResourcePool`: never over the capacity of any resource, never two stages of one mutex group), and gets
its own GPU indices. Every time something finishes, every ready stage that fits starts, in plan order: a
small stage may start ahead of a bigger one that waits (nothing is reserved for the bigger one). Several
runs of one process may take from one pool (`shared`: a sweep's per-stage trials): a stage of one waits
for what a stage of another holds, and starts when that one gives it back (`StageLauncher.wake`).

Pure logic: no DVC, no Prefect.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Protocol

from dvcflow.core.graph import Decision, Plan, PlannedStage
from dvcflow.core.resources import GPU, NO_GRANT, Capacity, Demand, Grant


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
    (the UI draws them), never those that were not run; `grant`: the resources the stage holds until it
    finishes (its GPU indices), `NO_GRANT` for a stage that declares none."""

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None: ...

    def next_finished(self) -> tuple[str, Outcome] | None:
        """Block until a launched stage has finished; its name and outcome. None: `wake` was called."""
        ...

    def wake(self) -> None:
        """Make `next_finished` return (None) now: a pool shared with other runs has something free again,
        which a stage of this run may be waiting for."""
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


class ResourcePool:
    """What is free while stages run: `take` a demand if it fits now (with the lowest free GPU indices),
    `give` it back when the stage ends. `capacity` None: amounts are not counted here (a Dask cluster
    counts them), mutex groups still are. Thread-safe: the schedulers of several runs may share one
    (`shared`), each woken through `watching` when another gives something back."""

    def __init__(self, capacity: Capacity | None) -> None:
        self.free: dict[str, int] | None = dict(capacity.amounts) if capacity is not None else None
        self.devices = capacity.gpus if capacity is not None else ()
        self.free_gpus: list[str] = list(self.devices)
        self.held: set[str] = set()  # mutex groups
        self._lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []

    def fits(self, demand: Demand) -> bool:
        with self._lock:
            return self._fits(demand)

    def _fits(self, demand: Demand) -> bool:
        if any(group in self.held for group in demand.mutex):
            return False
        free = self.free
        return free is None or all(amount <= free.get(name, 0) for name, amount in demand.resources)

    def take(self, demand: Demand, waited: float = 0.0) -> Grant | None:
        """The grant, or None when the demand does not fit now."""
        with self._lock:
            if not self._fits(demand):
                return None
            self.held.update(demand.mutex)
            gpus: tuple[str, ...] = ()
            if self.free is not None:
                for name, amount in demand.resources:
                    self.free[name] -= amount
                count = demand.amount(GPU)
                gpus, self.free_gpus = tuple(self.free_gpus[:count]), self.free_gpus[count:]
        return Grant(demand, gpus, waited, self.devices if gpus else ())

    def give(self, grant: Grant) -> None:
        with self._lock:
            self.held.difference_update(grant.demand.mutex)
            if self.free is not None:
                for name, amount in grant.demand.resources:
                    self.free[name] += amount
                back = {*self.free_gpus, *grant.gpus}
                self.free_gpus = [device for device in self.devices if device in back]
            watchers = list(self._watchers)
        for wake in watchers:
            wake()

    @contextlib.contextmanager
    def watching(self, wake: Callable[[], None]) -> Iterator[None]:
        """`wake` is called whenever something is given back, while the block runs."""
        with self._lock:
            self._watchers.append(wake)
        try:
            yield
        finally:
            with self._lock:
                self._watchers.remove(wake)


_SHARED: dict[str, ResourcePool] = {}


@contextlib.contextmanager
def shared(pool: ResourcePool, key: str) -> Iterator[None]:
    """While the block runs, the runs of this process given `key` (`Resources.pool`) take their stages'
    resources from `pool` rather than from one of their own: a sweep's trials, which run at once. No
    key: nothing is shared."""
    if key:
        _SHARED[key] = pool
    try:
        yield
    finally:
        _SHARED.pop(key, None)


def shared_pool(key: str) -> ResourcePool | None:
    """The pool `shared` under `key`; None for no key, or in another process (a Dask worker's)."""
    return _SHARED.get(key) if key else None


def run_stages(
    plan: Plan,
    launcher: StageLauncher,
    *,
    jobs: int,
    keep_going: bool,
    capacity: Capacity | None = None,
    pool: ResourcePool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Outcome]:
    """Launch every stage of `plan` once, upstream first, at most `jobs` running at once; the outcomes.

    A stage never starts while an upstream one runs (DVC's per-path locks would fail it as "busy").
    Descendants of a failure end not run; without `keep_going` so does every stage not started yet.
    A stage's `demand` must fit the free part of `capacity` (None: only mutex groups are kept apart) when
    it starts; its grant says how long it waited for that (by `clock`). `pool`: what is free, shared with
    other runs of this process (`shared`), instead of a pool of `capacity` of this run's own.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if pool is None:
        return _run(plan, launcher, jobs, keep_going, ResourcePool(capacity), {}, clock)
    grants: dict[str, Grant] = {}
    try:
        with pool.watching(launcher.wake):
            return _run(plan, launcher, jobs, keep_going, pool, grants, clock, with_others=True)
    finally:  # what a run that raised still holds: the other runs must not wait for it for ever
        for grant in grants.values():
            pool.give(grant)


def _run(
    plan: Plan,
    launcher: StageLauncher,
    jobs: int,
    keep_going: bool,
    pool: ResourcePool,
    grants: dict[str, Grant],
    clock: Callable[[], float],
    *,
    with_others: bool = False,
) -> dict[str, Outcome]:
    """`run_stages`' loop, `grants` what the running stages hold. With a pool shared `with_others`, a
    stage may wait for what other runs hold while none of this run's is in flight (the pool's `give`
    wakes the launcher)."""
    blocked_since: dict[str, float] = {}  # ready, a job free, held back by resources or a mutex
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
            grant = NO_GRANT
            if action is Action.RUN:
                if len(running) >= jobs:
                    continue
                if not stage.demand.empty:
                    now = clock()
                    taken = pool.take(stage.demand, now - blocked_since.get(name, now))
                    if taken is None:
                        blocked_since.setdefault(name, now)
                        continue
                    grant = grants[name] = taken
                running.add(name)
            if culprit is not None:
                blamed[name] = culprit
            if action is Action.NOT_RUN:
                not_run.add(name)
            waiting.remove(name)
            in_flight.add(name)
            edges = tuple(up for up in stage.upstream if up not in not_run)
            launcher.launch(stage, action, reason, edges, grant)
        if not in_flight:
            if not waiting:
                return {name: outcomes[name] for name in stages}
            if not with_others:
                raise RuntimeError(f"stages that can never start: {', '.join(waiting)}")
        finished = launcher.next_finished()
        if finished is None:  # the shared pool has something free again: look again
            continue
        name, outcome = finished
        in_flight.discard(name)
        running.discard(name)
        if name in grants:
            pool.give(grants.pop(name))
        outcomes[name] = outcome
        if outcome is Outcome.FAILED:
            blamed[name] = name
            first_failure = first_failure or name
