"""The stage graph, its waves and the plan of a per-stage run; DVC's graph read into it; `dvcflow plan`."""

from __future__ import annotations

import json
from pathlib import Path

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment: import it before any
# CliRunner swaps sys.stdout for a buffer that it closes afterwards.
import dvc.logger as _dvc_logger  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.errors import PipelineError
from dvcflow.core.graph import Decision, PipelineSnapshot, StageGraph, StageKind, StageNode, plan


def _node(name: str, *upstream: str) -> StageNode:
    return StageNode(name=name, upstream=upstream)


@pytest.fixture
def diamond() -> StageGraph:
    """a → b, a → c, (b, c) → d"""
    return StageGraph((_node("a"), _node("b", "a"), _node("c", "a"), _node("d", "b", "c")))


@pytest.fixture
def wide() -> StageGraph:
    """Four independent branches and a join."""
    branches = [_node(f"branch@{i}") for i in range(4)]
    return StageGraph((*branches, _node("join", *(b.name for b in branches))))


@pytest.fixture
def chain() -> StageGraph:
    """s0 → s1 → s2 → s3 → s4, declared in reverse."""
    return StageGraph(tuple(_node(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in reversed(range(5))))


def test_diamond_waves(diamond: StageGraph) -> None:
    assert diamond.waves() == (("a",), ("b", "c"), ("d",))


def test_wide_waves(wide: StageGraph) -> None:
    assert wide.waves() == (("branch@0", "branch@1", "branch@2", "branch@3"), ("join",))


def test_chain_waves_follow_dependencies_not_declaration_order(chain: StageGraph) -> None:
    assert chain.waves() == (("s0",), ("s1",), ("s2",), ("s3",), ("s4",))


def test_descendants(diamond: StageGraph) -> None:
    assert diamond.descendants(["b"]) == {"d"}
    assert diamond.descendants(["a"]) == {"b", "c", "d"}
    assert diamond.descendants(["d"]) == frozenset()


def test_cycle_is_a_value_error_and_a_pipeline_error_in_plan() -> None:
    graph = StageGraph((_node("a", "c"), _node("b", "a"), _node("c", "b"), _node("free")))
    with pytest.raises(ValueError, match=r"^the stage graph has a cycle through a, b, c$"):
        graph.waves()
    with pytest.raises(PipelineError, match=r"^the stage graph has a cycle through a, b, c$"):
        plan(PipelineSnapshot(graph, {}))


def test_unknown_upstream_and_duplicates_are_rejected() -> None:
    with pytest.raises(ValueError, match="stage 'b' depends on unknown stage 'x'"):
        StageGraph((_node("a"), _node("b", "x")))
    with pytest.raises(ValueError, match="stage 'a' appears twice"):
        StageGraph((_node("a"), _node("a")))


def test_plan_runs_the_changed_stage_and_its_descendants_only(diamond: StageGraph) -> None:
    result = plan(PipelineSnapshot(diamond, {"b": "changed deps: x (modified)"}))
    decisions = {stage.name: stage.decision for stage in result.stages}
    assert decisions == {
        "a": Decision.UP_TO_DATE,
        "b": Decision.CHANGED,
        "c": Decision.UP_TO_DATE,
        "d": Decision.DOWNSTREAM,
    }
    assert result.would_run == ("b", "d")
    assert result.up_to_date == ("a", "c")
    assert result.stage("b").reason == "changed deps: x (modified)"
    assert result.stage("d").reason == "upstream b may change"
    assert result.stage("d").wave == 3


def test_plan_with_nothing_changed_runs_nothing(chain: StageGraph) -> None:
    result = plan(PipelineSnapshot(chain, {}))
    assert result.would_run == ()
    assert str(result).splitlines()[0] == "5 stages in 5 waves; 0 would run, 5 up to date"


def test_plan_as_dict_is_json(wide: StageGraph) -> None:
    data = json.loads(json.dumps(plan(PipelineSnapshot(wide, {"branch@2": "always changed"})).as_dict()))
    assert data["waves"] == [["branch@0", "branch@1", "branch@2", "branch@3"], ["join"]]
    assert data["would_run"] == ["branch@2", "join"]
    assert data["stages"]["join"] == {
        "wave": 2,
        "decision": "downstream",
        "would_run": True,
        "reason": "upstream branch@2 may change",
        "kind": "stage",
        "upstream": ["branch@0", "branch@1", "branch@2", "branch@3"],
        "resources": {},  # what it declares it needs (tests/test_resources.py)
        "mutex": [],
    }


def test_status_reasons_read_like_dvc_status() -> None:
    from dvcflow.dvc.session import status_reason

    entries = [
        {"changed deps": {"params.yaml": {"split.test_size": "modified"}, "a.txt": "deleted"}},
        {"changed outs": {f"out/{i}": "deleted" for i in range(5)}},
        "always changed",
    ]
    assert status_reason(entries) == (
        "changed deps: params.yaml (split.test_size modified), a.txt (deleted); "
        "changed outs: out/0 (deleted), out/1 (deleted), out/2 (deleted) +2 more; always changed"
    )


@pytest.mark.parametrize(
    ("decision", "blamed", "first_failure", "keep_going", "expected"),
    [
        (Decision.CHANGED, {}, None, False, ("run", "why", None)),
        (Decision.DOWNSTREAM, {}, "x", True, ("run", "why", None)),
        (Decision.UP_TO_DATE, {}, None, False, ("mark up to date", "why", None)),
        (
            Decision.CHANGED,
            {"u2": "u1", "u1": "u1"},
            "u1",
            True,
            ("not run", "upstream stage 'u1' failed", "u1"),
        ),
        (
            Decision.UP_TO_DATE,
            {},
            "x",
            False,
            ("not run", "stage 'x' failed and --keep-going is off", None),
        ),
    ],
    ids=["changed", "keep-going-past-unrelated-failure", "up-to-date", "upstream-failed", "stopped"],
)
def test_what_a_stage_task_is_told_to_do(
    decision: Decision,
    blamed: dict[str, str],
    first_failure: str | None,
    keep_going: bool,
    expected: tuple[str, str, str | None],
) -> None:
    from dvcflow.core.graph import PlannedStage
    from dvcflow.engine.scheduler import decide as _action

    stage = PlannedStage("s", 2, decision, "why", ("u1", "u2"))
    action, reason, culprit = _action(stage, blamed, first_failure, keep_going)
    assert (action.value, reason, culprit) == expected


@pytest.fixture
def odd_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repo (no git) with a `.dvc` source, `foreach` and `matrix` stages, a nested `dvc.yaml`
    and a frozen stage; nothing reproduced yet."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    root = tmp_path / "repo"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    (root / "raw.txt").write_text("raw\n")
    with Repo(str(root)) as repo:
        repo.add(str(root / "raw.txt"))
    stages = {
        "each": {
            "foreach": ["x", "y"],
            "do": {"cmd": "cp raw.txt ${item}.txt", "deps": ["raw.txt"], "outs": ["${item}.txt"]},
        },
        "grid": {
            "matrix": {"n": [1, 2]},
            "cmd": "echo ${item.n} > g${item.n}.txt",
            "outs": ["g${item.n}.txt"],
        },
        "frozen": {"cmd": "cp x.txt f.txt", "deps": ["x.txt"], "outs": ["f.txt"], "frozen": True},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "sub").mkdir()
    sub = {"stages": {"inner": {"cmd": "cp ../y.txt inner.txt", "deps": ["../y.txt"], "outs": ["inner.txt"]}}}
    (root / "sub" / "dvc.yaml").write_text(yaml.safe_dump(sub))
    monkeypatch.chdir(tmp_path)  # DVC's own `addressing` would be relative to here
    return root


def test_read_pipeline_names_stages_from_the_repo_root(odd_repo: Path) -> None:
    from dvcflow.dvc.session import read_pipeline

    snapshot = read_pipeline(odd_repo)
    graph = snapshot.graph
    assert [node.name for node in graph.nodes] == [
        "each@x", "each@y", "frozen", "grid@1", "grid@2", "raw.txt.dvc", "sub/dvc.yaml:inner",
    ]  # fmt: skip
    assert graph["raw.txt.dvc"].kind is StageKind.DATA_SOURCE
    assert graph["each@x"].upstream == ("raw.txt.dvc",)
    assert graph["sub/dvc.yaml:inner"].upstream == ("each@y",)
    assert graph["frozen"].upstream == () and graph["frozen"].frozen  # cut off, as `dvc repro` does
    assert graph.waves() == (
        ("frozen", "grid@1", "grid@2", "raw.txt.dvc"),
        ("each@x", "each@y"),
        ("sub/dvc.yaml:inner",),
    )
    assert snapshot.changed["each@x"] == "changed deps: raw.txt (modified); changed outs: x.txt (deleted)"
    assert snapshot.changed["grid@2"] == "changed outs: g2.txt (deleted)"
    assert "raw.txt.dvc" not in snapshot.changed


def test_plan_command_prints_waves_and_json(odd_repo: Path) -> None:
    # Like plain `dvc repro`: the root dvc.yaml's stages and what they depend on, not sub/dvc.yaml.
    table = CliRunner().invoke(app, ["plan", "--repo", str(odd_repo)])
    assert table.exit_code == 0, table.output
    assert "6 stages in 2 waves: 5 would run, 1 up to date." in table.output
    data = json.loads(CliRunner().invoke(app, ["plan", "--json", "--repo", str(odd_repo)]).output)
    assert "sub/dvc.yaml:inner" not in data["stages"]
    assert data["stages"]["raw.txt.dvc"]["would_run"] is False
    inner = json.loads(
        CliRunner().invoke(app, ["plan", "sub/dvc.yaml:inner", "--json", "--repo", str(odd_repo)]).output
    )
    assert inner["waves"] == [["raw.txt.dvc"], ["each@y"], ["sub/dvc.yaml:inner"]]


def test_plan_selection_and_mermaid(odd_repo: Path) -> None:
    single = json.loads(
        CliRunner().invoke(app, ["plan", "each@x", "-s", "-f", "--json", "--repo", str(odd_repo)]).output
    )
    assert single["would_run"] == ["each@x"] and single["stages"]["each@x"]["reason"] == "forced"
    downstream = json.loads(
        CliRunner().invoke(app, ["plan", "each@y", "--downstream", "--json", "--repo", str(odd_repo)]).output
    )
    assert downstream["waves"] == [["each@y"], ["sub/dvc.yaml:inner"]]
    chart = CliRunner().invoke(app, ["plan", "sub/dvc.yaml:inner", "--mermaid", "--repo", str(odd_repo)])
    assert chart.output.splitlines() == [
        "flowchart TD",
        '    s0[("raw.txt.dvc")]',
        '    s1["each@y"]',
        '    s2["sub/dvc.yaml:inner"]',
        "    s0 --> s1",
        "    s1 --> s2",
    ]


def test_plan_outside_a_repo_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--repo", str(tmp_path)])
    assert result.exit_code == 3
    assert result.output.splitlines() == [
        f"Error: {tmp_path} is not inside a DVC repository (no .dvc directory here or above)",
        "Hint: run `dvc init`, or pass --repo PATH",
    ]
