"""`dvcflow deploy --on-change` and `dvcflow watch` (issue 25): watchers that emit Prefect events, and the
deployment trigger that turns each into a run. Real server, real serving processes, real git remotes and
DVC imports; the pure parts (the change value, which paths count, the debounce window) as unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, Repos
from tests.helpers import api_post, dvc, dvcflow, git, make_tiny_repo
from tests.test_deploy import PATIENCE, Served, api, deployment_id, serving, unique

COUNT_PY = """\
import os
open("count.txt", "w").write(f"{len(os.listdir('data'))} files\\n")
"""
STAGES = """\
stages:
  count:
    cmd: python count.py
    deps: [data, count.py]
    outs: [count.txt]
"""
EVENT = "dvcflow.repository.changed"
# From a write to its run's start: the bound.
RUN_WITHIN_S = 15
# How long a change that does not count is given to start a run anyway. The debounce window is 2 s, and the
# server's trigger created each run here within 1 s of its event (the runs of the first test: event 2.0-2.3
# s after the write, run created 0.1-0.6 s later), so a run a change would start exists 3 s after it; 12 s
# is four times that, instead of the 20 s.
QUIET_S = 12


def make_watched_repo(root: Path, env: dict[str, str]) -> Path:
    """A committed git+DVC repository: stage `count` depends on the folder `data` and on `count.py`;
    `README.md` and `notes/` are no stage's input."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.csv").write_text("1\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("nothing\n")
    (root / "README.md").write_text("# watched\n")
    (root / "count.py").write_text(COUNT_PY)
    return make_tiny_repo(root, env, stages=STAGES)


def watching(seen: list[str]) -> bool:
    return any(line.startswith("Watching ") for line in seen)


def printed(served: Served) -> list[str]:
    """Every line the process has printed by now."""
    while not served.lines.empty():
        served.seen.append(served.lines.get_nowait())
    return served.seen


def runs_of(live_server: LiveServer, deployment: str) -> list[dict[str, Any]]:
    """The deployment's flow runs, oldest first."""
    runs = api_post(
        live_server.api_url,
        "/flow_runs/filter",
        {"deployments": {"id": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"},
    )
    assert isinstance(runs, list)
    return sorted(runs, key=lambda run: run["created"])


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`check()` once it is truthy; polls the API (records written asynchronously), bounded above."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def wait_for_runs(
    live_server: LiveServer, deployment: str, count: int, timeout: float
) -> list[dict[str, Any]]:
    return wait_until(
        lambda: (runs := runs_of(live_server, deployment)) and len(runs) >= count and runs,
        timeout,
        f"{count} run(s) of deployment {deployment}",
    )


def finished(live_server: LiveServer, run_id: str, timeout: float = PATIENCE) -> dict[str, Any]:
    return wait_until(
        lambda: (
            (run := api(live_server, "GET", f"/flow_runs/{run_id}"))["state"]["type"]
            in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            and run
        ),
        timeout,
        f"the end of flow run {run_id}",
    )


def seconds_after(stamp: str, since: float) -> float:
    return datetime.fromisoformat(stamp).timestamp() - since


def logs_of(live_server: LiveServer, run_id: str, *expected: str) -> str:
    """The flow run's log, once it holds every `expected` text (the server stores logs a moment after
    the run sends them)."""

    def text() -> str | None:
        logs = api_post(live_server.api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
        assert isinstance(logs, list)
        joined = "\n".join(log["message"] for log in logs)
        return joined if all(item in joined for item in expected) else None

    return str(wait_until(text, 30, f"{expected} in the log of flow run {run_id}"))


def repo_resource(repo: Path) -> str:
    from dvcflow.core.identity import repo_identity

    return f"dvcflow.repo.{repo_identity(repo).id}"


@pytest.mark.timeout(900)  # three runs and two quiet periods; a loaded 2-CPU machine is slow
def test_dependency_writes_start_one_run_each_window_and_other_files_none(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    repo = make_watched_repo(tmp_path / "repo", client_env)
    name = unique("onchange")
    with serving(repo, client_env, "--on-change", "--name", name) as served:
        lines = served.wait_for(watching, PATIENCE)
        assert (
            f"Deployment 'dvcflow pipeline/{name}' (on demand and on change), served from this process."
            in lines
        )
        assert "Watching 2 inputs (count.py, data); changes less than 2 s apart start one run." in lines
        deployment = deployment_id(lines)

        # One new file in the dependency folder: one run, started within 15 s of the write.
        written = time.time()
        (repo / "data" / "b.csv").write_text("2\n")
        first = wait_for_runs(live_server, deployment, 1, RUN_WITHIN_S)[0]
        first = finished(live_server, first["id"])
        assert first["state"]["type"] == "COMPLETED", first["state"]
        started = seconds_after(first["start_time"], written)
        print(
            f"write -> run created {seconds_after(first['created'], written):.1f} s, started {started:.1f} s"
        )
        assert started <= RUN_WITHIN_S
        assert first["parameters"]["change"]["kind"] == "files"
        assert first["parameters"]["change"]["paths"] == ["data/b.csv"]
        assert (repo / "count.txt").read_text() == "2 files\n"

        # Five writes within the debounce window (2 s): one run, for all five.
        written = time.time()
        for index in range(5):
            (repo / "data" / f"c{index}.csv").write_text(f"{index}\n")
            time.sleep(0.1)
        second = wait_for_runs(live_server, deployment, 2, RUN_WITHIN_S)[1]
        second = finished(live_server, second["id"])
        assert second["state"]["type"] == "COMPLETED", second["state"]
        assert seconds_after(second["start_time"], written) <= RUN_WITHIN_S
        assert second["parameters"]["change"]["paths"] == [f"data/c{index}.csv" for index in range(5)]
        assert (repo / "count.txt").read_text() == "7 files\n"

        # Files no stage depends on, and the outputs the runs wrote: no event, no run.
        changes_so_far = sum(EVENT in line for line in printed(served))
        (repo / "README.md").write_text("# watched, edited\n")
        (repo / "notes" / "todo.txt").write_text("still nothing\n")
        (repo / "notes" / "new.txt").write_text("new\n")
        time.sleep(QUIET_S)  # nothing to wait for: the absence of a run is the point
        assert len(runs_of(live_server, deployment)) == 2
        assert sum(EVENT in line for line in printed(served)) == changes_so_far == 2

        # The run's log and `dvcflow runs` say what changed.
        logs_of(live_server, second["id"], f"Started by {EVENT} (event ", "data/c0.csv, data/c1.csv")
        listed = dvcflow("runs", "--json", "--limit", "2", cwd=repo, env=client_env)
        assert [row["change"] for row in json.loads(listed.stdout)] == [
            "files data/c0.csv, data/c1.csv, data/c2.csv (+2 more)",
            "files data/b.csv",
        ]

        # The events through the API, about this repository, naming the changed paths.
        events = api_post(
            live_server.api_url,
            "/events/filter",
            {"filter": {"event": {"name": [EVENT]}, "resource": {"id": [repo_resource(repo)]}}},
        )
        assert isinstance(events, dict)
        found = sorted(events["events"], key=lambda event: event["occurred"])
        assert [event["payload"]["paths"] for event in found] == [
            ["data/b.csv"],
            [f"data/c{index}.csv" for index in range(5)],
        ]
        assert [event["id"] for event in found] == [
            run["parameters"]["change"]["event_id"] for run in (first, second)
        ]
        assert {related["prefect.resource.role"] for related in found[0]["related"]} == {"changed-path"}
        assert found[0]["related"][0]["prefect.resource.id"] == "dvcflow.path.data/b.csv"

        # The trigger, on the deployment.
        automations = api(live_server, "GET", f"/automations/related-to/prefect.deployment.{deployment}")
        assert [automation["name"] for automation in automations] == [f"{name}: run on change"]
        trigger = automations[0]["trigger"]
        assert trigger["expect"] == [EVENT]
        assert trigger["match"] == {"prefect.resource.id": repo_resource(repo)}
        assert trigger["posture"] == "Reactive" and trigger["threshold"] == 1
        assert automations[0]["actions"][0]["type"] == "run-deployment"
        assert automations[0]["actions"][0]["parameters"]["change"]  # the event's payload, templated

        assert served.interrupt() == 0
        assert served.survivors() == []


def test_dvcflow_watch_beside_a_pool_deployment_queues_runs_and_ctrl_c_leaves_nothing(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    """`deploy --pool --shared-disk --on-change` registers the trigger and a concurrency of one, and says
    how to watch; `dvcflow watch` sends the events; with no worker the run stays Scheduled, enough here."""
    repo = make_watched_repo(tmp_path / "repo", client_env)
    pool, name = unique("pool"), unique("watched")
    args = ("deploy", "--pool", pool, "--shared-disk", "--name", name)
    registered = dvcflow(*args, "--on-change", "--debounce", "1", cwd=repo, env=client_env)
    assert registered.returncode == 0, registered.stderr
    assert f"(on demand and on change), in work pool '{pool}'." in registered.stdout
    assert "Runs start on change while the watchers run: dvcflow watch --debounce 1" in registered.stdout
    deployment = deployment_id(registered.stdout.splitlines())
    details = api(live_server, "GET", f"/deployments/{deployment}")
    assert details["global_concurrency_limit"]["limit"] == 1
    assert details["concurrency_options"]["collision_strategy"] == "ENQUEUE"

    with serving(repo, client_env, "--debounce", "1", command="watch") as watch:
        assert "changes less than 1 s apart start one run" in watch.wait_for(watching, PATIENCE)[-1]
        written = time.time()
        (repo / "data" / "b.csv").write_text("2\n")
        run = wait_for_runs(live_server, deployment, 1, RUN_WITHIN_S)[0]
        assert seconds_after(run["created"], written) <= RUN_WITHIN_S
        assert run["parameters"]["change"]["paths"] == ["data/b.csv"]
        assert run["state"]["type"] == "SCHEDULED"  # nobody serves the pool: it waits for a worker
        lines = watch.wait_for(lambda seen: any(EVENT in line for line in seen), PATIENCE)
        assert any(f"{EVENT}: files data/b.csv  event {run['parameters']['change']['event_id']}" in line
                   for line in lines)  # fmt: skip
        assert watch.interrupt() == 0
        assert watch.process.stderr is not None
        assert "Stopped watching." in watch.process.stderr.read()
        assert watch.survivors() == []
    # Deploying again without --on-change takes the trigger off.
    again = dvcflow(*args, cwd=repo, env=client_env)
    assert again.returncode == 0, again.stderr
    assert api(live_server, "GET", f"/automations/related-to/prefect.deployment.{deployment}") == []


@pytest.mark.timeout(900)
def test_a_commit_pushed_to_the_watched_branch_starts_a_run_for_it_and_a_dirty_workspace_is_not_moved(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote), env=client_env)
    repo = make_watched_repo(tmp_path / "repo", client_env)
    git(repo, "remote", "add", "origin", str(remote), env=client_env)
    git(repo, "push", "-q", "-u", "origin", "main", env=client_env)
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other), env=client_env)

    def push(code: str) -> str:
        (other / "count.py").write_text(code)
        git(other, "commit", "-q", "-am", "count differently", env=client_env)
        git(other, "push", "-q", "origin", "main", env=client_env)
        return git(other, "rev-parse", "HEAD", env=client_env).strip()

    def run_for(deployment: str, commit: str) -> dict[str, Any]:
        return wait_until(
            lambda: next(
                (
                    run
                    for run in runs_of(live_server, deployment)
                    if (run["parameters"].get("change") or {}).get("commit") == commit
                ),
                None,
            ),
            10 + PATIENCE,  # the branch is asked every 10 s
            f"a run for commit {commit}",
        )

    with serving(
        repo, client_env, "--on-change", "--watch-branch", "main", "--name", unique("branch")
    ) as served:
        lines = served.wait_for(watching, PATIENCE)
        assert "branch origin/main (every 10 s)" in lines[-1]
        deployment = deployment_id(lines)

        pushed = push(COUNT_PY.replace("files", "data files"))
        run = finished(live_server, run_for(deployment, pushed)["id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["parameters"]["change"] == {
            "kind": "branch",
            "branch": "main",
            "remote": "origin",
            "commit": pushed,
            "event_id": run["parameters"]["change"]["event_id"],
        }
        assert git(repo, "rev-parse", "HEAD", env=client_env).strip() == pushed
        assert (repo / "count.txt").read_text() == "1 data files\n"
        logs_of(live_server, run["id"], f"Workspace: fast-forwarded main to {pushed[:12]}")

        # Uncommitted work in the workspace: the next commit's run refuses to move it, and says why.
        (repo / "README.md").write_text("# local edit, not committed\n")
        refused = push(COUNT_PY.replace("files", "files in data"))
        run = finished(live_server, run_for(deployment, refused)["id"])
        assert run["state"]["type"] == "FAILED"
        logs_of(
            live_server,
            run["id"],
            "Not moving the workspace: the workspace has uncommitted changes (README.md): not moving it to "
            f"main at {refused[:12]}",
        )
        assert git(repo, "rev-parse", "HEAD", env=client_env).strip() == pushed
        # The files the first run's checkout changed (count.py, a dependency) started no run of their own.
        runs = runs_of(live_server, deployment)
        assert [run["parameters"]["change"]["commit"] for run in runs] == [pushed, refused]
        assert served.interrupt() == 0


LINES_STAGES = """\
stages:
  lines:
    cmd: python lines.py
    deps: [imported.csv, lines.py]
    outs: [lines.txt]
"""


def make_import_repos(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A source git+DVC repository with `data.csv` tracked, and a repository that imports it (`dvc import`
    from the local path: no network) and counts its lines in stage `lines`."""
    source = tmp_path / "source"
    source.mkdir()
    git(source, "init", "-q", "-b", "main", env=env)
    assert dvc("init", "-q", cwd=source, env=env).returncode == 0
    (source / "data.csv").write_text("a\n")
    assert dvc("add", "-q", "data.csv", cwd=source, env=env).returncode == 0
    git(source, "add", "-A", env=env)
    git(source, "commit", "-q", "-m", "data v1", env=env)

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "lines.py").write_text(
        'open("lines.txt", "w").write(f"{len(open(\'imported.csv\').readlines())} lines\\n")\n'
    )
    git(repo, "init", "-q", "-b", "main", env=env)
    assert dvc("init", "-q", cwd=repo, env=env).returncode == 0
    imported = dvc("import", "-q", str(source), "data.csv", "-o", "imported.csv", cwd=repo, env=env)
    assert imported.returncode == 0, imported.stderr
    (repo / "dvc.yaml").write_text(LINES_STAGES)
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", "import and count", env=env)
    return source, repo


@pytest.mark.timeout(900)
def test_a_new_version_of_an_imported_source_starts_a_run_that_updates_the_import(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    source, repo = make_import_repos(tmp_path, client_env)
    with serving(
        repo, client_env, "--on-change", "--watch-imports", "3", "--name", unique("imports")
    ) as served:
        lines = served.wait_for(watching, PATIENCE)
        assert "Watching 1 input (lines.py), 1 import (every 3 s)" in lines[-1]
        deployment = deployment_id(lines)

        (source / "data.csv").write_text("a\nb\n")
        assert dvc("add", "-q", "data.csv", cwd=source, env=client_env).returncode == 0
        git(source, "commit", "-q", "-am", "data v2", env=client_env)

        run = finished(live_server, wait_for_runs(live_server, deployment, 1, PATIENCE)[0]["id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["parameters"]["change"]["kind"] == "imports"
        assert run["parameters"]["change"]["imports"] == ["imported.csv.dvc"]
        assert (repo / "imported.csv").read_text() == "a\nb\n"
        assert (repo / "lines.txt").read_text() == "2 lines\n"
        logs_of(live_server, run["id"], "Running: dvc update imported.csv.dvc", "Running stage 'lines'")
        # Updated: no second event for the same version (the next checks find it up to date).
        time.sleep(QUIET_S)
        assert len(runs_of(live_server, deployment)) == 1
        assert served.interrupt() == 0


# Bad input, refused before Prefect is contacted (no server answers in the `repos` fixture's environment:
# a check that came after connecting would fail with a server error instead).
def test_bad_watch_input_is_one_error_line(tmp_path: Path, repos: Repos) -> None:
    nothing = repos.tiny(tmp_path / "nothing")  # one stage, no deps
    watched = make_watched_repo(tmp_path / "watched", repos.env)
    remote = tmp_path / "remote.git"
    repos.git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    with_remote = make_watched_repo(tmp_path / "with-remote", repos.env)
    repos.git(with_remote, "remote", "add", "origin", str(remote))
    repos.git(with_remote, "push", "-q", "origin", "main")
    no_deps = (
        f"Error: --on-change: the pipeline of {nothing} has no dependencies to watch "
        "(no stage deps, params files or .dvc-tracked data)"
    )
    cases = {
        "no-deps": (nothing, ["deploy", "--on-change"], 3, no_deps),
        "watch-no-deps": (nothing, ["watch"], 3, no_deps),
        "branch-missing": (
            with_remote,
            ["deploy", "--on-change", "--watch-branch", "nope"],
            2,
            "Error: --watch-branch nope: remote 'origin' has no branch 'nope'",
        ),
        "branch-no-remote": (
            watched,
            ["deploy", "--on-change", "--watch-branch", "main"],
            2,
            "Error: --watch-branch main: the repository has no git remote 'origin'",
        ),
        "imports-none": (
            watched,
            ["watch", "--watch-imports", "60"],
            2,
            f"Error: --watch-imports: the pipeline of {watched} has no `dvc import` or `import-url` stages",
        ),
    }
    processes = {
        case: subprocess.Popen(
            [sys.executable, "-m", "dvcflow", *args],
            cwd=where,
            env=repos.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (where, args, _, _) in cases.items()
    }
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        _, _, code, expected = cases[case]
        assert process.returncode == code, (case, stderr)
        assert [line for line in stderr.splitlines() if line.startswith("Error:")] == [expected], (
            case,
            stderr,
        )
        assert "Traceback" not in stderr and stdout == "", (case, stdout)


# ------------------------------------------------------------------------------------------ unit tests


def test_which_paths_count_as_a_change_of_the_pipeline_s_inputs() -> None:
    from dvcflow.core.changes import WatchList

    inputs = WatchList(
        deps=("data", "src/train.py"),
        params=("params.yaml",),
        sources=("raw/iris.csv",),
        outs=("data/processed", "model.pkl"),
    )
    assert inputs.watched == ("data", "params.yaml", "raw/iris.csv", "src/train.py")
    counted = ["data/new.csv", "data/sub/x.csv", "params.yaml", "raw/iris.csv", "src/train.py", "data"]
    assert all(inputs.counts(path) for path in counted)
    ignored = [
        "README.md",
        "database/x",  # a sibling whose name starts like a dependency
        "data/processed/part-0.csv",  # an output inside a dependency folder
        "data/.gitignore",  # DVC writes these next to the outputs
        "src/train.py.bak",
        "model.pkl",
    ]
    assert not any(inputs.counts(path) for path in ignored)


def test_a_change_goes_through_the_event_and_back_from_the_run_s_parameter() -> None:
    from dvcflow.core.changes import MAX_PATHS, Change

    many = Change.of_files({f"data/{index:03}.csv" for index in range(MAX_PATHS + 7)})
    assert len(many.paths) == MAX_PATHS and many.more == 7
    assert Change.from_parameter(many.to_payload()) == many
    assert many.summary() == f"files data/000.csv, data/001.csv, data/002.csv (+{MAX_PATHS + 4} more)"
    branch = Change("branch", branch="main", remote="origin", commit="0123456789abcdef", event_id="e1")
    assert Change.from_parameter(json.loads(json.dumps(branch.to_payload()))) == branch
    assert branch.summary() == "branch origin/main at 01234567"
    imports = Change("imports", imports=("data/iris.csv.dvc",))
    assert imports.summary() == "imports data/iris.csv.dvc"
    assert Change.from_parameter(None) is None
    assert Change.from_parameter({"kind": "something else"}) is None  # a custom run's own value


def test_changes_within_the_window_are_one_flush_and_the_next_opens_another() -> None:
    from dvcflow.services.watch import Debouncer

    flushed: list[set[str]] = []
    done = threading.Event()

    def flush(paths: set[str]) -> None:
        flushed.append(paths)
        done.set()

    debouncer = Debouncer(0.5, flush)
    for index in range(5):
        debouncer.add({f"data/c{index}.csv"})
    assert done.wait(10)
    assert flushed == [{f"data/c{index}.csv" for index in range(5)}]
    done.clear()
    debouncer.add({"data/late.csv"})
    assert done.wait(10)
    assert flushed[1:] == [{"data/late.csv"}]
    done.clear()
    debouncer.add({"data/never.csv"})
    debouncer.cancel()  # stopping: a window still open sends nothing
    assert not done.wait(1.0)
    assert len(flushed) == 2


def test_a_slow_copy_is_one_flush_once_it_is_quiet_and_a_batch_never_quiet_is_flushed_at_max_wait() -> None:
    """Each add restarts the wait: paths added 0.2 s apart for 1.2 s with a window of 0.5 s are one flush,
    0.5 s after the last (a fixed window from the first would have sent a half-copied folder)."""
    from dvcflow.services.watch import Debouncer

    flushed: list[tuple[float, set[str]]] = []

    def flush(paths: set[str]) -> None:
        flushed.append((time.monotonic(), paths))

    debouncer = Debouncer(0.5, flush)
    for index in range(7):
        debouncer.add({f"data/part{index}.csv"})
        last = time.monotonic()
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while not flushed and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert [paths for _, paths in flushed] == [{f"data/part{index}.csv" for index in range(7)}]
    assert flushed[0][0] - last >= 0.45

    flushed.clear()
    endless = Debouncer(0.5, flush, max_wait=1.0)  # a file written to without end
    started = time.monotonic()
    while not flushed and time.monotonic() - started < 10:
        endless.add({"data/log.csv"})
        time.sleep(0.1)
    endless.cancel()
    assert flushed and flushed[0][0] - started < 3.0, flushed


def test_runs_show_a_change_column_only_when_a_run_was_started_by_a_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dvcflow.cli.render.deploy import run_event, runs_table
    from dvcflow.services.deploy import RunEvent
    from dvcflow.services.run_history import RunRow

    plain = RunRow("1", "dvcflow pipeline", "calm-run", "demo", "Completed", None, 1.0, None)
    changed = RunRow(
        "2", "dvcflow pipeline", "busy-run", "demo", "Completed", None, 1.0, None, change="files a.csv"
    )
    runs_table((plain,), as_json=False)
    assert "Change" not in capsys.readouterr().out
    runs_table((changed, plain), as_json=False)
    shown = capsys.readouterr().out
    assert "Change" in shown and "a.csv" in shown  # the column wraps at 80 characters, not the others
    run_event(RunEvent(False, "busy-run", "Running", 0.0, None, change="branch origin/main at 01234567"))
    assert capsys.readouterr().out.endswith("busy-run: started (branch origin/main at 01234567)\n")
