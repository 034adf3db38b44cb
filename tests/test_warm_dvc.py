"""A run's DVC process (`python -m dvcflow.dvc.child`) asks the warm starter too: its `dvc repro` runs in a
child forked with DVC imported (`dvcflow.cli.warm.DVC_CHILD`), and behaves as the unforked one. Killing and
interrupting it are covered by tests/test_faults.py and tests/test_warm.py, whose runs go through it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dvcflow.proc import zygote
from tests.conftest import LiveServer
from tests.helpers import dvcflow, make_tiny_repo
from tests.test_warm import normalized, starter  # noqa: F401 - the fixture `starter`

integration = pytest.mark.integration


def dvc_children(home: Path) -> list[int]:
    """The DVC children the starter forked, from its log."""
    return [int(pid) for pid in re.findall(r"serving dvcflow\.dvc\.child \['repro'\] in (\d+)", log(home))]


def log(home: Path) -> str:
    return (home / zygote.LOG_NAME).read_text()


@integration
def test_a_runs_dvc_repro_is_forked_from_the_starter_and_behaves_as_its_own_process(
    tmp_path: Path,
    live_server: LiveServer,
    starter: int,  # noqa: F811
) -> None:
    repo = make_tiny_repo(tmp_path / "repo", live_server.env)
    before = len(dvc_children(live_server.home))
    first = dvcflow("run-a", cwd=repo, env=live_server.env)
    assert first.returncode == 0, first.stderr
    assert "Running stage 'hello'" in first.stderr  # the stage ran, through the forked DVC
    assert (repo / "out.txt").read_text() == "hello"
    (child,) = dvc_children(live_server.home)[before:]
    assert f"{child} ended: exit 0" in log(live_server.home)

    warm_run = dvcflow("run-a", cwd=repo, env=live_server.env)
    forked = len(dvc_children(live_server.home))
    cold_run = dvcflow("run-a", cwd=repo, env={**live_server.env, "DVCFLOW_WARM": "0"})
    assert (warm_run.returncode, cold_run.returncode) == (0, 0), warm_run.stderr + cold_run.stderr
    assert forked == before + 2 and len(dvc_children(live_server.home)) == forked  # off: not asked
    assert normalized(warm_run.stdout) == normalized(cold_run.stdout)
    assert normalized(warm_run.stderr) == normalized(cold_run.stderr)
    assert "Stage 'hello' didn't change, skipping" in warm_run.stderr


@integration
def test_a_failing_stage_fails_the_same_through_the_forked_dvc(
    tmp_path: Path,
    live_server: LiveServer,
    starter: int,  # noqa: F811
) -> None:
    stages = "stages:\n  broken:\n    cmd: python -c \"import sys; sys.exit('no luck')\"\n"
    repo = make_tiny_repo(tmp_path / "repo", live_server.env, stages)
    before = len(dvc_children(live_server.home))
    warm_run = dvcflow("run-a", "--retries", "0", cwd=repo, env=live_server.env)
    cold_run = dvcflow("run-a", "--retries", "0", cwd=repo, env={**live_server.env, "DVCFLOW_WARM": "0"})
    assert len(dvc_children(live_server.home)) == before + 1
    assert warm_run.returncode == cold_run.returncode != 0
    assert "no luck" in warm_run.stderr + warm_run.stdout
    assert normalized(warm_run.stdout) == normalized(cold_run.stdout)
