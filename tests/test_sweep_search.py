"""`dvcflow sweep --search`: Optuna asks, DVC runs, Prefect records (issue 24).

End to end on real git+DVC repositories and the session's Prefect server: a Branin pipeline (its metric
a known function of two params, computed by a stage command), a resumed study, a pruned search, and every
bad input. TPE against random search is compared at the Optuna level, with the same objective and
dvcflow's own `Search`: 5 seeds x 2 samplers x 16 real trials are too slow for the suite, so
bench/bench_search.py runs them, and times the pruned search against the same sweep unpruned (speed is
measured in benchmarks, never asserted here).
"""

from __future__ import annotations

import json
import math
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment: before any CliRunner.
import dvc.logger as _dvc_logger  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.errors import UsageError
from dvcflow.dvc.search_space import CHOICE, FIXED, FLOAT, INT, parse_search_space
from dvcflow.dvc.steps import read_steps, step_files
from dvcflow.engine.search import Search, SearchPlan, search_markdown, study_file
from tests.conftest import integration_fixture, offline_env
from tests.helpers import dvcflow, git, make_tiny_repo
from tests.test_sweep import experiments, sweep_json, tree_digest, worktrees

BRANIN_OPTIMUM = 0.397887


def branin(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


BRANIN_PY = """\
import json, math, os, time, yaml
p = yaml.safe_load(open("params.yaml"))["branin"]
x1, x2 = p["x1"], p["x2"]
start = time.time()
markers = os.environ.get("SWEEP_TEST_MARKERS")
if markers:
    open(os.path.join(markers, f"{os.getpid()}.started"), "w").close()
time.sleep(p["sleep"])
b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
f = (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
json.dump({"f": f}, open("metrics.json", "w"))
if markers:
    with open(os.path.join(markers, f"{os.getpid()}.json"), "w") as out:
        json.dump({"start": start, "end": time.time(), "x1": x1, "x2": x2}, out)
"""

BRANIN_STAGES = """\
stages:
  branin:
    cmd: python branin.py
    deps: [branin.py]
    params: [branin]
    metrics:
      - metrics.json:
          cache: false
"""

# A training loop logging `loss` per step in dvclive's layout; a large |lr - 0.3| shows from the start.
TRAIN_PY = """\
import json, os, time, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
markers = os.environ["SWEEP_TEST_MARKERS"]
os.makedirs("dvclive/plots/metrics", exist_ok=True)
with open("dvclive/plots/metrics/loss.tsv", "w") as log:
    log.write("step\\tloss\\n")
    for step in range(20):
        loss = 10 * (lr - 0.3) ** 2 + 1 / (step + 1)
        log.write(f"{step}\\t{loss}\\n")
        log.flush()
        with open(os.path.join(markers, f"{lr}"), "w") as mark:
            mark.write(str(step))
        time.sleep(0.2)
json.dump({"loss": loss}, open("metrics.json", "w"))
"""

TRAIN_STAGES = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train]
    metrics:
      - metrics.json:
          cache: false
    plots:
      - dvclive/plots/metrics/loss.tsv:
          cache: false
"""


def make_branin_repo(root: Path, env: dict[str, str], sleep: float = 0.5) -> Path:
    root.mkdir(parents=True)
    (root / "branin.py").write_text(BRANIN_PY)
    (root / "params.yaml").write_text(f"branin:\n  x1: 0.0\n  x2: 0.0\n  sleep: {sleep}\n")
    repo = make_tiny_repo(root, env, stages=BRANIN_STAGES)
    (repo / "metrics.json").write_text('{"f": 55.6}')  # as after a run: --metric is checked against it
    return repo


def make_train_repo(root: Path, env: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN_PY)
    (root / "params.yaml").write_text("train:\n  lr: 0.3\n")
    return make_tiny_repo(root, env, stages=TRAIN_STAGES)


SPACE = ["-S", "branin.x1=interval(-5,10)", "-S", "branin.x2=interval(0,15)"]
# The pruning sweep of the train pipeline, without its `--prune` (bench/bench_search.py times it both ways).
PRUNE_SWEEP = [
    "sweep", "--search", "grid", "--jobs", "2", "--seed", "1",
    "-S", "train.lr=choice(0.3,0.31,0.29,0.32,0.9,1.0)", "--metric", "loss", "--minimize",
]  # fmt: skip


def train_loss(lr: float, step: int) -> float:
    """The loss TRAIN_PY logs at `step`."""
    return 10 * (lr - 0.3) ** 2 + 1 / (step + 1)


def study_trials(repo: Path, name: str) -> list[dict[str, object]]:
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_file(repo, name)))
    )
    study = optuna.load_study(study_name=name, storage=storage)
    return [{"state": t.state.name, "params": t.params, "value": t.value} for t in study.trials]


def markers_of(folder: Path) -> list[dict[str, float]]:
    return [json.loads(path.read_text()) for path in folder.glob("*.json")]


def most_at_once(spans: list[dict[str, float]]) -> int:
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(1200)
def test_a_study_resumed_adds_trials_never_repeats_one_and_applies_the_best(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """--study s --trials 4, twice: 8 trials in the study, 8 experiments, no point twice, never more than
    --jobs 2 trials at once; --prune on a pipeline with no step metric is one warning, not an error;
    --apply-best leaves the best trial's params in the workspace."""
    repo = make_branin_repo(tmp_path / "branin", client_env)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**client_env, "SWEEP_TEST_MARKERS": str(markers), "TMPDIR": str(tmp_path)}
    search = [
        "sweep",
        "--search",
        "tpe",
        *SPACE,
        "--metric",
        "f",
        "--minimize",
        "--study",
        "s",
        "--jobs",
        "2",
    ]
    before = tree_digest(repo)

    first = dvcflow(*search, "--trials", "4", "--seed", "3", "--json", cwd=repo, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert tree_digest(repo) == before  # without --apply-best the workspace is untouched
    second = dvcflow(
        *search, "--trials", "4", "--seed", "3", "--prune", "median", "--apply-best",
        cwd=repo, env=env, timeout=600,
    )  # fmt: skip
    output = second.stdout + second.stderr
    assert second.returncode == 0, output

    trials = study_trials(repo, "s")
    assert len(trials) == 8 and all(t["state"] == "COMPLETE" for t in trials), trials
    points = {(t["params"]["branin.x1"], t["params"]["branin.x2"]) for t in trials}  # type: ignore[index]
    assert len(points) == 8  # none repeated
    saved = experiments(repo, client_env)
    assert len(saved) == 8
    saved_points = {
        (
            data["params"]["params.yaml"]["data"]["branin"]["x1"],
            data["params"]["params.yaml"]["data"]["branin"]["x2"],
        )  # type: ignore[index]
        for data in saved.values()
    }
    assert saved_points == points
    for data in saved.values():  # each experiment's metric is Branin of its params
        branin_params = data["params"]["params.yaml"]["data"]["branin"]  # type: ignore[index]
        value = data["metrics"]["metrics.json"]["data"]["f"]  # type: ignore[index]
        assert value == pytest.approx(branin(branin_params["x1"], branin_params["x2"]))

    spans = markers_of(markers)
    assert len(spans) == 8 and most_at_once(spans) <= 2
    assert re.search(r"Warning: --prune median: trial \d+ logged no step of f .*; not pruning", output), (
        output
    )
    assert "★" in second.stdout and "applied to the workspace" in second.stdout
    best = min(trials, key=lambda t: t["value"])  # type: ignore[arg-type,return-value]
    applied = yaml.safe_load((repo / "params.yaml").read_text())["branin"]
    assert (applied["x1"], applied["x2"]) == (best["params"]["branin.x1"], best["params"]["branin.x2"])  # type: ignore[index]
    assert len(worktrees(repo)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dvcflow-sweep-")]


@pytest.mark.timeout(900)
def test_ctrl_c_leaves_no_workspace_nor_experiment_and_the_study_resumes(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_branin_repo(tmp_path / "branin", client_env, sleep=120)
    markers = tmp_path / "markers"
    markers.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**client_env, "SWEEP_TEST_MARKERS": str(markers), "TMPDIR": str(scratch)}
    search = ["sweep", "--search", "random", *SPACE, "--metric", "f", "--minimize", "--study", "s"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dvcflow", *search, "--trials", "4", "--jobs", "2"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(markers.glob("*.started"))) < 2 and process.poll() is None:  # two trials run
            assert time.monotonic() < deadline, "the trials never started"
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout + stderr
    assert experiments(repo, client_env) == {}
    assert len(worktrees(repo)) == 1 and list(scratch.iterdir()) == []
    assert [t["state"] for t in study_trials(repo, "s")] == ["FAIL", "FAIL"]  # told, not left Running

    resumed = dvcflow(
        *search, "--trials", "1", "-S", "branin.sleep=0", cwd=repo, env=client_env, timeout=300
    )  # a fixed -S is not part of the study's space

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [t["state"] for t in study_trials(repo, "s")] == ["FAIL", "FAIL", "COMPLETE"]
    assert len(experiments(repo, client_env)) == 1


@pytest.mark.timeout(1200)
def test_pruned_trials_stop_before_the_last_step_and_are_kept_as_experiments(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_train_repo(tmp_path / "train", client_env)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**client_env, "SWEEP_TEST_MARKERS": str(markers)}

    result = dvcflow(*PRUNE_SWEEP, "--prune", "median", "--json", cwd=repo, env=env, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = sweep_json(result)["trials"]
    assert isinstance(rows, list) and len(rows) == 6  # the whole grid
    pruned = [row for row in rows if row["state"] == "Pruned"]
    completed = [row for row in rows if row["state"] == "Completed"]
    assert pruned and completed, rows
    last_step = {float(path.name): int(path.read_text()) for path in markers.iterdir()}
    for row in pruned:  # stopped while it ran: fewer than 20 steps written; the last one reported kept
        assert last_step[float(row["train.lr"])] < 19, (row, last_step)
        step = row["pruned_at_step"]
        assert isinstance(step, int) and step <= last_step[float(row["train.lr"])], (row, last_step)
        assert row["loss"] is None  # --json keeps data: the value reported is pruned_value
        assert row["pruned_value"] == pytest.approx(train_loss(float(row["train.lr"]), step))
    for row in completed:
        assert last_step[float(row["train.lr"])] == 19
        assert row["pruned_at_step"] is None and row["pruned_value"] is None
    assert sum(last_step.values()) < 6 * 19
    assert {row["train.lr"] for row in pruned} >= {"0.9", "1.0"}  # the bad ones show at once
    saved = experiments(repo, client_env)  # pruned trials too, with the steps they logged
    assert {row["name"] for row in rows} == set(saved)
    assert len(worktrees(repo)) == 1


@integration_fixture(scope="module")
def branin_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Branin repo for the bad inputs, no Prefect server (none may be needed to refuse them)."""
    home = tmp_path_factory.mktemp("search-bad-input")
    env = offline_env(home)
    repo = make_branin_repo(home / "repo", env)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield repo


BAD = [
    (["-S", "branin.x1=interval(1)"], "cannot parse the value"),
    (["-S", "branin.x1=interval(10,-5)"], "an interval needs two numbers, low < high"),
    (["-S", "branin.x1=tag(log, interval(0,10))"], "a log scale needs a range above 0 (this one includes 0)"),
    (["-S", "branin.x1=tag(log, range(0,10))"], "a log scale needs a range above 0"),
    (["-S", "branin.x1=interval(-5,10)", "--trials", "0"], "--trials must be at least 1, got 0"),
    (["-S", "branin.x1=interval(-5,10)", "--search", "grid"], "--search grid cannot cover a continuous"),
    (
        ["-S", "branin.x1=interval(-5,10)", "--metric", "accuracy"],
        "--metric accuracy: the pipeline has no such",
    ),
    (["-S", "branin.x1=interval(-5,10)", "--prune", "sometimes"], "--prune sometimes: not a pruner"),
    (["-S", "branin.x9=interval(-5,10)"], "params.yaml has no param 'branin.x9'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[message for _, message in BAD])
def test_bad_input_is_one_line_and_no_trial(branin_offline: Path, args: list[str], message: str) -> None:
    repo = branin_offline
    before = tree_digest(repo)
    defaults = {"--search": "tpe", "--trials": "4", "--metric": "f"}
    extra = [item for flag, value in defaults.items() if flag not in args for item in (flag, value)]

    result = CliRunner().invoke(app, ["sweep", "--repo", str(repo), *args, *extra, "--minimize"])

    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert len([line for line in lines if not line.startswith("Hint:")]) == 1, result.stderr
    assert git(repo, "for-each-ref", "refs/exps") == ""
    assert not (repo / ".dvc" / "tmp" / "dvcflow-studies").exists()
    assert tree_digest(repo) == before


# ------------------------------------------------------------------------------------------------ units


def _search(strategy: str, seed: int, trials: int = 16) -> Search:
    space = (
        _param("branin.x1", FLOAT, low=-5.0, high=10.0),
        _param("branin.x2", FLOAT, low=0.0, high=15.0),
    )
    return Search(SearchPlan(strategy, trials, space, "f", False, seed=seed), Path("unused"), jobs=1)


def _param(key: str, kind: str, **bounds: float) -> object:
    from dvcflow.dvc.search_space import SearchParam

    return SearchParam("params.yaml", key, kind, f"{key}=...", **bounds)  # type: ignore[arg-type]


def _regret(search: Search) -> float:
    for _ in range(search.trials):
        number, overrides = search.ask()
        values = {o.key: float(o.value) for o in overrides}
        search.tell(number, "complete", branin(values["branin.x1"], values["branin.x2"]), "")
    return float(search.study.best_value) - BRANIN_OPTIMUM


def test_tpe_gets_closer_to_the_branin_optimum_than_random_search_in_16_trials() -> None:
    """The median over 5 seeds of the best value's distance to the optimum, dvcflow's own sampler
    settings (`Search`), the points written as trials would write them."""
    tpe = [_regret(_search("tpe", seed)) for seed in range(5)]
    random = [_regret(_search("random", seed)) for seed in range(5)]
    assert statistics.median(tpe) < statistics.median(random), (tpe, random)


def test_the_search_space_takes_hydras_sweep_forms(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  C: 1.0\n  depth: 3\n  solver: lbfgs\n  seed: 1\n")
    (tmp_path / "conf.yaml").write_text("lr: 0.1\n")

    space = parse_search_space(
        tmp_path,
        [
            "train.C=tag(log, interval(0.01,100))",
            "train.depth=range(2,10)",
            "train.solver=choice(lbfgs,saga)",
            "conf.yaml:lr=0.1,0.2",
            "train.seed=7",
        ],
        grid=False,
    )

    by_label = {param.label: param for param in space}
    c = by_label["train.C"]
    assert (c.kind, c.low, c.high, c.log) == (FLOAT, 0.01, 100.0, True)
    depth = by_label["train.depth"]
    assert (depth.kind, depth.low, depth.high) == (INT, 2, 9)  # range(2,10) is 2..9, as in Hydra
    assert by_label["train.solver"].choices == ("lbfgs", "saga")
    assert by_label["conf.yaml:lr"].kind == CHOICE and by_label["conf.yaml:lr"].choices == (0.1, 0.2)
    assert by_label["train.seed"].kind == FIXED
    assert by_label["train.C"].override(0.5).text == "train.C=0.5"
    assert by_label["train.solver"].override("saga").text == "train.solver=saga"
    grid = parse_search_space(tmp_path, ["train.depth=range(2,4)", "train.solver=lbfgs,saga"], grid=True)
    assert [param.grid_values() for param in grid] == [(2, 3), ("lbfgs", "saga")]
    with pytest.raises(UsageError, match="continuous"):
        parse_search_space(tmp_path, ["train.C=interval(0.1,1)"], grid=True)
    with pytest.raises(UsageError, match="nothing to search"):
        parse_search_space(tmp_path, ["train.seed=7"], grid=False)


def test_steps_are_read_from_dvclive_and_plots_files_as_they_grow(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("plots:\n  - logs/acc.csv\nstages: {}\n")
    live = tmp_path / "dvclive" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t0\t0.9\n2\t1\t0.7\n3\t2\t0.")  # last line half
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "acc.csv").write_text("acc\n0.5\n0.6\n")

    assert read_steps(step_files(tmp_path, "loss"), "loss") == [(0, 0.9), (1, 0.7)]
    assert read_steps(step_files(tmp_path, "acc"), "acc") == [(0, 0.5), (1, 0.6)]  # no step column: rows
    (tmp_path / "logs" / "f1.json").write_text('{"train": [{"step": 3, "f1": 0.4}]}')
    assert read_steps((tmp_path / "logs" / "f1.json",), "metrics.json:f1") == [(3, 0.4)]
    assert read_steps(step_files(tmp_path, "recall"), "recall") == []


def test_the_summary_has_the_best_params_the_objective_and_the_importances() -> None:
    search = _search("random", seed=0, trials=8)
    _regret(search)
    text = search_markdown(search.study, search.plan, None)
    assert "## Best" in text and "| branin.x1 |" in text
    assert text.count("| Complete |") == 8
    assert "## Importance of each param" in text and "| branin.x2 |" in text


def test_a_pruned_trial_shows_the_value_it_last_reported_and_the_step_it_was_stopped_at(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table (terminal and artifact) says `0.97 (pruned at step 1)` instead of "—"; `--json` keeps the
    metric empty (the trial never wrote it) and carries the step and the value as data."""
    import io

    from rich.console import Console

    from dvcflow.cli.render import sweep as render
    from dvcflow.core.records import FlowRunRecord
    from dvcflow.engine.trials import SweepReport, TrialResult, table_rows

    trials = (
        TrialResult(1, "s-1", {"train.lr": "0.3"}, "Completed", 4.0, {"loss": 0.05}, number=0, steps=20),
        TrialResult(2, "s-2", {"train.lr": "0.9"}, "Pruned", 1.0, {}, number=1, steps=2, pruned_at=(1, 0.97)),
    )
    run = FlowRunRecord("id", "s", "dvcflow sweep", "Completed", 5.0, (), None)
    report = SweepReport(run, trials, ("train.lr",), "loss", False, 1, True, search="# Search")

    assert [row["loss"] for row in table_rows(trials, ("train.lr",), 1, "loss")] == [
        0.05,
        "0.97 (pruned at step 1)",
    ]  # the artifact's rows
    piped = io.StringIO()
    monkeypatch.setattr(render, "out", Console(file=piped, width=120, no_color=True))
    render.sweep_summary(report)
    assert re.search(r"│ +0\.9 │ 0\.97 \(pruned at step 1\) │ Pruned", piped.getvalue()), piped.getvalue()
    capsys.readouterr()
    render.sweep_json(report)
    rows = json.loads(capsys.readouterr().out)["trials"]
    assert [(r["loss"], r["pruned_at_step"], r["pruned_value"]) for r in rows] == [
        (0.05, None, None),
        (None, 1, 0.97),
    ]


def test_the_benchmark_table_survives_random_search_hitting_the_optimum() -> None:
    """bench/bench_search.py's row divides TPE's median regret by random's, which is 0 when random search
    lands on the optimum (regrets are rounded to 6 places): a row without a ratio, not a ZeroDivisionError."""
    from bench.bench_search import rows

    trials = {"tpe_trials": [12] * 5, "grid_trials": 256, "target_met": True, "tpe_median": 12, "share": 0.05}
    e2e = {"trials": 16, "jobs": 2, "regrets": {"tpe": [0.1] * 5, "random": [0.0] * 5}}
    cases = (({"tpe": 0.1, "random": 0.0}, "— (random's is 0)"), ({"tpe": 0.1, "random": 0.2}, "0.50"))
    for medians, shown in cases:
        (row,) = rows({"trials": trials, "e2e": {**e2e, "median_regret": medians}})[1:]
        assert f"| {shown} — " in row, row
