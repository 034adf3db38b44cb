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
