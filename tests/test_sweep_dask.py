"""`dvcflow sweep --dask-address`: the trials run on an existing Dask cluster (a real `LocalCluster` in
its own process), still child flow runs of the sweep's flow run, each in its own workspace, each saved
as a DVC experiment."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import dvc.logger as _dvc_logger  # noqa: F401 - before CliRunner swaps sys.stdout (see test_sweep)
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.engine.trials import CANCEL_MARK, TrialJob, TrialSpec, mark_cancelled
from tests.conftest import Repos
from tests.helpers import api_post, dvcflow, git
from tests.test_sweep import experiments, make_third_party_repo, tree_digest, worktrees


def tasks_done_by(address: str) -> dict[str, int]:
    """Task prefix → how many such tasks the Dask scheduler saw reach memory (finished)."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        counts: dict[str, int] = client.run_on_scheduler(
            lambda dask_scheduler: {
                name: int(prefix.state_counts["memory"])
                for name, prefix in dask_scheduler.task_prefixes.items()
            }
        )
    return counts


def test_trials_run_on_a_dask_cluster_as_child_flow_runs_and_become_experiments(
    tmp_path: Path, client_env: dict[str, str], dask_scheduler: str
) -> None:
    repo = make_third_party_repo(tmp_path / "repo", client_env)  # small stages: this is about where they run
    before = tree_digest(repo)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**client_env, "TMPDIR": str(scratch)}

    result = dvcflow(
        "sweep", "-S", "conf/hp.yaml:scale=1,2", "--dask-address", dask_scheduler, "--json",
        cwd=repo, env=env, timeout=600,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    trials = report["trials"]
    assert [(t["conf/hp.yaml:scale"], t["total"], t["state"]) for t in trials] == [
        ("1", 4, "Completed"), ("2", 7, "Completed"),
    ]  # fmt: skip
    assert tasks_done_by(dask_scheduler) == {"trial_task": 2}  # both ran on the cluster's workers
    # each trial is a child flow run of the sweep's flow run
    parent = re.search(r"/runs/flow-run/([0-9a-f-]{36})", report["ui_link"])
    assert parent is not None, report
    api = f"http://127.0.0.1:{client_env['DVCFLOW_PORT']}/api"
    children = api_post(
        api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent.group(1)]}}}
    )
    assert isinstance(children, list)
    assert sorted(run["name"] for run in children) == sorted(t["name"] for t in trials)
    assert all(run["state_type"] == "COMPLETED" for run in children), children
    # saved exactly as without Dask: listed by `dvc exp show` with their params and metrics
    saved = experiments(repo, client_env)
    assert set(saved) == {trial["name"] for trial in trials}
    for trial in trials:
        data = saved[trial["name"]]
        assert str(data["params"]["conf/hp.yaml"]["data"]["scale"]) == trial["conf/hp.yaml:scale"]  # type: ignore[index]
        assert data["metrics"]["summary.json"]["data"] == {"total": trial["total"]}  # type: ignore[index]
    # the workers removed their workspaces; the user's workspace is untouched
    assert len(worktrees(repo)) == 1
    assert list(scratch.iterdir()) == []
    assert tree_digest(repo) == before


def test_an_unreachable_dask_address_is_one_line_before_any_trial(
    tmp_path: Path, repos: Repos, closed_port: int
) -> None:
    env = repos.env  # no server either
    repo = repos.pipeline(tmp_path / "repo")
    address = f"tcp://127.0.0.1:{closed_port}"
    started = time.monotonic()

    result = CliRunner().invoke(
        app, ["sweep", "--repo", str(repo), "-S", "train.C=1,2", "--dask-address", address], env=env
    )

    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Hint:")]
    assert len(lines) == 1 and lines[0].startswith(f"Error: no Dask scheduler answers at {address} ("), lines
    assert git(repo, "for-each-ref", "refs/exps") == ""
    assert time.monotonic() - started < 10


def test_a_trial_learns_of_ctrl_c_from_its_scratch_folder_wherever_it_runs(tmp_path: Path) -> None:
    """The cancel flag must reach a trial in another process: a mark in the folder, or the folder gone."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    job = TrialJob(tmp_path, "0" * 40, scratch, tmp_path / "cache", TrialSpec(1, ()), "t-1", True, False)
    assert not job.cancelled
    mark_cancelled(scratch)
    assert job.cancelled
    (scratch / CANCEL_MARK).unlink()
    scratch.rmdir()
    assert job.cancelled
    mark_cancelled(scratch)  # the folder is gone: nothing to mark, no error


def test_a_trial_in_a_clone_learns_of_ctrl_c_from_the_cluster_and_stops_its_commands(
    tmp_path: Path, dask_scheduler: str
) -> None:
    """A trial in a clone does not see the scratch folder: the sweep's Dask event tells it, and the trial's
    watcher stops the command it runs on the worker (a real `sleep 60`, in a folder of its own)."""
    from distributed import Client

    from dvcflow.core.clones import CloneSource
    from dvcflow.engine.trials import announce_cancel

    event = f"test-sweep-cancelled-{tmp_path.name}"
    folder = tmp_path / "clone"
    folder.mkdir()
    job = TrialJob(
        tmp_path, "0" * 40, tmp_path / "elsewhere", tmp_path / "cache", TrialSpec(1, ()), "t-1", True, False,
        clone=CloneSource("file:///nowhere.git", "0" * 40), cancel_event=event,
    )  # fmt: skip

    def asked(job: TrialJob) -> bool:  # on the worker, as `trial_task` asks
        return job.cancelled

    def trial(job: TrialJob, folder: Path) -> tuple[bool, int, float]:  # on the worker, as a trial runs
        import os
        import time

        from dvcflow.flows.sweep import _stopped_when_cancelled
        from dvcflow.proc import children

        started = time.monotonic()
        with _stopped_when_cancelled(job, folder):
            code, _ = children.stream_process(["sleep", "60"], folder, dict(os.environ), lambda _: None)
        return job.cancelled, code, time.monotonic() - started

    with Client(dask_scheduler, timeout=30) as client:
        assert client.submit(asked, job, pure=False).result(timeout=30) is False
        running = client.submit(trial, job, folder, pure=False)
        time.sleep(1.5)  # the command runs
        assert not running.done()
        announce_cancel(dask_scheduler, event)
        cancelled, code, seconds = running.result(timeout=30)
        assert client.submit(asked, job, pure=False).result(timeout=30) is True
    assert cancelled and code != 0 and seconds < 15, (cancelled, code, seconds)
    assert not job.cancelled  # here, outside a worker, there is no client to ask: not a guess
