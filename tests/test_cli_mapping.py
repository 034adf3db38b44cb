"""Every CLI option reaches the library call as the right keyword argument (the fast layer: no server, no
DVC). The runner functions are replaced by autospecced mocks, so a renamed or missing parameter fails here.

One row per option: command line -> the library function it must call, with which arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.metrics import MetricsSnapshot
from dvcflow.core.records import DataSync, FlowRunRecord
from dvcflow.core.selection import EVERYTHING, Selection
from dvcflow.core.settings import ServerConfig
from dvcflow.server import control
from dvcflow.services import pipeline

RUN_A = {
    "selection": Selection(),
    "sync": DataSync(),
    "retries": 1,
    "fail_once": False,
    "show_metrics": True,
    "ephemeral": False,
    "debug": False,
    "announce": mock.ANY,
}
PER_STAGE = {
    "selection": Selection(),
    "jobs": None,
    "keep_going": False,
    "retries": 1,
    "dask_address": None,
    "show_metrics": True,
    "sync": DataSync(),
    "ephemeral": False,
    "debug": False,
    "announce": mock.ANY,
}
RUN_B = {
    "params_path": None,
    "selection": EVERYTHING,
    "jobs": None,
    "keep_going": False,
    "retries": 1,
    "ephemeral": False,
    "debug": False,
    "announce": mock.ANY,
}
METRICS = {"rev": None, "runs": None, "params": False, "announce": mock.ANY}
DONE = FlowRunRecord("id", "name", "flow", "Completed", 0.0, (), None)

# (command line, runner function, positional repo, keyword arguments)
CASES: list[tuple[list[str], str, Path | None, dict[str, Any]]] = [
    (["run-a"], "run_option_a", None, RUN_A),
    (["run-a", "--repo", "r"], "run_option_a", Path("r"), RUN_A),
    (["run-a", "--fail-once"], "run_option_a", None, {**RUN_A, "fail_once": True}),
    (["run-a", "--no-show-metrics"], "run_option_a", None, {**RUN_A, "show_metrics": False}),
    (["run-a", "--ephemeral"], "run_option_a", None, {**RUN_A, "ephemeral": True}),
    (["--debug", "run-a"], "run_option_a", None, {**RUN_A, "debug": True}),
    (["run-a", "train", "eval"], "run_option_a", None, {**RUN_A, "selection": Selection(("train", "eval"))}),
    (
        ["run-a", "train", "-s", "-f"],
        "run_option_a",
        None,
        {**RUN_A, "selection": Selection(("train",), single_item=True, force=True)},
    ),
    (
        ["run-a", "--glob", "tr*", "--downstream", "--force"],
        "run_option_a",
        None,
        {**RUN_A, "selection": Selection(("tr*",), downstream=True, glob=True, force=True)},
    ),
    (["run-a", "--pull"], "run_option_a", None, {**RUN_A, "sync": DataSync(pull=True)}),
    (
        ["run-a", "--allow-missing", "--push"],
        "run_option_a",
        None,
        {**RUN_A, "sync": DataSync(allow_missing=True, push=True)},
    ),
    (["run-a", "--retries", "3"], "run_option_a", None, {**RUN_A, "retries": 3}),
    (["run-a", "--json"], "run_option_a", None, RUN_A),
    (["run-a", "--per-stage"], "run_per_stage", None, PER_STAGE),
    (["run-a", "--per-stage", "-j", "3"], "run_per_stage", None, {**PER_STAGE, "jobs": 3}),
    (["run-a", "--per-stage", "--jobs", "2"], "run_per_stage", None, {**PER_STAGE, "jobs": 2}),
    (["run-a", "--per-stage", "--keep-going"], "run_per_stage", None, {**PER_STAGE, "keep_going": True}),
    (["run-a", "--per-stage", "--retries", "0"], "run_per_stage", None, {**PER_STAGE, "retries": 0}),
    (
        ["run-a", "--per-stage", "--dask-address", "tcp://h:1"],
        "run_per_stage",
        None,
        {**PER_STAGE, "dask_address": "tcp://h:1"},
    ),
    (
        ["run-a", "--per-stage", "--no-show-metrics", "--ephemeral"],
        "run_per_stage",
        None,
        {**PER_STAGE, "show_metrics": False, "ephemeral": True},
    ),
    (
        ["run-a", "--per-stage", "train", "--downstream", "-f"],
        "run_per_stage",
        None,
        {**PER_STAGE, "selection": Selection(("train",), downstream=True, force=True)},
    ),
    (
        ["run-a", "--per-stage", "--dry-run", "--repo", "r"],
        "plan_stages",
        Path("r"),
        {"selection": EVERYTHING},
    ),
    (
        ["run-a", "--per-stage", "--dry-run", "train", "-s"],
        "plan_stages",
        None,
        {"selection": Selection(("train",), single_item=True)},
    ),
    (["run-b"], "run_option_b", None, RUN_B),
    (["run-b", "--params", "p.yaml"], "run_option_b", None, {**RUN_B, "params_path": Path("p.yaml")}),
    (["run-b", "--force"], "run_option_b", None, {**RUN_B, "selection": Selection(force=True)}),
    (
        ["run-b", "train", "-s", "-f"],
        "run_option_b",
        None,
        {**RUN_B, "selection": Selection(("train",), single_item=True, force=True)},
    ),
    (
        ["run-b", "t*", "--glob", "--downstream", "-j", "2", "--keep-going", "--retries", "0"],
        "run_option_b",
        None,
        {
            **RUN_B,
            "selection": Selection(("t*",), glob=True, downstream=True),
            "jobs": 2,
            "keep_going": True,
            "retries": 0,
        },
    ),
    (["run-b", "--ephemeral", "--repo", "r"], "run_option_b", Path("r"), {**RUN_B, "ephemeral": True}),
    (["plan", "--repo", "r"], "plan_stages", Path("r"), {"selection": EVERYTHING}),
    (["plan", "train", "--mermaid"], "plan_stages", None, {"selection": Selection(("train",))}),
    (["plan", "a", "b", "-s"], "plan_stages", None, {"selection": Selection(("a", "b"), single_item=True)}),
    (["metrics"], "metrics_view", None, METRICS),
    (["metrics", "--repo", "r"], "metrics_view", Path("r"), METRICS),
    (["metrics", "--diff"], "metrics_view", None, {**METRICS, "rev": "HEAD"}),
    (
        ["metrics", "--diff", "HEAD~2", "--params"],
        "metrics_view",
        None,
        {**METRICS, "rev": "HEAD~2", "params": True},
    ),
    (["metrics", "--history"], "metrics_view", None, {**METRICS, "runs": 10}),
    (["metrics", "--history", "5"], "metrics_view", None, {**METRICS, "runs": 5}),
]


def _returned(name: str) -> object:
    if name == "metrics_view":
        return MetricsSnapshot(())
    if name == "plan_stages":
        return mock.sentinel.plan
    return DONE


@pytest.mark.parametrize(("argv", "function", "repo", "kwargs"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_each_option_reaches_the_runner(
    argv: list[str], function: str, repo: Path | None, kwargs: dict[str, Any]
) -> None:
    with (
        mock.patch.object(pipeline, function, autospec=True, return_value=_returned(function)) as called,
        mock.patch("dvcflow.cli.render.plan.plan_view", autospec=True),
        mock.patch("dvcflow.cli.render.metrics.show", autospec=True),
    ):
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    called.assert_called_once_with(repo, **kwargs)


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
        CliRunner().invoke(app, argv)
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
