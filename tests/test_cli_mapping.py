"""Every CLI option reaches the library call as the right keyword argument (the fast layer: no server, no
DVC). `dvcflow.services.pipeline.Pipeline` is replaced by an autospecced mock, so a renamed or missing
parameter of the constructor or of a method fails here.

One row per option: command line -> the `Pipeline(...)` it must construct and the one method it must call,
with which arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.metrics import MetricsSnapshot
from dvcflow.core.records import FlowRunRecord
from dvcflow.core.results import PipelineRunError, RunResult
from dvcflow.core.settings import ServerConfig
from dvcflow.engine.trials import SweepReport
from dvcflow.server import control
from dvcflow.services import pipeline

# How every run command constructs its Pipeline (`--ephemeral` and `--debug` change it).
HOSTED = {"ephemeral": False, "announce": mock.ANY, "tracebacks": False}
SELECT = {"single_item": False, "downstream": False, "glob": False, "force": False}
RUN_A = {
    **SELECT,
    "per_stage": False,
    "jobs": None,
    "keep_going": False,
    "retries": 1,
    "pull": False,
    "allow_missing": False,
    "push": False,
    "dask_address": None,
    "resources": None,
    "show_metrics": True,
    "fail_once": False,
}
RUN_B = {
    **SELECT,
    "cached_dag": True,
    "params_file": None,
    "jobs": None,
    "keep_going": False,
    "retries": 1,
    "resources": None,
    "dask_address": None,
}
PER_STAGE = {**RUN_A, "per_stage": True}
SWEEP = {
    "jobs": None,
    "metric": None,
    "maximize": True,
    "per_stage": False,
    "save": True,
    "max_trials": 100,
    "dask_address": None,
    "search": None,
    "trials": None,
    "study": None,
    "prune": None,
    "seed": None,
    "apply_best": False,
    "resources": None,
    "shared_disk": None,
    "on_progress": mock.ANY,
}
DONE = FlowRunRecord("id", "name", "flow", "Completed", 0.0, (), None)


@dataclass(frozen=True)
class Call:
    """`Pipeline(repo, **pipeline).<method>(*args, **kwargs)`."""

    method: str
    args: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    repo: Path | None = None
    pipeline: dict[str, Any] = field(default_factory=lambda: HOSTED)


def run(*targets: str, repo: Path | None = None, hosted: dict[str, Any] = HOSTED, **kwargs: Any) -> Call:
    return Call("run", targets, {**RUN_A, **kwargs}, repo, hosted)


def run_b(*targets: str, repo: Path | None = None, hosted: dict[str, Any] = HOSTED, **kwargs: Any) -> Call:
    return Call("run", targets, {**RUN_B, **kwargs}, repo, hosted)


def plan(
    *targets: str, repo: Path | None = None, hosted: dict[str, Any] | None = None, **kwargs: Any
) -> Call:
    return Call("plan", targets, {**SELECT, **kwargs}, repo, HOSTED if hosted is None else hosted)


def metrics(method: str, *args: Any, repo: Path | None = None, **kwargs: Any) -> Call:
    return Call(method, args, kwargs, repo, {"announce": mock.ANY})


def sweep(*params: str, hosted: dict[str, Any] = HOSTED, **kwargs: Any) -> Call:
    return Call("sweep", params, {**SWEEP, **kwargs}, None, hosted)


CASES: list[tuple[list[str], Call]] = [
    (["run-a"], run()),
    (["run-a", "--repo", "r"], run(repo=Path("r"))),
    (["run-a", "--fail-once"], run(fail_once=True)),
    (["run-a", "--no-show-metrics"], run(show_metrics=False)),
    (["run-a", "--ephemeral"], run(hosted={**HOSTED, "ephemeral": True})),
    (["--debug", "run-a"], run(hosted={**HOSTED, "tracebacks": True})),
    (["run-a", "train", "eval"], run("train", "eval")),
    (["run-a", "train", "-s", "-f"], run("train", single_item=True, force=True)),
    (
        ["run-a", "--glob", "tr*", "--downstream", "--force"],
        run("tr*", downstream=True, glob=True, force=True),
    ),
    (["run-a", "--pull"], run(pull=True)),
    (["run-a", "--allow-missing", "--push"], run(allow_missing=True, push=True)),
    (["run-a", "--retries", "3"], run(retries=3)),
    (["run-a", "--json"], run()),
    (["run-a", "--per-stage"], run(per_stage=True)),
    (["run-a", "--per-stage", "-j", "3"], run(per_stage=True, jobs=3)),
    (["run-a", "--per-stage", "--jobs", "2"], run(per_stage=True, jobs=2)),
    (["run-a", "--per-stage", "--keep-going"], run(per_stage=True, keep_going=True)),
    (["run-a", "--per-stage", "--retries", "0"], run(per_stage=True, retries=0)),
    (["run-a", "--per-stage", "--dask-address", "tcp://h:1"], run(per_stage=True, dask_address="tcp://h:1")),
    (
        ["run-a", "--per-stage", "--no-show-metrics", "--ephemeral"],
        run(per_stage=True, show_metrics=False, hosted={**HOSTED, "ephemeral": True}),
    ),
    (
        ["run-a", "--per-stage", "train", "--downstream", "-f"],
        run("train", per_stage=True, downstream=True, force=True),
    ),
    (["run-a", "--per-stage", "--pull", "--push"], run(per_stage=True, pull=True, push=True)),
    (
        ["run-a", "--per-stage", "--resource", "gpu=2", "--resource", "mem_gb=32"],
        run(per_stage=True, resources={"gpu": 2, "mem_gb": 32}),
    ),
    (["run-a", "--per-stage", "--dry-run", "--repo", "r"], plan(repo=Path("r"))),
    (["run-a", "--per-stage", "--dry-run", "train", "-s"], plan("train", single_item=True)),
    (["run-b"], run_b()),
    (["run-b", "--params", "p.yaml"], run_b(params_file=Path("p.yaml"))),
    (["run-b", "--force"], run_b(force=True)),
    (["run-b", "--resource", "GPU=1"], run_b(resources={"gpu": 1})),
    (
        ["run-b", "--dask-address", "tcp://h:1", "--no-shared-disk"],
        run_b(dask_address="tcp://h:1", shared_disk=False),
    ),
    (["run-b", "train", "-s", "-f"], run_b("train", single_item=True, force=True)),
    (
        ["run-b", "t*", "--glob", "--downstream", "-j", "2", "--keep-going", "--retries", "0"],
        run_b("t*", glob=True, downstream=True, jobs=2, keep_going=True, retries=0),
    ),
    (["run-b", "--ephemeral", "--repo", "r"], run_b(repo=Path("r"), hosted={**HOSTED, "ephemeral": True})),
    (["--debug", "run-b"], run_b(hosted={**HOSTED, "tracebacks": True})),
    (["plan", "--repo", "r"], plan(repo=Path("r"), hosted={})),
    (["plan", "train", "--mermaid"], plan("train", hosted={})),
    (["plan", "a", "b", "-s"], plan("a", "b", single_item=True, hosted={})),
    (
        ["plan", "t*", "--glob", "--downstream", "-f"],
        plan("t*", glob=True, downstream=True, force=True, hosted={}),
    ),
    (["metrics"], metrics("metrics")),
    (["metrics", "--repo", "r"], metrics("metrics", repo=Path("r"))),
    (["metrics", "--diff"], metrics("metrics_diff", "HEAD", params=False)),
    (["metrics", "--diff", "HEAD~2", "--params"], metrics("metrics_diff", "HEAD~2", params=True)),
    (["metrics", "--history"], metrics("metrics_history", 10)),
    (["metrics", "--history", "5", "--repo", "r"], metrics("metrics_history", 5, repo=Path("r"))),
    (["sweep", "-S", "train.C=1,2"], sweep("train.C=1,2")),
    (
        ["sweep", "-S", "a=1,2", "-S", "b=3", "-j", "2", "--metric", "acc", "--minimize", "--per-stage"],
        sweep("a=1,2", "b=3", jobs=2, metric="acc", maximize=False, per_stage=True),
    ),
    (
        [
            "sweep",
            "-S",
            "a=1",
            "--no-save",
            "--max-trials",
            "5",
            "--dask-address",
            "tcp://h:1",
            "--no-shared-disk",
            "--ephemeral",
        ],
        sweep(
            "a=1",
            save=False,
            max_trials=5,
            dask_address="tcp://h:1",
            shared_disk=False,
            hosted={**HOSTED, "ephemeral": True},
        ),
    ),
    (["--debug", "sweep", "-S", "a=1"], sweep("a=1", hosted={**HOSTED, "tracebacks": True})),
    (["sweep", "-S", "a=1,2", "--resource", "GPU=2"], sweep("a=1,2", resources={"gpu": 2})),
    (
        [
            "sweep",
            "-S",
            "a=interval(0,1)",
            "--search",
            "tpe",
            "--trials",
            "8",
            "--study",
            "s",
            "--prune",
            "median",
            "--seed",
            "3",
            "--apply-best",
            "--metric",
            "m",
            "--minimize",
        ],
        sweep(
            "a=interval(0,1)",
            search="tpe",
            trials=8,
            study="s",
            prune="median",
            seed=3,
            apply_best=True,
            metric="m",
            maximize=False,
        ),
    ),
]


@pytest.fixture
def library() -> Iterator[Any]:
    """`Pipeline`, autospecced: its methods return values the renderers accept."""
    with mock.patch.object(pipeline, "Pipeline", autospec=True) as cls:
        instance = cls.return_value
        instance.run.return_value = RunResult.from_record(DONE)
        instance.plan.return_value = mock.sentinel.plan
        for method in ("metrics", "metrics_diff", "metrics_history"):
            getattr(instance, method).return_value = MetricsSnapshot(())
        instance.sweep.return_value = SweepReport(DONE, (), (), None, True, None, True)
        yield cls


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_each_option_reaches_the_library(library: Any, argv: list[str], expected: Call) -> None:
    with (
        mock.patch("dvcflow.cli.render.plan.plan_view", autospec=True),
        mock.patch("dvcflow.cli.render.metrics.show", autospec=True),
        mock.patch("dvcflow.cli.render.sweep.sweep_summary", autospec=True),
    ):
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    library.assert_called_once_with(expected.repo, **expected.pipeline)
    called = getattr(library.return_value, expected.method)
    called.assert_called_once_with(*expected.args, **expected.kwargs)


def test_a_failed_run_is_summarised_and_exits_1(library: Any) -> None:
    """`PipelineRunError` is how the library says the run failed; the CLI shows its result all the same."""
    failed = FlowRunRecord("id", "nimble-fox", "flow", "Failed", 1.0, (), None, message="1 stage(s) failed")
    library.return_value.run.side_effect = PipelineRunError(RunResult.from_record(failed))
    result = CliRunner().invoke(app, ["run-a", "--per-stage"])
    assert result.exit_code == 1
    assert "Flow run 'nimble-fox' finished in state Failed after 1.00s." in result.stdout
    assert "1 stage(s) failed" in result.stdout


SERVER = ServerConfig()

# (command line, function in dvcflow.server.control, the configuration it must receive)
SERVER_CASES: list[tuple[list[str], str, ServerConfig]] = [
    (["server", "status"], "status", SERVER),
    (["server", "status", "--port", "4999"], "status", ServerConfig(port=4999)),
    (["server", "stop", "--host", "localhost"], "stop", ServerConfig(host="localhost")),
    (["server", "stop", "--home", "h"], "stop", ServerConfig(home=Path("h"))),
    (
        ["server", "start", "--database-url", "sqlite+aiosqlite:///x.db", "--auth", "u:p"],
        "start",
        ServerConfig(database_url="sqlite+aiosqlite:///x.db", auth="u:p"),
    ),
]


@pytest.mark.parametrize(
    ("argv", "function", "config"), SERVER_CASES, ids=[" ".join(c[0]) for c in SERVER_CASES]
)
def test_each_server_option_reaches_the_configuration(
    argv: list[str], function: str, config: ServerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no pyproject.toml here: defaults, then flags
    for name in ("DVCFLOW_HOST", "DVCFLOW_PORT", "DVCFLOW_HOME", "DVCFLOW_DATABASE_URL", "DVCFLOW_AUTH"):
        monkeypatch.delenv(name, raising=False)
    with (
        mock.patch.object(control, function, autospec=True) as called,
        mock.patch("dvcflow.cli.render.server.server_status", autospec=True),
    ):
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert called.call_args.args[0] == config
    if function == "start":
        assert called.call_args.kwargs == {"timeout": 90.0}


# (command line, the keyword arguments `dvcflow.services.deploy.trigger` must receive after the name)
TRIGGER = {"wait": False, "timeout": 3600.0, "announce": mock.ANY}
TRIGGER_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["trigger", "nightly"], TRIGGER),
    (["trigger", "nightly", "--wait"], {**TRIGGER, "wait": True}),
    (["trigger", "nightly", "--wait", "--timeout", "90"], {**TRIGGER, "wait": True, "timeout": 90.0}),
]


@pytest.mark.parametrize(("argv", "kwargs"), TRIGGER_CASES, ids=[" ".join(c[0]) for c in TRIGGER_CASES])
def test_each_trigger_option_reaches_the_library(argv: list[str], kwargs: dict[str, Any]) -> None:
    from dvcflow.services import deploy
    from dvcflow.services.deploy import TriggeredRun

    done = TriggeredRun("id", "run", "dvcflow pipeline/nightly", "Completed", None)
    with (
        mock.patch("dvcflow.dvc.repository.find_repo_root", autospec=True, return_value=Path(".")),
        mock.patch.object(deploy, "connect_lasting", autospec=True),
        mock.patch.object(deploy, "trigger", autospec=True, return_value=done) as called,
    ):
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    called.assert_called_once_with("nightly", **kwargs)
