"""The stage scheduler against a fake launcher: no Prefect, no DVC, no threads, no sleeps.

The fake finishes stages one at a time, oldest first, when the scheduler asks for the next finished
one, so how many are in flight at any moment is exact."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dvcflow.core.graph import PipelineSnapshot, Plan, PlannedStage, StageGraph, StageNode, plan
from dvcflow.core.resources import Grant
from dvcflow.engine.scheduler import Action, Outcome, run_stages


@dataclass
class FakeLauncher:
    failing: frozenset[str] = frozenset()
    launched: list[tuple[str, Action, str, tuple[str, ...]]] = field(default_factory=list)
    pending: list[tuple[str, Action]] = field(default_factory=list)
    most_running: int = 0

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        self.launched.append((stage.name, action, reason, edges))
        self.pending.append((stage.name, action))
        self.most_running = max(self.most_running, sum(a is Action.RUN for _, a in self.pending))

    def next_finished(self) -> tuple[str, Outcome]:
        name, action = self.pending.pop(0)
        if action is Action.NOT_RUN:
            return name, Outcome.NOT_RUN
        return name, Outcome.FAILED if name in self.failing else Outcome.SUCCEEDED

    def action(self, name: str) -> Action:
        return next(action for launched, action, _, _ in self.launched if launched == name)


def _plan(nodes: list[StageNode], changed: list[str] | None = None) -> Plan:
    graph = StageGraph(tuple(nodes))
    names = [node.name for node in nodes] if changed is None else changed
    return plan(PipelineSnapshot(graph, dict.fromkeys(names, "changed")))


def wide(branches: int = 4) -> Plan:
    """`branches` independent stages and a join."""
    nodes = [StageNode(f"b{i}") for i in range(branches)]
    return _plan([*nodes, StageNode("join", tuple(node.name for node in nodes))])


def test_every_stage_once_upstream_first() -> None:
    fake = FakeLauncher()
    outcomes = run_stages(wide(), fake, jobs=8, keep_going=False)
    assert outcomes == dict.fromkeys(["b0", "b1", "b2", "b3", "join"], Outcome.SUCCEEDED)
    assert [name for name, *_ in fake.launched] == ["b0", "b1", "b2", "b3", "join"]
    assert fake.launched[-1][3] == ("b0", "b1", "b2", "b3")  # the join's edges, for the UI
    assert fake.most_running == 4


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_jobs_caps_the_running_stages(jobs: int) -> None:
    fake = FakeLauncher()
    run_stages(wide(6), fake, jobs=jobs, keep_going=False)
    assert fake.most_running == jobs


def test_up_to_date_stages_do_not_count_against_jobs() -> None:
    nodes = [StageNode(f"b{i}") for i in range(4)]
    fake = FakeLauncher()
    outcomes = run_stages(_plan(nodes, changed=["b0"]), fake, jobs=1, keep_going=False)
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    assert [fake.action(f"b{i}") for i in range(4)] == [Action.RUN, *[Action.MARK_UP_TO_DATE] * 3]
    assert len(fake.pending) == 0


def test_a_failure_spreads_to_descendants_and_stops_the_rest() -> None:
    # a → b → c, and an independent d that has not started when a fails (jobs=1).
    chain = _plan([StageNode("a"), StageNode("b", ("a",)), StageNode("c", ("b",)), StageNode("d")])
    fake = FakeLauncher(failing=frozenset({"a"}))
    outcomes = run_stages(chain, fake, jobs=1, keep_going=False)
    assert outcomes == {"a": Outcome.FAILED, "d": Outcome.NOT_RUN, "b": Outcome.NOT_RUN, "c": Outcome.NOT_RUN}
    reasons = {name: reason for name, _, reason, _ in fake.launched}
    assert reasons["b"] == "upstream stage 'a' failed"
    assert reasons["c"] == "upstream stage 'a' failed"  # blamed on the failure, not on b
    assert reasons["d"] == "stage 'a' failed and --keep-going is off"
    edges = {name: edges for name, _, _, edges in fake.launched}
    assert edges["c"] == ()  # no edge to a stage that did not run (Prefect would refuse it)


def test_keep_going_finishes_independent_branches_only() -> None:
    chain = _plan([StageNode("a"), StageNode("b", ("a",)), StageNode("d"), StageNode("e", ("d",))])
    fake = FakeLauncher(failing=frozenset({"a"}))
    outcomes = run_stages(chain, fake, jobs=1, keep_going=True)
    assert outcomes == {
        "a": Outcome.FAILED,
        "d": Outcome.SUCCEEDED,
        "b": Outcome.NOT_RUN,
        "e": Outcome.SUCCEEDED,
    }


def test_a_join_below_two_failures_names_both() -> None:
    fake = FakeLauncher(failing=frozenset({"b1", "b2"}))
    outcomes = run_stages(wide(3), fake, jobs=3, keep_going=True)
    assert outcomes["join"] is Outcome.NOT_RUN
    assert fake.launched[-1][2] == "upstream stage 'b1', 'b2' failed"


def test_jobs_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_stages(wide(), FakeLauncher(), jobs=0, keep_going=False)
