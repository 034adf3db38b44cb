"""`dvcflow run-a` end to end: real `dvc repro` in a temporary git+DVC repo, real Prefect server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.helpers import dvc, dvcflow, make_tiny_repo

STAGES = ("prepare", "train", "evaluate")


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def skipped_stages(output: str) -> list[str]:
    return re.findall(r"Stage '(\w+)' didn't change, skipping", output)


def summary_row(output: str, task: str) -> list[str]:
    """The cells of one task's row in the run summary table."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if cells and cells[0] == task:
            return cells
    raise AssertionError(f"no summary row for {task!r} in:\n{output}")


def test_the_tour_first_run_no_change_retry_and_a_changed_param(
    pipeline_repo: Path, client_env: dict[str, str]
) -> None:
    """The guided tour in one repository: each step depends on the state the previous one left."""
    first = dvcflow("run-a", cwd=pipeline_repo, env=client_env)
    assert first.returncode == 0, first.stderr
    logs = first.stderr
    assert "Beginning flow run" in logs and "'Prefect operates DVC pipeline'" in logs
    assert "Running: dvc repro" in logs
    assert f"CWD: {pipeline_repo}" in logs
    assert ran_stages(logs) == list(STAGES)
    metrics = json.loads((pipeline_repo / "reports/metrics.json").read_text())
    assert set(metrics) == {"accuracy", "f1_macro"}
    assert 0.5 < metrics["accuracy"] <= 1.0
    logged = re.search(r"Metrics: (\{.*\})", logs)
    assert logged is not None and json.loads(logged.group(1)) == metrics
    assert summary_row(first.stdout, "dvc repro")[1:3] == ["Completed", "1"]
    assert summary_row(first.stdout, "metrics summary")[1] == "Completed"
    assert "finished in state Completed" in first.stdout
    assert re.search(
        r"View it in the Prefect UI: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}", first.stdout
    )

    # Nothing changed: DVC skips every stage; --fail-once fails the task once and Prefect retries it.
    retried = dvcflow(
        "run-a", "--fail-once", "--repo", str(pipeline_repo), cwd=pipeline_repo.parent, env=client_env
    )
    assert retried.returncode == 0, retried.stderr
    assert "RuntimeError('Intentional one-time failure to demonstrate retries.')" in retried.stderr
    assert "Retry 1/1 will start 2 second(s) from now" in retried.stderr
    assert summary_row(retried.stdout, "dvc repro")[1:3] == ["Completed", "2"]
    assert ran_stages(retried.stderr) == []
    assert skipped_stages(retried.stderr) == list(STAGES)
    assert "Data and pipelines are up to date." in retried.stderr
    status = dvc("status", "--json", cwd=pipeline_repo, env=client_env)
    assert json.loads(status.stdout) == {}

    # A changed split re-runs prepare, train and evaluate.
    params_file = pipeline_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["split"]["test_size"] = 0.3
    params_file.write_text(yaml.safe_dump(params))
    rerun = dvcflow("run-a", "--no-show-metrics", cwd=pipeline_repo, env=client_env)
    assert rerun.returncode == 0, rerun.stderr
    assert ran_stages(rerun.stderr) == list(STAGES)
    assert "metrics summary" not in rerun.stdout
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["split"]["test_size"] == 0.3


BROKEN = """stages:
  fine:
    cmd: python -c "open('fine.txt', 'w').write('ok')"
    outs: [fine.txt]
  broken:
    cmd: python -c "import sys; sys.exit('model exploded')"
    deps: [fine.txt]
    outs: [never.txt]
"""


def test_broken_stage_fails_the_run_with_dvcs_error(tmp_path: Path, client_env: dict[str, str]) -> None:
    repo = make_tiny_repo(tmp_path / "repo", client_env, BROKEN)
    result = dvcflow("run-a", cwd=repo, env=client_env)
    assert result.returncode == 1
    assert "model exploded" in result.stderr
    # The summary: what DVC did with each stage, and the failed one's own last line (issue 20).
    lines = result.stdout.splitlines()
    assert "Stages: ran fine · failed broken" in lines
    reason = "failed to reproduce 'broken': model exploded (exit code 1) — the retry failed the same way"
    assert f"dvc repro: {reason}" in lines
    assert "Task run encountered an exception" not in result.stdout
    assert summary_row(result.stdout, "dvc repro")[1:3] == ["Failed", "2"]
    assert "finished in state Failed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"fine"}  # the failed stage recorded nothing


def test_a_first_stage_that_fails_is_named_failed_not_none_visited_nor_ran(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    stages = "stages:\n  fill:\n    cmd: python -c \"import sys; sys.exit('no fill today')\"\n    outs: [f]\n"
    repo = make_tiny_repo(tmp_path / "repo", client_env, stages)
    result = dvcflow("run-a", "--retries", "0", "--json", cwd=repo, env=client_env)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["stages"] == {"ran": [], "skipped": [], "pulled": [], "restored": [], "failed": ["fill"]}
    reason = "failed to reproduce 'fill': no fill today (exit code 1)"
    assert data["tasks"][0]["message"] == data["flow_run"]["message"] == reason


def test_not_a_dvc_repo_is_a_one_line_error(tmp_path: Path, client_env: dict[str, str]) -> None:
    result = dvcflow("run-a", cwd=tmp_path, env=client_env)
    assert result.returncode == 3
    assert result.stderr.splitlines()[0] == (
        f"Error: {tmp_path} is not inside a DVC repository (no .dvc directory here or above)"
    )
    assert "Traceback" not in result.stderr
