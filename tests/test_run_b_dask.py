"""`run-b --dask-address` (docs/remote.md): Prefect's cache decides in the caller, the stages run on the Dask
workers, in this repository when they share the disk, else in clones of this commit. Either way `dvc.lock`
is what a local `dvc repro` writes, `dvc status` is clean, and the next run is all Cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from tests.helpers import dvc, dvcflow, git, make_chain_repo, make_clone_wide_repo, with_clone_remotes
from tests.test_dask_clones import PATIENCE, ScratchCluster, assert_as_dvc_repro, scratch_cluster

__all__ = ["scratch_cluster"]  # the fixture, used by name

WIDE = ["branch@b0", "branch@b1", "branch@b2", "join"]


def run_b(repo: Path, env: dict[str, str], *args: str) -> dict[str, str]:
    """`dvcflow run-b ARGS --json` succeeded: each stage's final state."""
    ran = dvcflow("run-b", *args, "--json", cwd=repo, env=env, timeout=PATIENCE)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return {task["name"]: task["state"] for task in json.loads(ran.stdout)["tasks"]}


def reproduced(repo: Path, at: Path, env: dict[str, str]) -> Path:
    """A copy of `repo` where a local `dvc repro` ran: what the run must leave behind."""
    shutil.copytree(repo, at, symlinks=True)
    done = dvc("repro", cwd=at, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return at


@pytest.mark.timeout(600)
def test_run_b_on_workers_without_the_disk_runs_in_clones_what_the_cache_cannot_vouch_for(
    tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster
) -> None:
    env = client_env
    repo = make_clone_wide_repo(tmp_path / "repo", env, branches=3, sleep=0.2)
    with_clone_remotes(repo, tmp_path, env)
    dask = ["--dask-address", scratch_cluster.address, "--no-shared-disk"]

    first = run_b(repo, env, *dask)

    assert {name: first[name] for name in WIDE} == dict.fromkeys(WIDE, "Completed"), first
    assert_as_dvc_repro(repo, reproduced(repo, tmp_path / "reference", env), ".", env)
    places = scratch_cluster.cwd_log.read_text().splitlines()
    assert len(places) == 4  # each stage once, in a worker's clone
    for place in places:
        assert Path(place).is_relative_to(scratch_cluster.scratch) and not Path(place).is_relative_to(repo)

    again = run_b(repo, env, *dask)

    assert {name: again[name] for name in WIDE} == dict.fromkeys(WIDE, "Cached"), again
    assert len(scratch_cluster.cwd_log.read_text().splitlines()) == 4  # nothing ran

    # Only the join changed: the branches stay Cached here, the join runs in a clone on their outputs
    # (which reach it through the DVC remote), and its entry comes home as `dvc repro` writes it.
    (repo / "join.py").write_text((repo / "join.py").read_text() + "# changed\n")
    git(repo, "commit", "-q", "-am", "join.py changed", env=env)
    changed = reproduced(repo, tmp_path / "reference-changed", env)

    third = run_b(repo, env, *dask)

    assert {name: third[name] for name in WIDE} == {**dict.fromkeys(WIDE[:3], "Cached"), "join": "Completed"}
    assert_as_dvc_repro(repo, changed, ".", env)
    assert (repo / "out" / "joined.txt").read_text() == "b0\nb1\nb2\n"
    assert len(scratch_cluster.cwd_log.read_text().splitlines()) == 5


@pytest.mark.timeout(300)
def test_run_b_on_workers_sharing_the_disk_runs_in_place_and_caches_in_the_caller(
    tmp_path: Path, client_env: dict[str, str], dask_scheduler: str
) -> None:
    env = client_env
    repo = make_chain_repo(tmp_path / "repo", env, stages=3)
    reference = reproduced(repo, tmp_path / "reference", env)
    chain = ["s00", "s01", "s02"]

    ran = dvcflow("run-b", "--dask-address", dask_scheduler, "--json", cwd=repo, env=env, timeout=PATIENCE)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Dask workers see this repository (2 of 2): stages run in it" in ran.stderr
    states = {task["name"]: task["state"] for task in json.loads(ran.stdout)["tasks"]}
    assert {name: states[name] for name in chain} == dict.fromkeys(chain, "Completed"), states
    assert_as_dvc_repro(repo, reference, ".", env)

    again = run_b(repo, env, "--dask-address", dask_scheduler, "--shared-disk")

    assert {name: again[name] for name in chain} == dict.fromkeys(chain, "Cached"), again
    assert_as_dvc_repro(repo, reference, ".", env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-shared-disk"], "Error: --no-shared-disk needs --dask-address"),
        (
            ["--dask-address", "127.0.0.1:8786"],
            "Error: --dask-address must look like tcp://HOST:PORT, got '127.0.0.1:8786'",
        ),
    ],
    ids=["shared-disk-alone", "dask-no-scheme"],
)
def test_run_b_s_dask_flags_are_checked_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["run-b", *args, "--repo", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [message]


def make_data_source_repo(root: Path, env: dict[str, str]) -> Path:
    """A `.dvc` data source, `data/raw.txt` (`dvc add`, committed), feeding stage `prep` (out/p.txt)."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw.txt").write_text("old\n")
    git(root, "init", "-q", "-b", "main", env=env)
    for args in (["init", "-q"], ["add", "-q", "data/raw.txt"]):
        done = dvc(*args, cwd=root, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    stage = {
        "cmd": "mkdir -p out && cp data/raw.txt out/p.txt",
        "deps": ["data/raw.txt"],
        "outs": ["out/p.txt"],
    }
    (root / "dvc.yaml").write_text(json.dumps({"stages": {"prep": stage}}))
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "a data source and a stage", env=env)
    return root


@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", [["run-b"], ["run-a", "--per-stage"]], ids=["run-b", "run-a"])
def test_a_data_source_changed_since_the_last_run_reaches_the_clones(
    command: list[str], tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster
) -> None:
    """The caller verifies a changed `.dvc` source and records its new hash in `data/raw.txt.dvc`: the
    clones get that file with the lock files, so `prep` runs there on the new data (it was UpToDate on the
    old data, its output stale, exit 0)."""
    env = client_env
    repo = make_data_source_repo(tmp_path / "repo", env)
    with_clone_remotes(repo, tmp_path, env)
    pushed = dvc("push", "-q", cwd=repo, env=env)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    dask = ["--dask-address", scratch_cluster.address, "--no-shared-disk", "--json"]
    first = dvcflow(*command, *dask, cwd=repo, env=env, timeout=PATIENCE)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (repo / "out" / "p.txt").read_text() == "old\n"

    (repo / "data" / "raw.txt").write_text("new\n")  # no `dvc add`: the run verifies it
    again = dvcflow(*command, *dask, cwd=repo, env=env, timeout=PATIENCE)

    assert again.returncode == 0, again.stdout + again.stderr
    states = {task["name"]: task["state"] for task in json.loads(again.stdout)["tasks"]}
    assert states["prep"] == "Completed", states
    assert (repo / "out" / "p.txt").read_text() == "new\n"
    status = dvc("status", "--json", cwd=repo, env=env)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr

    # --force: the data source is still the caller's to verify, never a clone's (which lacks its data)
    forced = dvcflow(*command, *dask, "--force", cwd=repo, env=env, timeout=PATIENCE)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (repo / "out" / "p.txt").read_text() == "new\n"


@pytest.mark.parametrize("recorded", [False, True], ids=["no-record-here", "trusted-record"])
def test_on_dask_the_cache_verdict_is_taken_in_the_caller_only(
    recorded: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared-disk run-b on Dask: a worker's task engine would answer from its own storage, whose record the
    caller's verdict never checked (Cached with an output missing). With no record here the stage is
    submitted with `refresh_cache=True` (it was False); with a trusted one it is the cached-state task."""
    from types import SimpleNamespace
    from typing import Any

    from dvcflow.core.graph import Decision, PlannedStage
    from dvcflow.core.resources import NO_GRANT, Resources
    from dvcflow.engine import task as engine_task
    from dvcflow.engine.cache import Verdict
    from dvcflow.engine.scheduler import Action

    submitted: list[tuple[str, dict[str, Any]]] = []

    class FakeTask:
        def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
            self.name, self.options = name, options or {}

        def with_options(self, **options: Any) -> FakeTask:
            return FakeTask(self.name, options)

        def submit(self, *_args: object, **_kwargs: object) -> Any:
            submitted.append((self.name, self.options))
            return SimpleNamespace(task_run_id=None, add_done_callback=lambda _callback: None)

    monkeypatch.setattr(engine_task, "stage_task", FakeTask("stage_task"))
    monkeypatch.setattr(engine_task, "cached_stage_task", FakeTask("cached_stage_task"))
    session: Any = SimpleNamespace(spec=lambda _name: SimpleNamespace(deps=(), outs=()))
    store: Any = SimpleNamespace(exists=lambda _key: recorded)
    launcher = engine_task.PrefectLauncher(
        tmp_path, session, retries=0, by_cache=True, store=store, resources=Resources(dask=True)
    )
    policy = SimpleNamespace(key="k")
    monkeypatch.setattr(launcher, "cache_verdict", lambda _stage: (policy, Verdict(False, None)))
    stage = PlannedStage("s", 1, Decision.CHANGED, "changed", ())

    launcher.launch(stage, Action.RUN, "changed", (), NO_GRANT)

    ((name, options),) = submitted
    if recorded:
        assert name == "cached_stage_task"
    else:
        assert name == "stage_task" and options["refresh_cache"] is True, options
