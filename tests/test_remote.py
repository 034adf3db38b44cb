"""Runs on machines that do not share this disk (docs/remote.md), one machine playing several: the "other
machine" is a `prefect worker` with a HOME of its own and a working directory outside the caller's tree;
the git remote is a bare repository on disk; the DVC remote is a WebDAV server on 127.0.0.1 that wants a
password."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, Processes, integration_fixture
from tests.helpers import (
    base_env,
    basic_auth,
    dvc,
    dvcflow,
    git,
    make_shaped_repo,
    make_tiny_repo,
    webdav_server,
)

USER, PASSWORD = "worker", "s3cret"
PATIENCE = 420  # a loaded 2-core machine: a worker's flow-run process imports Prefect and DVC, then clones


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@integration_fixture
def webdav(tmp_path: Path) -> Iterator[str]:
    """A WebDAV server (wsgidav on cheroot) on a free loopback port that wants USER/PASSWORD (basic auth)."""
    with webdav_server(tmp_path / "webdav", **basic_auth(USER, PASSWORD)) as url:
        yield url


def bare_remote(path: Path, env: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "--bare", "-b", "main", env=env)
    return path


def with_remotes(repo: Path, origin: Path, dvc_remote: str, url: str, env: dict[str, str]) -> None:
    """The caller's set-up: a git remote (its pipeline pushed), and a DVC default remote with the caller's
    password in `.dvc/config.local`, its sources pushed there; that last commit is not pushed to git."""
    git(repo, "remote", "add", "origin", str(origin), env=env)
    git(repo, "push", "-q", "-u", "origin", "main", env=env)
    for args in (
        ("remote", "add", "-d", dvc_remote, url),
        ("remote", "modify", "--local", dvc_remote, "user", USER),
        ("remote", "modify", "--local", dvc_remote, "password", PASSWORD),
        ("push", "-q"),
    ):
        done = dvc(*args, cwd=repo, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    git(repo, "commit", "-q", "-am", "the DVC remote", env=env)


def snapshot(tree: Path) -> dict[str, str]:
    """Every file of the working tree (not .git, not DVC's scratch folder) and its sha256."""
    return {
        path.relative_to(tree).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(tree.rglob("*"))
        if path.is_file() and not path.relative_to(tree).as_posix().startswith((".git/", ".dvc/tmp/"))
    }


def start_worker(processes: Processes, pool: str, home: Path, api_url: str) -> subprocess.Popen[str]:
    """`prefect worker start --pool POOL` as another machine would run it: its own HOME (clones under
    ~/.cache/dvcflow), working directory and Prefect home; the password of DVC remote `store` only."""
    elsewhere = home / "cwd"
    elsewhere.mkdir(parents=True)
    env = {
        **base_env(home),
        "HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DVCFLOW_REMOTE_STORE_USER": USER,
        "DVCFLOW_REMOTE_STORE_PASSWORD": PASSWORD,
    }
    return processes.start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(worker: subprocess.Popen[str]) -> None:
    os.killpg(worker.pid, signal.SIGINT)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


def log_lines(api_url: str, run_id: str) -> list[str]:
    from tests.helpers import api_post

    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    logs = api_post(api_url, "/logs/filter", body)
    assert isinstance(logs, list)
    return [str(log["message"]) for log in logs]


def final_log_lines(api_url: str, run_id: str) -> list[str]:
    """The run's log once its process has sent its last line (it does so after the run's final state)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        lines = log_lines(api_url, run_id)
        if any(line.startswith("Finished in state") for line in lines):
            return lines
        time.sleep(1)  # the flow-run process sends its log in batches, the last at its exit
    raise AssertionError(f"run {run_id}'s log has no final line: {log_lines(api_url, run_id)[-3:]}")


@pytest.mark.timeout(1200)
def test_a_worker_elsewhere_runs_the_commit_and_the_result_comes_home_as_an_experiment(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer, processes: Processes, webdav: str
) -> None:
    env = client_env
    caller = make_shaped_repo(tmp_path / "caller", env)
    with_remotes(caller, bare_remote(tmp_path / "origin.git", env), "store", webdav, env)
    reference = tmp_path / "reference"
    shutil.copytree(caller, reference, symlinks=True)
    reproduced = dvc("repro", cwd=reference, env=env)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr

    # A second repository whose DVC remote ('vault') the worker has no password for.
    locked = make_tiny_repo(tmp_path / "locked", env)
    with_remotes(locked, bare_remote(tmp_path / "locked.git", env), "vault", webdav, env)

    pool, name, refused_name = unique("remote-pool"), unique("remote"), unique("no-password")
    per_stage_name = unique("remote-per-stage")
    before = snapshot(caller)
    head = git(caller, "rev-parse", "HEAD", env=env).strip()
    deployed = dvcflow("deploy", "--pool", pool, "--name", name, cwd=caller, env=env, timeout=PATIENCE)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"Pushed {head[:9]} to origin as refs/dvcflow/deploy/{name} (no branch moved)" in deployed.stderr
    assert f"in work pool '{pool}'" in deployed.stdout
    other = dvcflow("deploy", "--pool", pool, "--name", refused_name, cwd=locked, env=env, timeout=PATIENCE)
    assert other.returncode == 0, other.stdout + other.stderr
    per_stage = dvcflow(
        "deploy",
        "--pool",
        pool,
        "--per-stage",
        "--name",
        per_stage_name,
        cwd=caller,
        env=env,
        timeout=PATIENCE,
    )
    assert per_stage.returncode == 0, per_stage.stdout + per_stage.stderr

    worker = start_worker(processes, pool, tmp_path / "worker-home", live_server.api_url)
    try:
        triggered = dvcflow(
            "trigger", name, "--wait", "--timeout", str(PATIENCE), cwd=caller, env=env, timeout=PATIENCE + 60
        )
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        assert f"of 'dvcflow pipeline/{name}': Completed" in triggered.stdout
        triggered = dvcflow(
            "trigger", per_stage_name, "--wait", "--timeout", str(PATIENCE), cwd=caller, env=env,
            timeout=PATIENCE + 60,
        )  # fmt: skip
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        assert f"of 'dvcflow pipeline/{per_stage_name}': Completed" in triggered.stdout
        refused = dvcflow(
            "trigger",
            refused_name,
            "--wait",
            "--timeout",
            str(PATIENCE),
            cwd=locked,
            env=env,
            timeout=PATIENCE + 60,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        failed = next(
            row
            for row in json.loads(dvcflow("runs", "--json", cwd=locked, env=env).stdout)
            if row["deployment"] == refused_name
        )
        failed_log = final_log_lines(live_server.api_url, failed["id"])
    finally:
        stop(worker)

    # The worker wrote nothing here.
    assert snapshot(caller) == before
    assert git(caller, "rev-parse", "HEAD", env=env).strip() == head
    assert not (tmp_path / "worker-home" / "cwd").is_relative_to(caller)

    runs = json.loads(dvcflow("runs", "--json", cwd=caller, env=env).stdout)
    run = next(row for row in runs if row["deployment"] == name)
    assert (run["state"], run["experiment"]) == ("Completed", run["name"])

    # The missing password: Failed, the reason in the run's last log lines and in `dvcflow runs`.
    reason = f"DVC remote 'vault' ({webdav}) refused this worker: received 401 (Not Authorized)"
    assert failed["state"] == "Failed" and failed["experiment"] is None
    assert reason in failed["message"]
    assert reason in failed_log[-2] and reason in failed_log[-1], failed_log[-2:]

    fetched = dvcflow("fetch", run["name"], "--pull", cwd=caller, env=env, timeout=PATIENCE)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert f"Experiment '{run['name']}' of flow run '{run['name']}' applied" in fetched.stdout
    status = dvc("status", "--json", cwd=caller, env=env)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    assert (caller / "metrics.json").read_text() == (reference / "metrics.json").read_text()
    assert (caller / "dvc.lock").read_text() == (reference / "dvc.lock").read_text()
    diff = dvcflow("metrics", "--diff", "--json", cwd=caller, env=env)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert '"score"' in diff.stdout

    # The same pipeline, a task per stage on the worker: the same record as `dvc repro`'s.
    run = next(row for row in runs if row["deployment"] == per_stage_name)
    assert (run["state"], run["experiment"]) == ("Completed", run["name"])
    git(caller, "checkout", "-q", "--", ".", env=env)
    fetched = dvcflow("fetch", run["name"], "--pull", cwd=caller, env=env, timeout=PATIENCE)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert (caller / "dvc.lock").read_text() == (reference / "dvc.lock").read_text()
    assert (caller / "metrics.json").read_text() == (reference / "metrics.json").read_text()


BAD_INPUT_LINES = {
    "no-git-remote": "Error: no git remote: a worker on another machine clones the repository from one",
    "no-dvc-remote": "Error: no DVC default remote in .dvc/config: workers pull the pipeline's data from it "
    "and push their results to it",
    "uncommitted": "Error: uncommitted changes to files the pipeline depends on: params.yaml",
    "push-refused": "Error: git remote 'origin' refused the push of {head} to refs/dvcflow/deploy/{name}: "
    "pre-receive hook declined",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_LINES))
def test_bad_input_is_one_error_line_and_registers_nothing(
    case: str, tmp_path: Path, client_env: dict[str, str], webdav: str
) -> None:
    env = client_env
    name = unique(case)
    if case == "no-git-remote":
        repo = make_tiny_repo(tmp_path / "repo", env)
    elif case == "no-dvc-remote":
        repo = make_tiny_repo(tmp_path / "repo", env)
        git(repo, "remote", "add", "origin", str(bare_remote(tmp_path / "origin.git", env)), env=env)
        git(repo, "push", "-q", "-u", "origin", "main", env=env)
    else:
        repo = make_shaped_repo(tmp_path / "repo", env)
        origin = bare_remote(tmp_path / "origin.git", env)
        with_remotes(repo, origin, "store", webdav, env)
        if case == "uncommitted":
            with (repo / "params.yaml").open("a") as params:
                params.write("# tried something\n")
        else:  # the last commit is not on the remote, and the remote refuses every push now
            hook = origin / "hooks" / "pre-receive"
            hook.write_text("#!/bin/sh\nexit 1\n")
            hook.chmod(0o755)
    head = git(repo, "rev-parse", "HEAD", env=env).strip()
    result = dvcflow("deploy", "--pool", unique("pool"), "--name", name, cwd=repo, env=env, timeout=PATIENCE)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [BAD_INPUT_LINES[case].format(head=head[:9], name=name)], result.stderr
    unknown = dvcflow("trigger", name, cwd=repo, env=env)
    assert unknown.returncode == 2 and f"Error: no deployment named {name!r}" in unknown.stderr


def bundled_job_template(pool_type: str) -> dict[str, Any]:
    """The base job template Prefect's server ships for a pool type (its worker package need not be here)."""
    import prefect.server.api.collections_data as collections

    path = Path(collections.__path__[0]) / "views" / "aggregate-worker-metadata.json"
    workers = {
        worker["type"]: worker
        for package in json.loads(path.read_text()).values()
        for worker in package.values()
    }
    return dict(workers[pool_type]["default_base_job_configuration"])


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_an_image_pool_gets_the_commit_s_pull_step_the_image_and_the_env(
    pool_type: str, tmp_path: Path, client_env: dict[str, str], live_server: LiveServer, webdav: str
) -> None:
    """Registered, not run (no cluster here): the deployment's pull step, parameters and job variables, and
    the job the pool's worker would build from them, the DVC remote's password coming from a Prefect Secret
    block that the pool's job template names (docs/remote.md)."""
    import asyncio

    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.base import BaseJobConfiguration
    from pydantic import ConfigDict

    env = client_env
    repo = make_shaped_repo(tmp_path / "repo", env)
    origin = bare_remote(tmp_path / "origin.git", env)
    with_remotes(repo, origin, "store", webdav, env)
    git(repo, "push", "-q", "origin", "main", env=env)
    head = git(repo, "rev-parse", "HEAD", env=env).strip()
    pool, name, secret = unique(pool_type), unique("in-image"), unique("dvc-store-password")
    image = "registry.example.com/team/dvcflow:0.1.0"
    template = bundled_job_template(pool_type)
    template["variables"]["properties"]["env"]["default"] = {
        "DVCFLOW_REMOTE_STORE_PASSWORD": f"{{{{ prefect.blocks.secret.{secret} }}}}"
    }

    class Rendered(BaseJobConfiguration):
        model_config = ConfigDict(extra="allow")  # the pool type's own fields, kept as they render

    with temporary_settings(updates={PREFECT_API_URL: live_server.api_url}):
        Secret(value=PASSWORD).save(secret)
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=template))
        deployed = dvcflow("deploy", "--pool", pool, "--image", image, "--name", name, cwd=repo, env=env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "Pushed" not in deployed.stderr  # HEAD was on the remote
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"dvcflow pipeline/{name}")
            stored = client.read_work_pool(pool).base_job_template

        async def render() -> Any:
            async with get_client() as client:
                return await Rendered.from_template_and_values(
                    stored, deployment.job_variables, client=client
                )

        job = asyncio.run(render())

    assert deployment.entrypoint == "dvcflow.flows.remote.git_pipeline_flow"
    assert deployment.pull_steps == [
        {"dvcflow.flows.remote.checkout_step": {"repository": str(origin), "commit": head, "subdir": "."}}
    ]
    assert deployment.parameters == {
        "repository": str(origin),
        "commit": head,
        "subdir": ".",
        "per_stage": False,
        "jobs": None,
        "keep_going": False,
        "targets": None,
        "resources": None,
    }
    assert deployment.job_variables == {
        "env": {"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"},
        "image": image,
    }
    assert job.env == {
        "DVCFLOW_REMOTE_STORE_PASSWORD": PASSWORD,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    extra = job.model_extra or {}
    if pool_type == "docker":
        assert extra["image"] == image
    else:
        (container,) = extra["job_manifest"]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image


# Units: no process, no server.


def test_remote_settings_come_from_variables_named_after_the_remote() -> None:
    from dvcflow.dvc.remote_data import credential_settings, credentials_key

    assert credentials_key("my-store") == "DVCFLOW_REMOTE_MY_STORE_"
    environ = {
        "DVCFLOW_REMOTE_STORE_USER": "u",
        "DVCFLOW_REMOTE_STORE_ASK_PASSWORD": "false",
        "DVCFLOW_REMOTE_STORE_B_PASSWORD": "p",  # remote `store-b`, not option `b_password` of `store`
        "DVCFLOW_REMOTE_OTHER_USER": "x",  # no such remote
        "DVCFLOW_REMOTE_STORE_": "",
    }
    assert credential_settings(["store", "store-b"], environ) == {
        "store": {"user": "u", "ask_password": "false"},
        "store-b": {"password": "p"},
    }


def test_job_variables_follow_the_pool_s_job_template() -> None:
    from dvcflow.core.errors import UsageError
    from dvcflow.services.remote_runs import DEFAULT_IMAGE, JOB_ENV, job_variables

    assert job_variables(bundled_job_template("process"), None) == {"env": JOB_ENV}
    assert job_variables({}, None) == {}  # a process pool created without a template
    assert job_variables(bundled_job_template("docker"), None) == {"env": JOB_ENV, "image": DEFAULT_IMAGE}
    assert job_variables(bundled_job_template("kubernetes"), "r/i:1") == {"env": JOB_ENV, "image": "r/i:1"}
    with pytest.raises(UsageError, match="this work pool runs no images"):
        job_variables(bundled_job_template("process"), "r/i:1")


def test_experiment_names_are_git_ref_names() -> None:
    from dvcflow.dvc.remote_data import experiment_name

    assert experiment_name("fractal-seahorse") == "fractal-seahorse"
    assert experiment_name("a run: #2") == "a-run-2"
    assert experiment_name("..") == "dvcflow-run"


def test_git_s_reason_for_a_refused_push_is_the_rejected_ref_s() -> None:
    from dvcflow.dvc.gitsource import _said

    stderr = (
        "To /tmp/origin.git\n"
        " ! [remote rejected] 549375e -> refs/dvcflow/deploy/x (pre-receive hook declined)\n"
        "error: failed to push some refs to '/tmp/origin.git'\n"
    )
    assert _said(stderr) == "pre-receive hook declined"
    assert _said("fatal: 'nowhere' does not appear to be a git repository\n") == (
        "'nowhere' does not appear to be a git repository"
    )
