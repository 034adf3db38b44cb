"""`dvcflow run-b` end to end: Prefect owns the stage DAG, a real Prefect server, real files in tmp.

One repository goes through a sequence of runs, each checking what the previous one left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LiveServer, Processes
from tests.helpers import PROJECT, base_env, dvc, dvcflow

STAGES = ("prepare", "train", "evaluate")
FINAL_TYPES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
OUTPUTS = (
    "data/processed/train.csv",
    "data/processed/test.csv",
    "models/model.joblib",
    "reports/metrics.json",
)


def task_states(stdout: str) -> dict[str, str]:
    """Task → state, from the rows of the run summary table."""
    states: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) == 4 and cells[0] in (*STAGES, "metrics summary"):
            states[cells[0]] = cells[1]
    return states


def fingerprint(repo: Path) -> dict[str, tuple[str, int]]:
    """md5 and mtime of every output: a cached run must leave both alone."""
    return {
        name: (hashlib.md5((repo / name).read_bytes()).hexdigest(), (repo / name).stat().st_mtime_ns)
        for name in OUTPUTS
    }


def run_b(repo: Path, env: dict[str, str], *args: str) -> tuple[dict[str, str], str]:
    result = dvcflow("run-b", *args, cwd=repo, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"finished in state Completed after", result.stdout)
    return task_states(result.stdout), result.stderr


def api_task_runs(server: LiveServer, stdout: str, count: int) -> dict[str, dict[str, Any]]:
    """The flow run's `count` task runs as the API has them, by task name, once it has recorded them
    all in a final state (it does so from events, after the run's summary is printed)."""
    link = re.search(r"/runs/flow-run/([0-9a-f-]{36})", stdout)
    assert link is not None, stdout
    request = urllib.request.Request(
        f"{server.api_url}/task_runs/filter",
        data=json.dumps({"flow_runs": {"id": {"any_": [link.group(1)]}}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)
        final = [run for run in runs if run["state"] and run["state"]["type"] in FINAL_TYPES]
        if len(final) == count:
            return {re.sub(r"-[0-9a-f]{3}$", "", run["name"]): run for run in runs}
        assert time.monotonic() < deadline, f"the API recorded {len(final)} of {count} task runs"
        time.sleep(0.2)  # polling the API for records written asynchronously, bounded above


@pytest.mark.timeout(600)  # five dvcflow processes and a dvc repro: slow on a loaded 2-CPU machine
def test_run_b_matches_dvc_then_caches_until_inputs_or_outputs_change(
    pipeline_repo: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    repo, env = pipeline_repo, client_env
    # What `dvc repro` produces on a fresh copy is what run-b must produce.
    reference = shutil.copytree(repo, repo.parent / "reference", symlinks=True)
    assert dvc("repro", cwd=reference, env=env).returncode == 0
    expected = json.loads((reference / "reports/metrics.json").read_text())
    # ...and after it, run-b runs nothing and rewrites nothing: DVC's record says each stage is up to date
    # (the uncached metrics too). Their Prefect records are written then: the next run is a cache hit.
    untouched = fingerprint(reference)
    states, logs = run_b(reference, env)
    assert states == {**dict.fromkeys(STAGES, "UpToDate"), "metrics summary": "Completed"}
    assert "Running stage" not in logs and "is cached" not in logs
    assert fingerprint(reference) == untouched
    states, _ = run_b(reference, env)
    assert states == {**dict.fromkeys(STAGES, "Cached"), "metrics summary": "Completed"}
    assert fingerprint(reference) == untouched

    first = dvcflow("run-b", cwd=repo, env=env)
    assert first.returncode == 0, first.stderr
    assert "'Prefect owned stage DAG'" in first.stderr
    assert "dvc repro" not in first.stderr
    # The demo registers mltoy's functions: they run in-process, their prints in the task log.
    assert re.search(r"Task run 'prepare-\w+' - > mltoy\.cli:main\(\['prepare',", first.stderr)
    assert 'prepare: {"train_rows": 120, "test_rows": 30}' in first.stderr
    assert task_states(first.stdout) == dict.fromkeys((*STAGES, "metrics summary"), "Completed")
    assert json.loads((repo / "reports/metrics.json").read_text()) == expected
    logged = re.search(r"Metrics: (\{.*\})", first.stderr)
    assert logged is not None and json.loads(logged.group(1)) == expected
    assert re.search(r"reports/metrics\.json\s+│\s+accuracy", first.stdout)  # the summary's metrics table
    runs = api_task_runs(live_server, first.stdout, len(STAGES) + 1)
    edges = {name: {edge["id"] for edge in runs[name]["task_inputs"].get("wait_for", [])} for name in STAGES}
    assert edges == {
        "prepare": set(),
        "train": {runs["prepare"]["id"]},
        "evaluate": {runs["prepare"]["id"], runs["train"]["id"]},
    }
    status = dvc("status", "--json", cwd=repo, env=env)
    assert json.loads(status.stdout) == {}, status.stdout  # DVC agrees with what run-b did

    before = fingerprint(repo)
    states, _ = run_b(repo, env, "--params", "params.yaml")
    assert states == {**dict.fromkeys(STAGES, "Cached"), "metrics summary": "Completed"}
    assert fingerprint(repo) == before

    # (A changed param reruns exactly the stages below it: tests/test_engine.py checks it.)
    params = yaml.safe_load((repo / "params.yaml").read_text())

    # A params file no stage reads cannot be honoured: refused before any flow run.
    (repo / "alt-params.yaml").write_text(yaml.safe_dump(params))
    refused = dvcflow("run-b", "--params", "alt-params.yaml", cwd=repo, env=env)
    assert refused.returncode == 3
    assert refused.stderr.splitlines()[0] == (
        f"Error: {repo}/alt-params.yaml: no stage of this pipeline reads this params file"
    )

    # Deleted or edited outputs are not trusted. As under `dvc repro`, DVC's run cache has these runs:
    # the model and the (uncached) metrics come back from the DVC cache, and nothing runs.
    model = (repo / "models/model.joblib").read_bytes()
    (repo / "models/model.joblib").unlink()
    (repo / "reports/metrics.json").write_text("{}\n")
    states, logs = run_b(repo, env)
    assert [states[name] for name in STAGES] == ["Cached", "Restored", "Restored"]
    assert "Stage train: not reusing its cached result, models/model.joblib changed or went missing" in logs
    assert "Stage 'train' is cached - skipping run, checked out its outputs from the DVC cache" in logs
    assert "Running stage" not in logs
    assert (repo / "models/model.joblib").read_bytes() == model
    assert json.loads((repo / "reports/metrics.json").read_text()) == expected

    # --force runs prepare although its cache is valid; a stage that keeps failing (mltoy checks every
    # section) is retried once, the stages below it are not run, and the exit code follows the flow run.
    params["train"]["C"] = -1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    failed = dvcflow("run-b", "--force", cwd=repo, env=env)
    assert failed.returncode == 1
    assert task_states(failed.stdout) == {"prepare": "Failed", "train": "NotRun", "evaluate": "NotRun"}
    assert "Stage prepare: --force, running it even if cached" in failed.stderr
    assert "train.C: input should be greater than 0" in failed.stderr  # the function's own message
    assert "Retry 1/1 will start 2 second(s) from now" in failed.stderr
    assert re.search(r"│ prepare\s+│ Failed\s+│\s+2 │", failed.stdout)
    # The summary says why in the function's own words, and that the retry failed the same way (issue 20).
    assert re.search(
        r"^prepare: Error: params\.yaml: train\.C: input should be greater than 0 .*"
        r"\(mltoy\.cli:main returned 1\) — the retry failed the same way$",
        failed.stdout,
        re.MULTILINE,
    ), failed.stdout
    assert "Task run encountered an exception" not in failed.stdout
    assert "evaluate: not run: upstream stage 'prepare' failed" in failed.stdout
    assert "finished in state Failed" in failed.stdout
    assert "Traceback" not in failed.stdout


@pytest.fixture
def bare_repo(tmp_path: Path) -> Path:
    """Just enough for run-b's pre-flight checks: `.dvc`, `dvc.yaml`, params, the raw data and its `.dvc`."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc/config").write_text("[core]\n    no_scm = true\n")
    shutil.copy2(PROJECT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(PROJECT / "params.yaml", repo / "params.yaml")
    (repo / "data/raw").mkdir(parents=True)
    (repo / "data/raw/iris.csv").write_text("sepal_length,sepal_width,petal_length,petal_width,species\n")
    shutil.copy2(PROJECT / "data/raw/iris.csv.dvc", repo / "data/raw/iris.csv.dvc")
    return repo


def _params_without(section: str) -> str:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    del params[section]
    return yaml.safe_dump(params)


@pytest.mark.parametrize(
    ("params_file", "content", "error"),
    [
        pytest.param("nope.yaml", None, "{repo}/nope.yaml: params file not found", id="missing-file"),
        pytest.param(
            "p.yaml",
            "split: {}\n",
            "{repo}/p.yaml: no stage of this pipeline reads this params file",
            id="unread",
        ),
        pytest.param(
            "params.yaml",
            _params_without("train"),
            "{repo}/params.yaml: missing key 'train'",
            id="missing-key",
        ),
        pytest.param(
            "params.yaml",
            "RAW-MISSING",
            "{repo}/data/raw/iris.csv: not found (stage data/raw/iris.csv.dvc needs it)",
            id="no-raw-data",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors_before_prefect_is_contacted(
    bare_repo: Path, tmp_path: Path, params_file: str, content: str | None, error: str, processes: Processes
) -> None:
    if content == "RAW-MISSING":
        (bare_repo / "data/raw/iris.csv").unlink()
    elif content is not None:
        (bare_repo / params_file).write_text(content)
    env = base_env(tmp_path)
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # nothing listens: contacting it would be another error
    result = processes.dvcflow(
        "run-b", "--repo", "repo", "--params", params_file, cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 3
    assert result.stderr.splitlines()[0] == "Error: " + error.format(repo=bare_repo)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
