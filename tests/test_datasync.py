"""Our own logic around DVC parity, without DVC runs or a server: reading `dvc repro`'s log into the
stages it visited, which failures are worth a retry, and the flags refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.errors import PipelineError, StageCommandError
from dvcflow.core.records import DataSync, StagesReport
from dvcflow.dvc.commands import StageLog, failure
from dvcflow.dvc.session import Prepared, StageSpec
from dvcflow.engine.executor import Status, execute
from dvcflow.proc.children import CommandResult

REPRO_LOG = """\
Pulling data for stage: 'data/raw/iris.csv.dvc'
'data/raw/iris.csv.dvc' didn't change, skipping
Pulling data for stage: 'prepare'
Unable to pull data for stage: 'prepare'
Running stage 'prepare':
> python -m mltoy.cli prepare
Stage 'train' is cached - skipping run, checking out outputs
Pulling data for stage: 'sub/dvc.yaml:fetch@1'
Stage 'evaluate' didn't change, skipping
Running stage 'branch@0':
Data and pipelines are up to date.
"""


def test_stage_log_names_what_dvc_did_with_each_stage() -> None:
    log = StageLog()
    for line in REPRO_LOG.splitlines():
        log.feed(line)
    assert log.report() == StagesReport(
        ran=("prepare", "branch@0"),  # the remote lacked prepare's data: it ran after all
        skipped=("data/raw/iris.csv.dvc", "evaluate"),
        pulled=("data/raw/iris.csv.dvc", "sub/dvc.yaml:fetch@1"),
        restored=("train",),
    )


def test_a_retry_adds_to_what_the_failed_attempt_ran() -> None:
    first = StagesReport(ran=("prepare", "train"), skipped=("data.dvc",))
    retry = StagesReport(ran=("train", "evaluate"), skipped=("data.dvc", "prepare"))
    assert first.merged(retry) == StagesReport(ran=("prepare", "train", "evaluate"), skipped=("data.dvc",))


@pytest.mark.parametrize(
    ("tail", "retryable"),
    [
        (("ERROR: failed to reproduce 'train': failed to run: python train.py, exited with 1",), True),
        (("ERROR: Unable to acquire lock. Most likely another DVC process is running",), True),
        (("Killed",), True),  # no ERROR line: the process died, another attempt may not
        (("ERROR: failed to reproduce 'x.dvc': missing data 'source': x",), False),
        (("ERROR: failed to reproduce 'train': [Errno 2] No such file or directory: 'a.csv'",), False),
        (("ERROR: './dvc.yaml' validation failed",), False),
    ],
    ids=["command-failed", "lock", "killed", "missing-source", "missing-input", "invalid-yaml"],
)
def test_only_failures_a_retry_can_fix_are_retryable(tail: tuple[str, ...], retryable: bool) -> None:
    from prefect.states import Failed

    from dvcflow.flows.repro import retry_helps

    error = failure(CommandResult(("repro",), 1, tail))
    assert isinstance(error, PipelineError)
    assert isinstance(error, StageCommandError) is retryable
    assert retry_helps(None, None, Failed(data=error)) is retryable
    assert retry_helps(None, None, Failed(data=RuntimeError("--fail-once"))) is True


def test_sync_flags_become_dvc_repro_arguments() -> None:
    assert DataSync().repro_args() == [] and not DataSync().needs_remote
    both = DataSync(pull=True, allow_missing=True, push=True)
    assert both.repro_args() == ["--pull", "--allow-missing"]  # --push is a task of its own
    assert both.flags() == ["--pull", "--allow-missing", "--push"] and both.needs_remote


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retries", "-1"], "Error: --retries must be 0 or more, got -1"),
        (["-s"], "Error: -s/--single-item needs a target"),
    ],
    ids=["negative-retries", "single-item-alone"],
)
def test_refused_before_the_repository_is_read(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["run-a", *args, "--repo", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[0] == message


class _MissingDataStage:
    """The executor's view of a session whose stage `s` only lacks its data (`pull_stage` succeeds or not);
    `prepare` stands for running it (the run cache has it, so no command starts)."""

    def __init__(self, pullable: bool) -> None:
        self.pullable = pullable
        self.calls: list[object] = []

    def spec(self, name: str) -> StageSpec:
        return StageSpec(name, ("true",), Path("."), (), (), by_dvc=False)

    def missing_data_only(self, name: str) -> bool:
        return True

    def pull_stage(self, name: str, log: object) -> bool:
        self.calls.append("pull")
        return self.pullable

    def recorded_outputs(self, name: str) -> tuple[()]:
        return ()

    def prepare(self, name: str, *, force: bool, check_changed: bool, pull: bool = False) -> Prepared:
        self.calls.append(("prepare", pull))
        return Prepared.RESTORED


@pytest.mark.parametrize(
    ("flags", "pullable", "status", "calls"),
    [
        ({"allow_missing": True}, True, Status.UP_TO_DATE, []),  # skipped, nothing fetched
        ({"allow_missing": True, "pull": True}, True, Status.UP_TO_DATE, []),  # as DVC: skip wins
        ({"pull": True}, True, Status.PULLED, ["pull"]),
        ({"pull": True}, False, Status.RESTORED, ["pull", ("prepare", True)]),  # cannot check out: runs
        ({}, True, Status.RESTORED, [("prepare", False)]),  # no flag: DVC's plain rules
        ({"pull": True, "force": True}, True, Status.RESTORED, [("prepare", True)]),
    ],
    ids=["allow-missing", "both", "pull", "pull-unavailable", "neither", "pull-forced"],
)
def test_a_stage_missing_only_its_data_is_skipped_or_pulled_as_stage_reproduce_does(
    flags: dict[str, bool], pullable: bool, status: Status, calls: list[object]
) -> None:
    session = _MissingDataStage(pullable)
    force = flags.pop("force", False)
    result = execute(session, "s", force=force, check_changed=True, log=lambda _: None, **flags)  # type: ignore[arg-type]
    assert (result.status, session.calls) == (status, calls)
