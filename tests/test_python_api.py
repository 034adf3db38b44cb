"""The Python API (`from dvcflow import Pipeline`): what `dvcflow/__init__.py` exports, the result and error
types, and real runs — the example flow (a subflow of the user's flow), a failure inside a flow, and a run
outside any flow (its own flow run, as `dvcflow run-a`) — against the session's Prefect server (the
`live_server` fixture makes those integration tests)."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import dvcflow
from dvcflow import DvcflowError, Pipeline, PipelineRunError, RunResult
from dvcflow.core.errors import ExitCode, NotADvcRepoError, UsageError
from dvcflow.core.metrics import Metric, MetricsSnapshot
from dvcflow.core.records import FlowRunRecord, StagesReport, TaskRunRecord
from tests.helpers import PROJECT, make_tiny_repo

if TYPE_CHECKING:
    from tests.conftest import LiveServer

EXAMPLE = PROJECT / "examples" / "nightly_flow.py"
METRICS = MetricsSnapshot((Metric("reports/metrics.json", "accuracy", 0.97),))


def _record(*tasks: TaskRunRecord, state: str = "Completed", **fields: Any) -> FlowRunRecord:
    return FlowRunRecord("run-id", "brave-otter", "flow", state, 3.0, tasks, "http://ui/run-id", **fields)


# --- the public names ----------------------------------------------------------------------------------


def test_the_public_api_is_what_init_exports() -> None:
    assert dvcflow.__all__ == [
        "DvcflowError",
        "Pipeline",
        "PipelineRunError",
        "Plan",
        "RunResult",
        "StageRun",
        "__version__",
    ]
    for name in dvcflow.__all__:
        assert getattr(dvcflow, name) is not None
    assert issubclass(PipelineRunError, DvcflowError)
    assert set(dvcflow.__all__) <= set(dir(dvcflow))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dvcflow.Nope  # noqa: B018
    assert (PROJECT / "src" / "dvcflow" / "py.typed").is_file()  # typed (PEP 561), and packaged:
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["dvcflow"]


def test_importing_dvcflow_imports_nothing_more() -> None:
    """`dvcflow --help` imports the package: its names are imported on first use only (the CLI tests check
    that `--help` imports neither Prefect nor DVC)."""
    import ast

    tree = ast.parse((PROJECT / "src" / "dvcflow" / "__init__.py").read_text(encoding="utf-8"))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert imported == ["__future__", "typing"]


def test_constructing_a_pipeline_touches_nothing(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path / "not-yet")
    assert pipeline.repo == tmp_path / "not-yet"
    assert repr(pipeline) == f"Pipeline({str(tmp_path / 'not-yet')!r})"
    with pytest.raises(NotADvcRepoError):
        pipeline.root  # noqa: B018


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jobs": 2}, "jobs needs per_stage=True or cached_dag=True"),
        ({"keep_going": True}, "keep_going needs per_stage=True or cached_dag=True"),
        ({"dask_address": "tcp://h:1"}, "dask_address needs per_stage=True or cached_dag=True"),
        ({"params_file": "p.yaml", "per_stage": True}, "params_file needs cached_dag=True"),
        ({"per_stage": True, "fail_once": True}, "fail_once fails the single `dvc repro` task"),
        ({"cached_dag": True, "push": True}, "push does not apply with cached_dag=True"),
        ({"per_stage": True, "cached_dag": True}, "per_stage and cached_dag exclude each other"),
        ({"downstream": True}, "--downstream needs a target"),
    ],
    ids=[
        "jobs",
        "keep-going",
        "dask",
        "params-file",
        "fail-once",
        "cached-dag-push",
        "both-ways",
        "selection",
    ],
)
def test_options_the_chosen_run_would_ignore_are_refused_before_anything_runs(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        Pipeline(tmp_path).run(**options)


# --- the result and the error --------------------------------------------------------------------------


def test_a_per_stage_result_has_one_stage_per_stage_task() -> None:
    record = _record(
        TaskRunRecord("prepare", "UpToDate", 1, 0.1),
        TaskRunRecord("train", "Completed", 2, 4.0),
        TaskRunRecord("evaluate", "Cached", 1, 0.2),
        TaskRunRecord("dvc push", "Completed", 1, 1.0),
        TaskRunRecord("metrics summary", "Completed", 1, 0.1),
        metrics=METRICS,
    )
    result = RunResult.from_record(record)
    assert list(result.stages) == ["prepare", "train", "evaluate"]
    assert (result.stages["train"].state, result.stages["train"].attempts) == ("Completed", 2)
    assert (result.ran, result.up_to_date, result.failed) == (("train",), ("prepare", "evaluate"), ())
    assert result.metrics == {"accuracy": 0.97}
    assert result.completed and result.exit_code is ExitCode.OK
    assert len(result.tasks) == 5 and result.record is record
    assert str(result) == "flow run 'brave-otter' Completed in 3.0s: 1 ran, 2 up to date"


def test_a_dvc_repro_result_reads_the_stages_from_dvc_and_names_the_failed_one() -> None:
    message = "`dvc repro` failed: failed to reproduce 'train': failed to run: python t.py, exited with 1"
    record = _record(
        TaskRunRecord("dvc repro", "Failed", 2, 5.0, message),
        state="Failed",
        message=message,
        stages=StagesReport(ran=("prepare", "train"), skipped=("data.dvc",), restored=("split",)),
    )
    result = RunResult.from_record(record)
    assert {name: stage.state for name, stage in result.stages.items()} == {
        "prepare": "Completed",
        "train": "Failed",
        "split": "Completed",
        "data.dvc": "UpToDate",
    }
    assert result.stages["train"].message == message and result.stages["train"].attempts is None
    assert result.failed == ("train",) and result.metrics == {}
    assert str(result).endswith(
        "1 failed (`dvc repro` failed: failed to reproduce 'train': failed to run: "
        "python t.py, exited with 1)"
    )


@pytest.mark.parametrize(("state", "code"), [("Failed", 1), ("Crashed", 1), ("Cancelled", 130)])
def test_the_error_carries_the_result_its_exit_code_and_survives_pickling(state: str, code: int) -> None:
    result = RunResult.from_record(_record(state=state, message="1 stage(s) failed: train\nmore"))
    error = PipelineRunError(result)
    assert error.result is result and error.exit_code == code
    assert error.message == f"flow run 'brave-otter' ended {state}: 1 stage(s) failed: train"
    assert error.hint == "see http://ui/run-id"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.result, copy.exit_code) == (PipelineRunError, result, code)


def test_the_tasks_that_are_not_stages_are_named_as_the_flows_name_them() -> None:
    from dvcflow.core import results
    from dvcflow.flows.repro import dvc_push_task, dvc_repro_task, metrics_summary_task

    assert {dvc_repro_task.name, dvc_push_task.name, metrics_summary_task.name} == results.NON_STAGE_TASKS


# --- real processes, a real server ---------------------------------------------------------------------


def _api_get(api_url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{api_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def _python(
    code_or_file: str | Path, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    command = [str(code_or_file)] if isinstance(code_or_file, Path) else ["-c", code_or_file]
    return subprocess.run(
        [sys.executable, *command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_example_flow_runs_the_pipeline_as_one_subflow(
    live_server: LiveServer, pipeline_repo: Path, client_env: dict[str, str]
) -> None:
    env = {**client_env, "PREFECT_API_URL": live_server.api_url}  # the user's flow runs on this server
    done = _python(EXAMPLE, str(pipeline_repo), env=env, cwd=pipeline_repo.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"flow run '[\w-]+' Completed in [\d.]+s: 4 ran, 0 up to date", lines[0]), lines
    assert lines[2:6] == [
        "  data/raw/iris.csv.dvc: Completed",
        "  prepare: Completed",
        "  train: Completed",
        "  evaluate: Completed",
    ]
    assert re.fullmatch(r"  metrics: \{'accuracy': [\d.]+, 'f1_macro': [\d.]+\}", lines[6]), lines
    assert "Plan:\n4 stages in 4 waves; 4 would run, 0 up to date\nwave 1:\n" in done.stdout + done.stderr

    # In the API: dvcflow's flow run is a subflow of the user's `nightly` run, tagged as any dvcflow run.
    subflow_id = lines[1].removeprefix("  subflow run: ")
    subflow = _api_get(live_server.api_url, f"/flow_runs/{subflow_id}")
    assert subflow["state_type"] == "COMPLETED"
    assert any(tag.startswith("dvcflow-repo:") for tag in subflow["tags"])
    parent_task = _api_get(live_server.api_url, f"/task_runs/{subflow['parent_task_run_id']}")
    parent = _api_get(live_server.api_url, f"/flow_runs/{parent_task['flow_run_id']}")
    assert _api_get(live_server.api_url, f"/flows/{parent['flow_id']}")["name"] == "nightly"
    assert parent["state_type"] == "COMPLETED"


FAILING_STAGES = """\
stages:
  ok:
    cmd: python -c "open('ok.txt', 'w').write('ok')"
    outs: [ok.txt]
  broken:
    cmd: python -c "import sys; sys.exit('broken on purpose')"
    deps: [ok.txt]
    outs: [never.txt]
  after:
    cmd: python -c "open('after.txt', 'w').write('after')"
    deps: [never.txt]
    outs: [after.txt]
"""

CATCHING_FLOW = """\
import json, sys
from prefect import flow
from dvcflow import Pipeline, PipelineRunError

@flow(name="catches")
def catches(repo: str) -> dict:
    try:
        Pipeline(repo).run(per_stage=True, retries=1)
    except PipelineRunError as failed:
        result = failed.result
        return {
            "exit_code": int(failed.exit_code),
            "message": failed.message,
            "state": result.state,
            "stages": {name: [stage.state, stage.attempts] for name, stage in result.stages.items()},
            "failed": list(result.failed),
            "ran": list(result.ran),
        }
    return {}

print(json.dumps(catches(sys.argv[1])))
"""


def test_a_failed_run_raises_pipeline_run_error_carrying_the_result(
    live_server: LiveServer, tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_tiny_repo(tmp_path / "failing", client_env, stages=FAILING_STAGES)
    env = {**client_env, "PREFECT_API_URL": live_server.api_url}
    done = _python(CATCHING_FLOW, str(repo), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    caught = json.loads(done.stdout.splitlines()[-1])
    assert caught == {
        "exit_code": 1,
        "message": caught["message"],
        "state": "Failed",
        "stages": {"ok": ["Completed", 1], "broken": ["Failed", 2], "after": ["NotRun", 1]},
        "failed": ["broken"],
        "ran": ["ok"],
    }
    assert re.fullmatch(
        r"flow run '[\w-]+' ended Failed: 1 stage\(s\) failed: broken; 1 not run: after", caught["message"]
    )


OUTSIDE_A_FLOW = """\
import json, sys
from dvcflow import Pipeline

result = Pipeline(sys.argv[1], announce=lambda note: print("note:", note, file=sys.stderr)).run()
print(json.dumps({
    "flow_run_id": result.flow_run_id,
    "flow": result.flow_name,
    "stages": {name: stage.state for name, stage in result.stages.items()},
    "metrics": sorted(result.metrics),
    "ui_link": result.ui_link,
}))
"""


def test_outside_a_flow_it_starts_its_own_flow_run_as_run_a_does(
    live_server: LiveServer, pipeline_repo: Path, client_env: dict[str, str]
) -> None:
    """No PREFECT_API_URL: dvcflow finds its local server from its settings, as `dvcflow run-a` does."""
    done = _python(OUTSIDE_A_FLOW, str(pipeline_repo), env=client_env, cwd=pipeline_repo.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["flow"] == "Prefect operates DVC pipeline"
    assert result["stages"] == {"prepare": "Completed", "train": "Completed", "evaluate": "Completed"}
    assert result["metrics"] == ["accuracy", "f1_macro"]
    assert result["ui_link"] == f"{live_server.url}/runs/flow-run/{result['flow_run_id']}"
    assert f"note: Prefect API: {live_server.api_url} (dvcflow local server)" in done.stderr
    flow_run = _api_get(live_server.api_url, f"/flow_runs/{result['flow_run_id']}")
    assert flow_run["parent_task_run_id"] is None and flow_run["state_type"] == "COMPLETED"
    assert any(tag.startswith("dvcflow-pid:") for tag in flow_run["tags"])
