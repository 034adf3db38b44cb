"""`dvcflow sweep` end to end: real git+DVC repos, real scikit-learn, the session's Prefect server.

Each trial must equal what `dvc exp run -S` gives for the same values, be listed by `dvc exp show`, and
leave the user's workspace exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment: import it before any
# CliRunner swaps sys.stdout for a buffer that it closes afterwards.
import dvc.logger as _dvc_logger  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.dvc.experiments import apply_params, expand_grid
from dvcflow.engine.trials import TrialResult, TrialSpec, best_trial, pick_best, table_rows, varying_params
from tests.conftest import integration_fixture, offline_env
from tests.helpers import api_post, dvc, dvcflow, git, make_pipeline_repo, make_tiny_repo


def tree_digest(root: Path) -> dict[str, str]:
    """Every file of the workspace → its content hash; git's folder, the DVC cache (shared with the
    trials by design) and DVC's scratch folder (written by any `dvc` command that reads) aside."""
    return {
        str(relative): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and ".git" not in (relative := path.relative_to(root)).parts
        and relative.parts[:2] not in ((".dvc", "cache"), (".dvc", "tmp"))
    }


def experiments(repo: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    """`dvc exp show --json` from the main workspace: experiment name → its params and metrics files."""
    shown = dvc("exp", "show", "--json", cwd=repo, env=env)
    assert shown.returncode == 0, shown.stderr
    found: dict[str, dict[str, object]] = {}
    for baseline in json.loads(shown.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def sweep_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(result.stdout)
    return data


def worktrees(repo: Path) -> list[str]:
    return [
        line
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


@pytest.mark.timeout(900)  # ~2 min alone; 5 min and more when six test suites share the two CPUs
def test_a_2x2_grid_equals_dvc_exp_run_is_listed_by_dvc_exp_show_and_leaves_the_workspace_alone(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_pipeline_repo(tmp_path / "repo", client_env)
    (repo / "notes.txt").write_text("an untracked file of the user\n")
    before = tree_digest(repo)
    head, status = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")
    env = {**client_env, "TMPDIR": str(tmp_path)}
    (tmp_path / "scratch-check").mkdir()

    result = dvcflow(
        "sweep", "-S", "train.C=0.1,10", "-S", "split.test_size=0.2,0.3", "--jobs", "2",
        "--metric", "accuracy", "--json", cwd=repo, env=env, timeout=600,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    report = sweep_json(result)
    trials = report["trials"]
    assert isinstance(trials, list) and len(trials) == 4
    assert all(trial["state"] == "Completed" for trial in trials)
    assert [(t["train.C"], t["split.test_size"]) for t in trials] == [
        ("0.1", "0.2"), ("0.1", "0.3"), ("10", "0.2"), ("10", "0.3"),
    ]  # fmt: skip
    # the workspace, git's HEAD and status are as they were; no worktree or scratch folder is left
    assert tree_digest(repo) == before
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == status
    assert len(worktrees(repo)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dvcflow-sweep-")]

    # every trial is an experiment with its params and metrics, as `dvc exp show` reads them
    saved = experiments(repo, client_env)
    assert set(saved) == {trial["name"] for trial in trials}
    for trial in trials:
        params = saved[str(trial["name"])]["params"]["params.yaml"]["data"]  # type: ignore[index]
        metrics = saved[str(trial["name"])]["metrics"]["reports/metrics.json"]["data"]  # type: ignore[index]
        assert str(params["train"]["C"]) == trial["train.C"]
        assert str(params["split"]["test_size"]) == trial["split.test_size"]
        assert metrics == {"accuracy": trial["accuracy"], "f1_macro": trial["f1_macro"]}
    best = max(trials, key=lambda t: t["accuracy"])
    assert report["best"] == best["trial"] and best["best"] is True

    # differential: `dvc exp run -S` on a fresh copy gives the same metrics for the same values
    copy = make_pipeline_repo(tmp_path / "copy", client_env)
    for trial in trials:
        values = [f"train.C={trial['train.C']}", f"split.test_size={trial['split.test_size']}"]
        ran = dvc("exp", "run", "-S", values[0], "-S", values[1], cwd=copy, env=client_env)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        metrics = json.loads((copy / "reports" / "metrics.json").read_text())
        assert metrics == {"accuracy": trial["accuracy"], "f1_macro": trial["f1_macro"]}, trial

    # `dvc exp apply` restores the best trial into the workspace
    applied = dvc("exp", "apply", str(best["name"]), cwd=repo, env=client_env)
    assert applied.returncode == 0, applied.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert str(params["train"]["C"]) == best["train.C"]


SCORE_PY = """\
import json, os, sys, time, yaml
item = sys.argv[1]
hp = yaml.safe_load(open("conf/hp.yaml"))
markers = os.environ.get("SWEEP_TEST_MARKERS")
if markers:
    open(os.path.join(markers, f"{hp['scale']}-{item}-{os.getpid()}"), "w").close()
time.sleep(hp["sleep"])
if hp["scale"] == 3:
    sys.exit("scale 3 is not allowed")
os.makedirs("out", exist_ok=True)
json.dump({"score": hp["scale"] * len(item) + hp["offset"]}, open(f"out/{item}.json", "w"))
"""

SUMMARY_PY = """\
import json
total = sum(json.load(open(f"out/{item}.json"))["score"] for item in ("a", "bb"))
json.dump({"total": total}, open("summary.json", "w"))
"""

THIRD_PARTY_STAGES = """\
stages:
  score:
    foreach: [a, bb]
    do:
      cmd: python score.py ${item}
      deps: [score.py]
      params:
        - conf/hp.yaml:
            - scale
            - offset
            - sleep
      outs:
        - out/${item}.json
  summary:
    cmd: python summary.py
    deps:
      - summary.py
      - out/a.json
      - out/bb.json
    metrics:
      - summary.json:
          cache: false
"""


def make_third_party_repo(root: Path, env: dict[str, str], sleep: float = 0) -> Path:
    """A pipeline not shaped like the demo: a `foreach` stage, params in `conf/hp.yaml`, no params.yaml."""
    root.mkdir(parents=True)
    (root / "score.py").write_text(SCORE_PY)
    (root / "summary.py").write_text(SUMMARY_PY)
    (root / "conf").mkdir()
    (root / "conf" / "hp.yaml").write_text(f"scale: 1\noffset: 0.5\nsleep: {sleep}\n")
    return make_tiny_repo(root, env, stages=THIRD_PARTY_STAGES)


def test_per_stage_trials_at_once_in_one_process_equal_the_usual_sweep(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """Two `--per-stage` trials at once share the process's working directory (each trial's DVC session,
    its saves and metrics move into its own worktree): both complete with the metrics the usual sweep
    gives (the test below: scale 1 → 4, scale 2 → 7), and the workspace is left alone."""
    repo = make_third_party_repo(tmp_path / "third", client_env, sleep=0.5)  # the trials' stages overlap
    before = tree_digest(repo)

    options = ["--per-stage", "--jobs", "2", "--json"]
    result = dvcflow("sweep", "-S", "conf/hp.yaml:scale=1,2", *options, cwd=repo, env=client_env)

    assert result.returncode == 0, result.stdout + result.stderr
    saved = experiments(repo, client_env)
    totals = {
        data["params"]["conf/hp.yaml"]["data"]["scale"]: data["metrics"]["summary.json"]["data"]["total"]  # type: ignore[index]
        for data in saved.values()
    }
    assert totals == {1: 4, 2: 7}
    assert tree_digest(repo) == before
    assert len(worktrees(repo)) == 1


def test_a_foreach_pipeline_with_params_in_another_file_and_one_failing_trial(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_third_party_repo(tmp_path / "third", client_env)
    before = tree_digest(repo)

    result = dvcflow("sweep", "-S", "conf/hp.yaml:scale=1,2,3", "--minimize", cwd=repo, env=client_env)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "conf/hp.yaml:scale" in result.stdout
    rows = {line.split("│")[3].strip(): line for line in result.stdout.splitlines() if line.count("│") > 5}
    assert "Completed" in rows["1"] and "│       4 │" in rows["1"] and "★" in rows["1"]  # 1*1+.5 + 1*2+.5
    assert "Completed" in rows["2"] and "│       7 │" in rows["2"]
    assert "Failed" in rows["3"]
    # The failed trial's line says why in its stage's own words (issue 20).
    assert "trial 3: failed to reproduce 'score@a': scale 3 is not allowed (exit code 1)" in result.stdout
    assert "finished in state Failed" in result.stdout
    saved = experiments(repo, client_env)
    assert sorted(data["params"]["conf/hp.yaml"]["data"]["scale"] for data in saved.values()) == [1, 2]  # type: ignore[index]
    assert sorted(data["metrics"]["summary.json"]["data"]["total"] for data in saved.values()) == [4, 7]  # type: ignore[index]
    assert tree_digest(repo) == before
    assert len(worktrees(repo)) == 1
    # the same table is an artifact of the parent flow run
    parent = re.search(r"/runs/flow-run/([0-9a-f-]{36})", result.stdout)
    assert parent is not None, result.stdout
    api = f"http://127.0.0.1:{client_env['DVCFLOW_PORT']}/api"
    found = api_post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [parent.group(1)]}}})
    assert isinstance(found, list)
    tables = [item for item in found if str(item["key"]).startswith("dvcflow-sweep-")]
    assert len(tables) == 1 and tables[0]["type"] == "table", found
    table = tables[0]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert [(row["conf/hp.yaml:scale"], row["total"], row["state"]) for row in table] == [
        ("1", 4, "Completed"), ("2", 7, "Completed"), ("3", None, "Failed"),
    ]  # fmt: skip


def test_ctrl_c_cancels_the_running_trials_and_leaves_no_workspace_or_experiment(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_third_party_repo(tmp_path / "slow", client_env, sleep=120)
    before = tree_digest(repo)
    markers = tmp_path / "markers"
    markers.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**client_env, "SWEEP_TEST_MARKERS": str(markers), "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dvcflow", "sweep", "-S", "conf/hp.yaml:scale=1,2,4", "--jobs", "2"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(markers.iterdir())) < 2 and process.poll() is None:  # two trials are sleeping
            assert time.monotonic() < deadline, "the trials never started"
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout + stderr
    assert time.monotonic() - started < 60
    assert "Cancelled" in stdout
    pids = [int(marker.name.rsplit("-", 1)[1]) for marker in markers.iterdir()]
    for pid in pids:  # the stage commands are stopped, not left sleeping
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert experiments(repo, client_env) == {}
    assert len(worktrees(repo)) == 1
    assert list(scratch.iterdir()) == []
    assert tree_digest(repo) == before


@integration_fixture(scope="module")
def demo_with_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """One demo repo (with a metrics file, as after a run) for all the bad inputs: none may change it."""
    home = tmp_path_factory.mktemp("bad-input")
    env = offline_env(home)
    repo = make_pipeline_repo(home / "repo", env)
    (repo / "reports").mkdir()
    (repo / "reports" / "metrics.json").write_text('{"accuracy": 0.9}')
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield repo, env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "train.gamma=1,2"], "params.yaml has no param 'train.gamma'"),
        (["-S", "train.C="], "empty value list"),
        (["-S", "train.C=[1,"], "cannot parse the value"),
        (["-S", "train.C=0.1,abc"], "'abc' is not a number"),
        (
            ["-S", "train.C=1,2,3", "-S", "split.test_size=0.1,0.2", "--max-trials", "5"],
            "6 trials is more than",
        ),
        (
            ["-S", "train.C=1,2", "--metric", "precision"],
            "--metric precision: the pipeline has no such metric",
        ),
        (["-S", "other.yaml:lr=1"], "no params file other.yaml"),
    ],
)
def test_bad_input_is_one_line_before_any_trial(
    demo_with_metrics: tuple[Path, dict[str, str]], args: list[str], message: str
) -> None:
    """Refused before Prefect is contacted (no server listens) and before any trial starts."""
    repo, _ = demo_with_metrics
    before = tree_digest(repo)

    result = CliRunner().invoke(app, ["sweep", "--repo", str(repo), *args])

    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert len([line for line in lines if not line.startswith("Hint:")]) == 1, result.stderr
    assert git(repo, "for-each-ref", "refs/exps") == ""
    assert tree_digest(repo) == before


def _result(index: int, state: str, **metrics: float) -> TrialResult:
    return TrialResult(index, f"t-{index}", {"train.C": str(index)}, state, 1.0, dict(metrics))


def test_the_best_trial_is_the_completed_one_with_the_best_metric_first_of_equals() -> None:
    trials = (
        _result(1, "Completed", accuracy=0.9, loss=0.3),
        _result(2, "Failed"),
        _result(3, "Completed", accuracy=0.95, loss=0.2),
        _result(4, "Completed", accuracy=0.95, loss=0.1),
        _result(5, "Completed", accuracy=float("nan"), loss=0.05),
    )
    assert best_trial(trials, "accuracy", maximize=True) == 3
    assert best_trial(trials, "loss", maximize=False) == 5
    assert best_trial(trials, "recall", maximize=True) is None
    assert pick_best(trials, None, True) == ("accuracy", 3)  # the first metric when none is named
    rows = table_rows(trials, ("train.C",), 3)
    assert rows[1] == {
        "trial": 2, "name": "t-2", "train.C": "2", "accuracy": None, "loss": None,
        "state": "Failed", "seconds": 1.0, "best": False,
    }  # fmt: skip
    assert [row["best"] for row in rows] == [False, False, True, False, False]


def test_a_metric_named_like_a_fixed_column_shows_its_own_value_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Metrics `state`, `best` and `seconds` (a pipeline may name them so) are the trial's values on the
    terminal, not the table rows' fixed columns of those names; the best trial is still marked."""
    import io

    from rich.console import Console

    from dvcflow.cli.render import sweep as render
    from dvcflow.core.records import FlowRunRecord
    from dvcflow.engine.trials import SweepReport

    trials = (
        TrialResult(1, "t-1", {"train.C": "1"}, "Completed", 1.0, {"state": 11, "best": 12, "seconds": 13}),
        TrialResult(2, "t-2", {"train.C": "2"}, "Completed", 1.0, {"state": 21}),
    )
    run = FlowRunRecord("id", "s", "dvcflow sweep", "Completed", 5.0, (), None)
    report = SweepReport(run, trials, ("train.C",), "state", True, 2, True)
    piped = io.StringIO()
    monkeypatch.setattr(render, "out", Console(file=piped, width=160, no_color=True))

    render.sweep_summary(report)

    shown = piped.getvalue()
    assert re.search(r"│ +1 │ t-1 +│ +1 │ +11 │ +12 │ +13 │ Completed", shown), shown
    assert re.search(r"│ +2 ★ │ t-2 +│ +2 │ +21 │ +— │ +— │ Completed", shown), shown


def test_a_trial_started_without_room_is_an_error_even_without_asserts(tmp_path: Path) -> None:
    """`SweepSession.started` checks what the trial takes with a real error (`python -O` drops asserts)."""
    from dvcflow.core.resources import Capacity, Demand, Resources
    from dvcflow.engine.trials import SweepSession

    gpu = Demand((("gpu", 1),))
    resources = Resources({"train": gpu}, Capacity((("gpu", 1),), ("0",)))
    specs = (TrialSpec(1, ()), TrialSpec(2, ()))
    sweep = SweepSession(
        tmp_path, "0" * 40, specs, tmp_path, tmp_path, save=False, per_stage=False, metric=None,
        maximize=True, resources=resources,
    )  # fmt: skip
    sweep.started(1)
    assert not sweep.room()
    with pytest.raises(RuntimeError, match="trial 2 started while what it holds"):
        sweep.started(2)


def test_the_grid_is_dvcs_cross_product_and_only_varying_params_are_columns(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  C: 1.0\n  seed: 1\nsplit:\n  test_size: 0.2\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "hp.json").write_text('{"lr": 0.1}')

    grid = expand_grid(tmp_path, ["train.C=0.1,10", "conf/hp.json:lr=range(1,3)", "train.seed=7"])

    specs = tuple(TrialSpec(index, overrides) for index, overrides in enumerate(grid, start=1))
    assert [spec.values() for spec in specs] == [
        {"train.C": "0.1", "train.seed": "7", "conf/hp.json:lr": "1"},
        {"train.C": "0.1", "train.seed": "7", "conf/hp.json:lr": "2"},
        {"train.C": "10", "train.seed": "7", "conf/hp.json:lr": "1"},
        {"train.C": "10", "train.seed": "7", "conf/hp.json:lr": "2"},
    ]  # `dvc exp run --queue` order: the first -S varies slowest
    assert varying_params(specs) == ("train.C", "conf/hp.json:lr")
    apply_params(tmp_path, grid[3])
    assert json.loads((tmp_path / "conf" / "hp.json").read_text()) == {"lr": 2}
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"] == {"C": 10, "seed": 7}
