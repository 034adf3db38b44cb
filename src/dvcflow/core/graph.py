"""A DVC pipeline's stage graph as plain data, its waves, and the plan of what a run would do.

Provides:
- `StageNode`: one stage (or `.dvc`-tracked data source) and the stages it depends on.
- `StageGraph`: the nodes; `waves()` by Kahn's algorithm (`ValueError` on a cycle), `descendants()`.
- `PipelineSnapshot`: the graph plus what `dvc status` said changed, filled by `dvcflow.dvc.session`.
- `Decision`, `PlannedStage`, `Plan` and `plan()`: which stages would be reproduced, and why
  (`PipelineError` on a cycle), restricted to the stages a `Selection` names, each with what it declares
  it needs (`dvcflow.core.resources.Demand`); `Plan.mermaid()`.

Pure logic: no DVC, no Prefect, cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from dvcflow.core.errors import PipelineError
from dvcflow.core.resources import NO_DEMAND, Demand


class StageKind(StrEnum):
    """What a node of DVC's graph is."""

    STAGE = "stage"
    """A stage of a `dvc.yaml` (also one item of a `foreach` or `matrix` stage)."""
    DATA_SOURCE = "data source"
    """A `.dvc` file: DVC re-verifies the data it tracks when reproducing."""


@dataclass(frozen=True)
class StageNode:
    """One node; `name` is what `dvc repro -s` accepts from the repository root (`train`, `b@x`,
    `sub/dvc.yaml:train`, `data/raw/iris.csv.dvc`)."""

    name: str
    upstream: tuple[str, ...] = ()
    kind: StageKind = StageKind.STAGE
    cmd: str | None = None
    frozen: bool = False


@dataclass(frozen=True)
class StageGraph:
    """The stages and their dependencies, upstream first within each wave."""

    nodes: tuple[StageNode, ...]
    _by_name: Mapping[str, StageNode] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, StageNode] = {}
        for node in self.nodes:
            if node.name in by_name:
                raise ValueError(f"stage {node.name!r} appears twice")
            by_name[node.name] = node
        for node in self.nodes:
            missing = [up for up in node.upstream if up not in by_name]
            if missing:
                raise ValueError(f"stage {node.name!r} depends on unknown stage {missing[0]!r}")
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> StageNode:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.nodes)

    def downstream(self) -> dict[str, tuple[str, ...]]:
        """Each stage → the stages that depend on it directly."""
        children: dict[str, list[str]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for up in node.upstream:
                children[up].append(node.name)
        return {name: tuple(sorted(kids)) for name, kids in children.items()}

    def waves(self) -> tuple[tuple[str, ...], ...]:
        """Kahn's algorithm: wave n holds the stages whose upstream stages are all in earlier waves."""
        remaining = {node.name: len(set(node.upstream)) for node in self.nodes}
        children = self.downstream()
        ready = sorted(name for name, count in remaining.items() if count == 0)
        waves: list[tuple[str, ...]] = []
        while ready:
            waves.append(tuple(ready))
            following: list[str] = []
            for name in ready:
                del remaining[name]
                for child in children[name]:
                    remaining[child] -= 1
                    if remaining[child] == 0:
                        following.append(child)
            ready = sorted(following)
        if remaining:
            raise ValueError(f"the stage graph has a cycle through {', '.join(sorted(remaining))}")
        return tuple(waves)

    def subgraph(self, names: Iterable[str]) -> StageGraph:
        """Only `names` (in this graph's order), and the edges between them."""
        keep = set(names)
        unknown = keep - set(self._by_name)
        if unknown:
            raise ValueError(f"unknown stage {sorted(unknown)[0]!r}")
        return StageGraph(
            tuple(
                StageNode(
                    node.name,
                    tuple(up for up in node.upstream if up in keep),
                    node.kind,
                    node.cmd,
                    node.frozen,
                )
                for node in self.nodes
                if node.name in keep
            )
        )

    def descendants(self, names: Iterable[str]) -> frozenset[str]:
        """Every stage downstream of `names` (not including them unless reachable from another)."""
        children = self.downstream()
        seen: set[str] = set()
        stack = [child for name in names for child in children[name]]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(children[name])
        return frozenset(seen)


@dataclass(frozen=True)
class PipelineSnapshot:
    """The graph, and the stages `dvc status` named with a short reason each."""

    graph: StageGraph
    changed: Mapping[str, str]


class Decision(StrEnum):
    """What a per-stage run does with a stage before DVC has the last word."""

    CHANGED = "changed"
    """`dvc status` names it: its own deps, outs, params or command changed; it will be reproduced."""
    DOWNSTREAM = "downstream"
    """An upstream stage changed: `dvc repro -s` runs and DVC decides whether its inputs really changed."""
    UP_TO_DATE = "up to date"
    """Neither it nor anything upstream changed: marked up to date without asking DVC again."""


@dataclass(frozen=True)
class PlannedStage:
    name: str
    wave: int  # 1-based
    decision: Decision
    reason: str  # why: what status said, or which upstream changed
    upstream: tuple[str, ...]
    kind: StageKind = StageKind.STAGE
    demand: Demand = NO_DEMAND  # resources and mutex groups it holds while it runs

    @property
    def would_run(self) -> bool:
        return self.decision is not Decision.UP_TO_DATE


@dataclass(frozen=True)
class Plan:
    """The stages in wave order, each with its decision; `str()` is what `--dry-run` prints as text."""

    stages: tuple[PlannedStage, ...]
    waves: tuple[tuple[str, ...], ...]

    @property
    def would_run(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages if stage.would_run)

    @property
    def up_to_date(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages if not stage.would_run)

    def stage(self, name: str) -> PlannedStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [
            f"{len(self.stages)} stages in {len(self.waves)} waves; "
            f"{len(self.would_run)} would run, {len(self.up_to_date)} up to date"
        ]
        by_name = {stage.name: stage for stage in self.stages}
        for number, wave in enumerate(self.waves, start=1):
            lines.append(f"wave {number}:")
            for name in wave:
                stage = by_name[name]
                needs = f" [needs {stage.demand}]" if not stage.demand.empty else ""
                lines.append(f"  {name}: {stage.decision.value} ({stage.reason}){needs}")
        return "\n".join(lines)

    def mermaid(self) -> str:
        """The DAG as a Mermaid flowchart (`dvcflow plan --mermaid`, and each run's markdown artifact)."""
        ids = {stage.name: f"s{number}" for number, stage in enumerate(self.stages)}
        lines = ["flowchart TD"]
        for stage in self.stages:
            label = stage.name.replace('"', "#quot;")
            shape = f'[("{label}")]' if stage.kind is StageKind.DATA_SOURCE else f'["{label}"]'
            lines.append(f"    {ids[stage.name]}{shape}")
        for stage in self.stages:
            lines.extend(f"    {ids[up]} --> {ids[stage.name]}" for up in stage.upstream if up in ids)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """The JSON `dvcflow plan --json` prints."""
        return {
            "waves": [list(wave) for wave in self.waves],
            "would_run": list(self.would_run),
            "stages": {
                stage.name: {
                    "wave": stage.wave,
                    "decision": stage.decision.value,
                    "would_run": stage.would_run,
                    "reason": stage.reason,
                    "kind": stage.kind.value,
                    "upstream": list(stage.upstream),
                    **stage.demand.as_dict(),
                }
                for stage in self.stages
            },
        }


def plan(
    snapshot: PipelineSnapshot,
    selected: Iterable[str] | None = None,
    *,
    force: bool = False,
    demands: Mapping[str, Demand] | None = None,
) -> Plan:
    """Changed stages run, their descendants run if DVC says so, everything else is up to date.

    `selected` (what `dvc.targets.selected_stages` returns) narrows the plan to those stages, as `dvc repro
    TARGETS` does: edges to stages outside it are dropped. With `force` every planned stage runs.
    `demands`: what stages declare they need (`dvcflow.core.resources.demands_for`), kept on each.
    """
    demands = demands or {}
    graph = snapshot.graph
    if selected is not None:
        graph = graph.subgraph(selected)
    try:
        waves = graph.waves()
    except ValueError as err:
        raise PipelineError(str(err)) from None
    changed = {name: reason for name, reason in snapshot.changed.items() if name in graph}
    if force:
        changed = {node.name: "forced" for node in graph.nodes}
    downstream_of_change = graph.descendants(changed)
    stages: list[PlannedStage] = []
    decided: dict[str, Decision] = {}
    for number, wave in enumerate(waves, start=1):
        for name in wave:
            node = graph[name]
            if name in changed:
                decision, reason = Decision.CHANGED, changed[name]
            elif name in downstream_of_change:
                causes = [up for up in node.upstream if decided[up] is not Decision.UP_TO_DATE]
                decision, reason = Decision.DOWNSTREAM, f"upstream {', '.join(causes)} may change"
            else:
                decision, reason = Decision.UP_TO_DATE, "nothing changed here or upstream"
            decided[name] = decision
            stages.append(
                PlannedStage(
                    name, number, decision, reason, node.upstream, node.kind, demands.get(name, NO_DEMAND)
                )
            )
    return Plan(tuple(stages), waves)
