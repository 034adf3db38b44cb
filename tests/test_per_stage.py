"""`dvcflow run-a --per-stage` end to end: generated DVC pipelines in temporary repos, a real Prefect server
(the integration tests), and its flags through `CliRunner` (the rest).

The stages write when they started and ended, so concurrency is read from their own timestamps.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment: import it before any
# CliRunner swaps sys.stdout for a buffer that it closes afterwards.
import dvc.logger as _dvc_logger  # noqa: F401
import pytest
import yaml
from typer.testing import CliRunner

from dvcflow.cli.app import app
from tests.helpers import dvc, dvcflow, make_wide_repo


def summary(output: str) -> dict[str, list[str]]:
    """Task name → [state, attempts, duration] from the run summary table."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) == 4 and cells[0] != "Task":
            rows[cells[0]] = cells[1:]
    return rows


def states(output: str) -> dict[str, str]:
    return {name: cells[0] for name, cells in summary(output).items() if name != "metrics summary"}


def interval(repo: Path, name: str) -> tuple[float, float]:
    data = json.loads((repo / "out" / f"branch-{name}.json").read_text())
    return data["start"], data["end"]


def status_clean(repo: Path, env: dict[str, str]) -> bool:
    result = dvc("status", "--json", cwd=repo, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) == {}


def test_wide_pipeline_runs_branches_at_once_retries_the_flaky_join_then_has_nothing_to_do(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_wide_repo(tmp_path / "wide", client_env, branches=3, sleep=2.5)
    (repo / "flaky-join").touch()

    dry = CliRunner().invoke(app, ["run-a", "--per-stage", "--dry-run", "--repo", str(repo)], env=client_env)
    assert dry.exit_code == 0, dry.output
    assert "4 stages in 2 waves: 4 would run, 0 up to date." in dry.output
    assert "Prefect API" not in dry.output  # a dry run never contacts Prefect
    assert not (repo / "dvc.lock").exists()

    first = dvcflow("run-a", "--per-stage", "--jobs", "3", cwd=repo, env=client_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert states(first.stdout) == dict.fromkeys(["branch@0", "branch@1", "branch@2", "join"], "Completed")
    assert summary(first.stdout)["join"][1] == "2"  # failed once, retried
    assert "join: failing this once" in first.stderr
    assert "Retry 1/1 will start 2 second(s) from now" in first.stderr
    assert "Task run 'branch@1' - Reproducing branch@1 (" in first.stderr
    assert re.search(r"Task run 'branch@1' - > python branch\.py 1 2\.5", first.stderr)
    spans = [interval(repo, str(i)) for i in range(3)]
    assert max(start for start, _ in spans) < min(end for _, end in spans), (
        f"branches did not overlap: {spans}"
    )
    joined = json.loads((repo / "out/joined.json").read_text())
    assert joined["start"] > max(end for _, end in spans)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"branch@0", "branch@1", "branch@2", "join"}  # no lost lock update
    assert status_clean(repo, client_env)

    again = dvcflow("run-a", "--per-stage", cwd=repo, env=client_env)
    assert again.returncode == 0, again.stderr
    assert set(states(again.stdout).values()) == {"UpToDate"}
    assert "0 ran, 4 up to date, 0 failed, 0 not run" in again.stderr
    assert "Running: dvc" not in again.stderr  # no DVC process per stage when nothing changed

    plan = CliRunner().invoke(app, ["plan", "--json", "--repo", str(repo)], env=client_env)
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.output)["waves"] == [["branch@0", "branch@1", "branch@2"], ["join"]]
    assert json.loads(plan.output)["would_run"] == []


def test_failed_branch_stops_the_run_then_keep_going_resumes_and_finishes_the_other_branches(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_wide_repo(tmp_path / "failing", client_env, branches=3, sleep=0)
    (repo / "fail-1").touch()

    stopped = dvcflow("run-a", "--per-stage", "--jobs", "1", "--retries", "0", cwd=repo, env=client_env)
    assert stopped.returncode == 1
    assert states(stopped.stdout) == {
        "branch@0": "Completed",
        "branch@1": "Failed",
        "branch@2": "NotRun",
        "join": "NotRun",
    }
    assert "branch@2: not run: stage 'branch@1' failed and --keep-going is off" in stopped.stdout
    assert "join: not run: upstream stage 'branch@1' failed" in stopped.stdout
    # The failed stage's summary line: its own last line and its exit code (issue 20).
    assert "branch@1: branch 1 was told to fail (exit code 1)" in stopped.stdout.splitlines()
    assert "finished in state Failed" in stopped.stdout
    assert not (repo / "out/branch-2.json").exists()

    resumed = dvcflow("run-a", "--per-stage", "--keep-going", "--retries", "0", cwd=repo, env=client_env)
    assert resumed.returncode == 1
    assert states(resumed.stdout) == {
        "branch@0": "UpToDate",  # done by the first run: not reproduced again
        "branch@1": "Failed",
        "branch@2": "Completed",
        "join": "NotRun",
    }
    assert "Reproducing branch@0" not in resumed.stderr
    assert "join: not run: upstream stage 'branch@1' failed" in resumed.stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"branch@0", "branch@2"}


def test_stages_run_on_a_dask_cluster(
    tmp_path: Path, client_env: dict[str, str], dask_scheduler: str
) -> None:
    repo = make_wide_repo(tmp_path / "dask", client_env, branches=2, sleep=1.5)
    result = dvcflow("run-a", "--per-stage", "--dask-address", dask_scheduler, cwd=repo, env=client_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert states(result.stdout) == dict.fromkeys(["branch@0", "branch@1", "join"], "Completed")
    spans = [interval(repo, str(i)) for i in range(2)]
    assert max(start for start, _ in spans) < min(end for _, end in spans), (
        f"branches did not overlap: {spans}"
    )
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"branch@0", "branch@1", "join"}  # recorded by DVC from the workers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "2"], "Error: --jobs needs --per-stage"),
        (["--keep-going"], "Error: --keep-going needs --per-stage"),
        (["--dry-run"], "Error: --dry-run needs --per-stage"),
        (
            ["--per-stage", "--fail-once"],
            "Error: --fail-once fails the single `dvc repro` task; with --per-stage use --retries",
        ),
        (["--per-stage", "--jobs", "0"], "Error: --jobs must be at least 1, got 0"),
        (
            ["--per-stage", "--dask-address", "127.0.0.1:8786"],
            "Error: --dask-address must look like tcp://HOST:PORT, got '127.0.0.1:8786'",
        ),
    ],
    ids=["jobs", "keep-going", "dry-run", "fail-once", "jobs-zero", "dask-no-scheme"],
)
def test_contradictory_flags_are_one_line_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["run-a", *args, "--repo", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[0] == message


def test_dask_address_without_a_scheduler_is_a_one_line_error(tmp_path: Path, closed_port: int) -> None:
    address = f"tcp://127.0.0.1:{closed_port}"
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["run-a", "--per-stage", "--dask-address", address, "--repo", str(tmp_path)]
    )
    assert result.exit_code == 3
    assert result.output.startswith(f"Error: no Dask scheduler answers at {address} (")
    assert time.monotonic() - started < 5
