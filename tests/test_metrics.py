"""`dvcflow metrics`: table and JSON, diff against a real commit, history of real flow runs, errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dvcflow.api.artifacts import artifact_key, legacy_artifact_key
from dvcflow.cli.app import app
from dvcflow.cli.render.metrics import CHANGED_STYLE, _changes_table, display_value, sparkline
from dvcflow.core.metrics import Change, Metric, MetricsSnapshot
from tests.conftest import LiveServer
from tests.helpers import PROJECT, dvcflow, git, make_tiny_repo

METRICS = "reports/metrics.json"
FLOW = "Prefect operates DVC pipeline"


def cells(output: str, *first: str) -> list[str]:
    """The cells of the table row whose first cells are `first`."""
    for line in output.splitlines():
        row = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if row[: len(first)] == list(first):
            return row
    raise AssertionError(f"no row starting {first} in:\n{output}")


def write_metrics(repo: Path, **values: float) -> None:
    (repo / METRICS).parent.mkdir(exist_ok=True)
    (repo / METRICS).write_text(json.dumps(values))


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def fails(result: subprocess.CompletedProcess[str], code: int, *lines: str) -> None:
    """Exit code `code`, nothing on stdout, exactly `lines` on stderr."""
    assert (result.returncode, result.stdout) == (code, ""), result.stdout + result.stderr
    assert result.stderr.splitlines() == list(lines)


# --- integration: real DVC repos, real processes --------------------------------------------------------


def test_from_no_metrics_to_a_diff_against_real_commits(
    pipeline_repo: Path, client_env: dict[str, str]
) -> None:
    repo, env = pipeline_repo, client_env
    no_metrics = ("Error: no metrics yet (reports/metrics.json)", "Hint: run `dvcflow run-a` to produce them")
    fails(dvcflow("metrics", cwd=repo, env=env), 3, *no_metrics)
    fails(dvcflow("metrics", "--diff", cwd=repo, env=env), 3, *no_metrics)

    write_metrics(repo, accuracy=0.9, f1_macro=0.85)
    first = dvcflow("metrics", "--diff", cwd=repo, env=env)  # not in git yet: every metric is new
    assert first.returncode == 0, first.stderr
    assert cells(first.stdout, METRICS, "accuracy") == [METRICS, "accuracy", "—", "0.9", "added"]
    assert first.stderr.splitlines() == [f"Warning: {METRICS} at HEAD: no such file"]
    git(repo, "add", METRICS, env=env)
    git(repo, "commit", "-q", "-m", "first metrics", env=env)

    table = dvcflow("metrics", cwd=repo, env=env)
    assert table.returncode == 0, table.stderr
    assert cells(table.stdout, METRICS, "accuracy") == [METRICS, "accuracy", "0.9"]
    assert cells(table.stdout, METRICS, "f1_macro") == [METRICS, "f1_macro", "0.85"]
    shown = dvcflow("metrics", "--json", "--repo", str(repo), cwd=PROJECT, env=env)
    assert json.loads(shown.stdout) == {METRICS: {"accuracy": 0.9, "f1_macro": 0.85}}

    write_metrics(repo, accuracy=0.95, f1_macro=0.85)
    set_param(repo, "train", "C", 0.5)
    raw = dvcflow("metrics", "--diff", "--json", cwd=repo, env=env)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout) == {
        "rev": "HEAD",
        "metrics": {
            METRICS: {
                "accuracy": {"old": 0.9, "new": 0.95, "diff": 0.95 - 0.9, "changed": True},
                "f1_macro": {"old": 0.85, "new": 0.85, "diff": 0.0, "changed": False},
            }
        },
    }
    assert "0.04999999999999993" in raw.stdout  # float noise is kept in JSON ...

    diff = dvcflow("metrics", "--diff", "--params", cwd=repo, env=env)
    assert diff.returncode == 0, diff.stderr
    assert "0.0499" not in diff.stdout  # ... and rounded for people
    assert "Metrics: HEAD → workspace" in diff.stdout
    assert cells(diff.stdout, METRICS, "accuracy") == [METRICS, "accuracy", "0.9", "0.95", "+0.05"]
    assert cells(diff.stdout, METRICS, "f1_macro") == [METRICS, "f1_macro", "0.85", "0.85", "0"]
    assert cells(diff.stdout, "params.yaml", "train.C") == ["params.yaml", "train.C", "1", "0.5", "-0.5"]
    assert cells(diff.stdout, "params.yaml", "split.test_size")[2:] == ["0.2", "0.2", "0"]
    assert "2 changed since HEAD." in diff.stdout
    fails(
        dvcflow("metrics", "--diff", "no-such-rev", cwd=repo, env=env),
        3,
        f"Error: unknown git revision 'no-such-rev' in {repo}",
        "Hint: pass a commit, branch or tag, e.g. HEAD~1",
    )

    git(repo, "commit", "-q", "-am", "better metrics", env=env)
    older = dvcflow("metrics", "--diff", "HEAD~1", "--params", "--json", cwd=repo, env=env)
    assert older.returncode == 0, older.stderr
    data = json.loads(older.stdout)
    assert data["rev"] == "HEAD~1"
    assert data["metrics"][METRICS]["accuracy"]["changed"] is True
    assert data["params"]["params.yaml"]["train.C"] == {"old": 1.0, "new": 0.5, "diff": -0.5, "changed": True}
    unchanged = dvcflow("metrics", "--diff", cwd=repo, env=env)
    assert "No change since HEAD." in unchanged.stdout


def test_errors_outside_a_git_dvc_repo(tmp_path: Path, client_env: dict[str, str]) -> None:
    env = client_env
    plain = tmp_path / "plain"
    plain.mkdir()
    fails(
        dvcflow("metrics", "--repo", str(plain), cwd=PROJECT, env=env),
        3,
        f"Error: {plain} is not inside a DVC repository (no .dvc directory here or above)",
        "Hint: run `dvc init`, or pass --repo PATH",
    )

    no_git = tmp_path / "no-git"
    no_git.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=no_git, env=env, check=True)
    shutil.copy(PROJECT / "dvc.yaml", no_git / "dvc.yaml")
    write_metrics(no_git, accuracy=0.5)
    assert json.loads(dvcflow("metrics", "--json", cwd=no_git, env=env).stdout) == {
        METRICS: {"accuracy": 0.5}
    }
    fails(
        dvcflow("metrics", "--diff", cwd=no_git, env=env),
        3,
        f"Error: {no_git} is not a git repository: comparing with a revision needs git",
        "Hint: run `git init` and commit, or show the current metrics without --diff",
    )


# A pipeline whose metrics follow `train.C` at once: history is about runs, not about scikit-learn.
SCORE_PIPELINE = """stages:
  score:
    cmd: >-
      python -c "import json, pathlib, yaml; c = yaml.safe_load(open('params.yaml'))['train']['C'];
      pathlib.Path('reports').mkdir(exist_ok=True);
      json.dump({'accuracy': c / (1 + c), 'f1_macro': c / (2 + c)}, open('reports/metrics.json', 'w'))"
    params:
      - train.C
    metrics:
      - reports/metrics.json:
          cache: false
"""


def make_score_repo(root: Path, env: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text("train:\n  C: 1.0\n")
    return make_tiny_repo(root, env, SCORE_PIPELINE)


def test_history_of_three_real_flow_runs(tmp_path: Path, live_server: LiveServer) -> None:
    env = dict(live_server.env)
    repo = make_score_repo(tmp_path / "Iris_History", env)
    key = artifact_key(repo)
    assert re.fullmatch(r"dvcflow-metrics-[0-9a-f]{12}", key)
    fails(
        dvcflow("metrics", "--history", cwd=repo, env=env),
        3,
        f"Prefect API: {live_server.api_url} (dvcflow local server)",
        f"Error: no flow run has published metrics for {repo} yet (artifact key {key})",
        "Hint: run `dvcflow run-a`; each run records its metrics",
    )

    names, published = [], []
    for regularisation in (0.01, 0.01, 1.0):  # a no-op repro, then accuracy goes up
        set_param(repo, "train", "C", regularisation)
        run = dvcflow("run-a", cwd=repo, env=env)
        assert run.returncode == 0, run.stderr
        finished = re.search(r"Flow run '([\w-]+)' finished in state Completed", run.stdout)
        assert finished is not None, run.stdout
        names.append(finished.group(1))
        published.append(json.loads((repo / METRICS).read_text()))
    accuracy = [values["accuracy"] for values in published]
    assert accuracy[0] == accuracy[1] < accuracy[2]

    every = dvcflow("metrics", "--history", "--json", cwd=repo, env=env)
    assert every.returncode == 0, every.stderr
    history = json.loads(every.stdout)
    assert history["key"] == key
    assert [run["flow_run"] for run in history["runs"]] == names[::-1]  # newest first
    assert [run["metrics"] for run in history["runs"]] == [{METRICS: values} for values in published[::-1]]
    assert {run["flow"] for run in history["runs"]} == {FLOW}
    assert [run["created"] for run in history["runs"]] == sorted(
        (run["created"] for run in history["runs"]), reverse=True
    )

    last_two = dvcflow("metrics", "--history", "2", cwd=repo, env=env)
    assert last_two.returncode == 0, last_two.stderr
    assert names[0] not in last_two.stdout
    rows = [cells(last_two.stdout, name) for name in names[:0:-1]]
    assert [row[1:2] + row[3:4] for row in rows] == [
        [FLOW, display_value(value)] for value in accuracy[:0:-1]
    ]
    assert last_two.stdout.index(names[2]) < last_two.stdout.index(names[1])
    trend = cells(last_two.stdout, "accuracy")
    assert trend[1:] == [
        sparkline(tuple(accuracy[1:])),
        display_value(accuracy[1]),
        display_value(accuracy[2]),
    ]


# --- unit: our own logic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--diff", "--history"], "Error: --diff and --history cannot be combined"),
        (["--params"], "Error: --params only works with --diff"),
        (["--history", "--params"], "Error: --params only works with --diff"),
        (["HEAD~1"], "Error: unexpected argument 'HEAD~1': a revision needs --diff, a count --history"),
        (["--history", "0"], "Error: --history takes a number of flow runs (1 to 200), got '0'"),
        (["--history", "ten"], "Error: --history takes a number of flow runs (1 to 200), got 'ten'"),
        (["--history", "201"], "Error: --history takes a number of flow runs (1 to 200), got '201'"),
    ],
    ids=[
        "diff+history",
        "params-alone",
        "params+history",
        "rev-without-diff",
        "zero-runs",
        "not-a-number",
        "over-a-page",
    ],
)
def test_contradictory_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["metrics", *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message]


def test_sparkline_runs_oldest_to_newest_and_skips_non_numbers() -> None:
    assert sparkline((1, 3, 2)) == "▁█▅"
    assert sparkline((0.5, None, "n/a", 0.5)) == "▄  ▄"
    assert sparkline((None,)) == ""


def test_changed_rows_are_highlighted_and_noise_rounded() -> None:
    table = _changes_table(
        "t", "Metric", "HEAD", (Change("m.json", "a", 0.9, 0.95, 0.95 - 0.9), Change("m.json", "b", 1, 1, 0))
    )
    assert [row.style for row in table.rows] == [CHANGED_STYLE, None]
    assert [next(iter(column.cells)) for column in table.columns] == ["m.json", "a", "0.9", "0.95", "+0.05"]


# The path-based artifact keys dvcflow published before repository identities (commit c377abc), for
# folders that need not exist: computed once with the released code. `--history` still reads them, so
# `legacy_artifact_key` must give exactly these.
RELEASED_KEYS = {
    "/dvcflow-released/projects/My Repo.v2": "dvcflow-metrics-my-repo-v2-3e8235",
    "/dvcflow-released/other/My Repo.v2": "dvcflow-metrics-my-repo-v2-f71f02",
    "/dvcflow-released/A very long repository name, more than forty characters in all": (
        "dvcflow-metrics-a-very-long-repository-name-more-than-fo-657cca"
    ),
    "/dvcflow-released/Ünïcode ___": "dvcflow-metrics-n-code-9f2f4d",
    "/dvcflow-released/x/___": "dvcflow-metrics-repo-1b035a",
    "/dvcflow-released/work/..": "dvcflow-metrics-dvcflow-released-c170d4",
}


def released_legacy_key(repo_root: Path) -> str:
    """The released format, written out independently of dvcflow (pinned to `RELEASED_KEYS` below): what an
    older dvcflow published for `repo_root`, for tests whose repository is in a temporary folder."""
    resolved = repo_root.resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-")[:40].strip("-") or "repo"
    return f"dvcflow-metrics-{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:6]}"


@pytest.mark.parametrize(("folder", "key"), RELEASED_KEYS.items(), ids=range(len(RELEASED_KEYS)))
def test_the_legacy_key_is_the_released_one(folder: str, key: str) -> None:
    assert legacy_artifact_key(Path(folder)) == key
    assert released_legacy_key(Path(folder)) == key


def test_artifact_rows_round_trip() -> None:
    snapshot = MetricsSnapshot((Metric("r/m.json", "accuracy", 0.9), Metric("r/m.json", "test.f1", 0.8)))
    assert MetricsSnapshot.from_rows(json.loads(json.dumps(snapshot.table_rows()))) == snapshot
