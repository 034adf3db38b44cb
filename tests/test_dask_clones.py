"""Stages on Dask workers that do not share the caller's disk (docs/remote.md): a real `LocalCluster` whose
two worker processes each work in a scratch folder of their own (their clones there too); the git remote a
bare repository, the DVC remote a folder."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Processes, integration_fixture
from tests.helpers import (
    CLONE_JOIN_PY,
    CLONE_STAGE_PY,
    DASK_SCRATCH_CLUSTER,
    dvc,
    dvcflow,
    free_port,
    git,
    make_chain_repo,
    make_clone_wide_repo,
    with_clone_remotes,
)
from tests.test_sweep import SCORE_PY, experiments, make_third_party_repo, tree_digest

PATIENCE = 600


@dataclass(frozen=True)
class ScratchCluster:
    address: str
    scratch: Path
    cwd_log: Path  # every stage command appends its working directory here


@integration_fixture
def scratch_cluster(tmp_path: Path, client_env: dict[str, str]) -> Iterator[ScratchCluster]:
    """Two worker processes, each in a scratch folder of its own (its HOME and clones there), run by a
    process of their own."""
    port = free_port()
    scratch, cwd_log = tmp_path / "scratch", tmp_path / "cwd.log"
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", DASK_SCRATCH_CLUSTER, str(port), str(scratch), str(cwd_log)],
        cwd=scratch,
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield ScratchCluster(f"tcp://127.0.0.1:{port}", scratch, cwd_log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape", ["wide", "chain"])
def test_stages_run_in_clones_and_dvc_lock_is_dvc_repro_s(
    shape: str, tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster
) -> None:
    env = client_env
    if shape == "wide":
        repo = make_clone_wide_repo(tmp_path / "repo", env, branches=4, sleep=0.2)
    else:
        repo = make_chain_repo(tmp_path / "repo", env, stages=4)
        (repo / "out" / ".gitkeep").write_text("")
        git(repo, "add", "-A", env=env)
        git(repo, "commit", "-q", "-m", "out/ in git", env=env)
    with_clone_remotes(repo, tmp_path, env)
    reference = tmp_path / "reference"
    shutil.copytree(repo, reference, symlinks=True)
    reproduced = dvc("repro", cwd=reference, env=env)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr

    ran = dvcflow(
        "run-a", "--per-stage", "--dask-address", scratch_cluster.address, "--no-shared-disk", "--json",
        "--no-show-metrics", cwd=repo, env=env, timeout=PATIENCE,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    tasks = {task["name"]: task["state"] for task in json.loads(ran.stdout)["tasks"]}
    assert {state for name, state in tasks.items() if name != "dvc push"} == {"Completed"}, tasks

    assert_as_dvc_repro(repo, reference, ".", env)
    if shape == "wide":
        assert (repo / "out" / "joined.txt").read_text() == "b0\nb1\nb2\nb3\n"
        places = scratch_cluster.cwd_log.read_text().splitlines()
        assert len(places) == 5  # four branches and the join, each once
        for place in places:
            assert Path(place).is_relative_to(scratch_cluster.scratch), place
            assert not Path(place).is_relative_to(repo), place


def assert_as_dvc_repro(
    top: Path, reference: Path, subdir: str, env: dict[str, str], locks: tuple[str, ...] = ("dvc.lock",)
) -> None:
    """The caller's git work tree `top` (its DVC root at `subdir`) after a run in clones is what a local `dvc
    repro` left in `reference`: the `dvc.lock` files byte for byte, `dvc status` clean, the same `git status`
    and `.gitignore` files (the outputs in git's ignore lists, in `dvc repro`'s order)."""
    for lock in locks:
        assert (top / subdir / lock).read_text() == (reference / subdir / lock).read_text(), lock
    status = dvc("status", "--json", cwd=top / subdir, env=env)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    shown = [
        git(tree, "status", "--porcelain", "--untracked-files=all", env=env) for tree in (top, reference)
    ]
    assert shown[0] == shown[1], shown
    ignores = [
        {
            path.relative_to(tree): path.read_text()
            for path in tree.rglob(".gitignore")
            if ".git" not in path.parts
        }
        for tree in (top, reference)
    ]
    assert ignores[0] == ignores[1], ignores


CWD_LOGGER = """\
import os
if os.environ.get("CWD_LOG"):
    with open(os.environ["CWD_LOG"], "a") as log:
        log.write(os.getcwd() + "\\n")
"""


@pytest.mark.timeout(600)
def test_a_sweep_on_workers_without_the_disk_brings_its_experiments_home(
    tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster
) -> None:
    """Each trial in a worker's clone: `dvc exp show` here lists both experiments with the metrics a local
    `dvc exp run -S` gives; no stage ran in this repository, which did not change."""
    env = client_env
    repo = make_third_party_repo(tmp_path / "repo", env)
    sweep = ["sweep", "-S", "conf/hp.yaml:scale=1,2", "--dask-address", scratch_cluster.address]
    refused = dvcflow(*sweep, "--no-shared-disk", cwd=repo, env=env)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert [line for line in refused.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: no git remote: a worker on another machine clones the repository from one"
    ], refused.stderr
    with_clone_remotes(repo, tmp_path, env)
    (repo / "score.py").write_text(CWD_LOGGER + SCORE_PY)  # each stage says where it ran
    git(repo, "commit", "-q", "-am", "score.py logs where it runs", env=env)  # not on the git remote
    reference = tmp_path / "reference"
    shutil.copytree(repo, reference, symlinks=True)
    for scale in (1, 2):
        ran = dvc("exp", "run", "-S", f"conf/hp.yaml:scale={scale}", "--name", f"local-{scale}",
                  cwd=reference, env=env)  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
    local = {data["params"]["conf/hp.yaml"]["data"]["scale"]: data["metrics"]  # type: ignore[index]
             for data in experiments(reference, env).values()}  # fmt: skip
    before, head = tree_digest(repo), git(repo, "rev-parse", "HEAD", env=env).strip()

    swept = dvcflow(*sweep, "--no-shared-disk", "--json", cwd=repo, env=env, timeout=PATIENCE)

    assert swept.returncode == 0, swept.stdout + swept.stderr
    pushed = f"Pushed {head[:9]} to origin as refs/dvcflow/deploy/dask-{head[:12]} (no branch moved)"
    assert pushed in swept.stderr, swept.stderr
    trials = json.loads(swept.stdout)["trials"]
    assert [(trial["conf/hp.yaml:scale"], trial["total"], trial["state"]) for trial in trials] == [
        ("1", 4, "Completed"), ("2", 7, "Completed"),
    ]  # fmt: skip
    saved = experiments(repo, env)  # pulled home: listed here as a local sweep's trials are
    assert set(saved) == {trial["name"] for trial in trials}
    for data in saved.values():
        assert data["metrics"] == local[data["params"]["conf/hp.yaml"]["data"]["scale"]]  # type: ignore[index]
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps", env=env).splitlines()
    assert sorted(ref.rsplit("/", 1)[-1] for ref in refs) == sorted(saved)
    assert all(ref.startswith(f"refs/exps/{head[:2]}/{head[2:]}/") for ref in refs), refs
    assert tree_digest(repo) == before and git(repo, "rev-parse", "HEAD", env=env).strip() == head
    places = scratch_cluster.cwd_log.read_text().splitlines()
    assert len(places) == 4  # score@a and score@bb of each trial, each once
    for place in places:
        assert Path(place).is_relative_to(scratch_cluster.scratch), place
        assert not Path(place).is_relative_to(repo), place


PID_LOGGER = """\
import os
if os.environ.get("CWD_LOG"):
    with open(os.environ["CWD_LOG"], "a") as log:
        log.write(f"{os.getcwd()} {os.getpid()}\\n")
"""


@pytest.mark.timeout(600)
def test_ctrl_c_on_a_sweep_in_clones_ends_cancelled_stops_the_workers_trials_and_says_how_to_pull(
    tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster, processes: Processes
) -> None:
    """Trial 1 (no sleep) completes in its clone and pushes its experiment; trial 2 sleeps in its stage on
    the other worker. Ctrl-C: the sweep ends Cancelled (130) with its table, trial 2's stage command on the
    worker is stopped (not left to run to its end), and the command the sweep prints brings trial 1 home."""
    env = client_env
    repo = make_third_party_repo(tmp_path / "repo", env)
    with_clone_remotes(repo, tmp_path, env)
    (repo / "score.py").write_text(PID_LOGGER + SCORE_PY)  # each stage says where it runs, and its pid
    git(repo, "commit", "-q", "-am", "score.py logs its pid", env=env)
    origin = tmp_path / "origin.git"
    sweep = processes.start(
        [sys.executable, "-m", "dvcflow", "sweep", "-S", "conf/hp.yaml:sleep=0,120", "--jobs", "2", "--json",
         "--dask-address", scratch_cluster.address, "--no-shared-disk"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + PATIENCE
    log = scratch_cluster.cwd_log
    while sweep.poll() is None and not (  # trial 1 pushed; trial 2 sleeps in `score@a`
        git(origin, "for-each-ref", "refs/exps", env=env).strip()
        and log.exists()
        and len(log.read_text().splitlines()) >= 3
    ):
        assert time.monotonic() < deadline, "the trials never got there"
        time.sleep(0.2)
    assert sweep.poll() is None, sweep.communicate()
    sleeping = [int(line.rsplit(" ", 1)[1]) for line in log.read_text().splitlines()]
    sweep.send_signal(signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=120)

    assert sweep.returncode == 130, stdout + stderr
    report = json.loads(stdout)
    assert report["flow_run"]["state"] == "Cancelled", report
    trials = report["trials"]
    assert [(trial["conf/hp.yaml:sleep"], trial["state"]) for trial in trials] == [
        ("0", "Completed"), ("120", "Cancelled"),
    ], trials  # fmt: skip
    for pid in sleeping:  # trial 2's stage command was stopped on its worker
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    done = trials[0]["name"]
    notes = [note for note in report["notes"] if "dvc exp pull" in note]
    assert len(notes) == 1 and notes[0].endswith(f"dvc exp pull {origin} {done}"), report["notes"]
    assert experiments(repo, env) == {}  # nothing ran here after the Ctrl-C
    pulled = dvc("exp", "pull", str(origin), done, cwd=repo, env=env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert set(experiments(repo, env)) == {done}


TALLY_PY = """\
import json, os, pathlib
if os.environ.get("CWD_LOG"):
    with open(os.environ["CWD_LOG"], "a") as log:
        log.write(os.getcwd() + "\\n")
text = pathlib.Path("../out/fetch.txt").read_text()
pathlib.Path("../out/tally.txt").write_text(text * 2)
json.dump({"lines": text.count("\\n")}, open("../tally.json", "w"))
"""

ROOT_DVC_YAML = """\
stages:
  branch:
    foreach: [b0, b1]
    do:
      cmd: python stage.py ${item} 0.1
      deps: [stage.py]
      outs:
        - out/${item}.txt
  join:
    cmd: python join.py
    deps: [join.py, out/b0.txt, out/b1.txt, sub/out/tally.txt]
    outs: [out/joined.txt]
"""

NESTED_DVC_YAML = """\
stages:
  fetch:
    cmd: python ../stage.py fetch 0.1
    deps:
      - ../stage.py
      - ../out/b0.txt
    outs:
      - out/fetch.txt
  tally:
    wdir: work
    cmd: python tally.py
    deps:
      - tally.py
      - ../out/fetch.txt
    outs:
      - ../out/tally.txt
    metrics:
      - ../tally.json:
          cache: false
"""


def make_nested_repo(top: Path, env: dict[str, str], subdir: str) -> Path:
    """The wide pipeline (2 branches and a join) whose join also depends on two stages of `sub/dvc.yaml`
    (one in `sub/`, one with `wdir: work`, an uncached metrics file; `fetch` depends on a root stage's
    output), with the DVC root at `subdir` of the git work tree ("." : the same). Committed; the DVC root."""
    root = top / subdir
    root.mkdir(parents=True)
    git(top, "init", "-q", "-b", "main", env=env)
    init = dvc("init", "-q", *(["--subdir"] if subdir != "." else []), cwd=root, env=env)
    assert init.returncode == 0, init.stderr
    (root / "stage.py").write_text(CLONE_STAGE_PY)
    (root / "join.py").write_text(CLONE_JOIN_PY)
    for folder in ("out", "sub/out"):
        (root / folder).mkdir(parents=True)
        (root / folder / ".gitkeep").write_text("")
    (root / "sub/work").mkdir()
    (root / "sub/work/tally.py").write_text(TALLY_PY)
    (root / "sub/dvc.yaml").write_text(NESTED_DVC_YAML)
    (root / "dvc.yaml").write_text(ROOT_DVC_YAML)
    git(top, "add", "-A", env=env)
    git(top, "commit", "-q", "-m", "a pipeline in two dvc.yaml files", env=env)
    return root


@pytest.mark.timeout(600)
@pytest.mark.parametrize("subdir", [".", "proj"], ids=["nested-dvc-yaml", "dvc-root-in-a-git-subfolder"])
def test_stages_of_a_nested_dvc_yaml_run_in_clones_and_write_their_own_dvc_lock(
    subdir: str, tmp_path: Path, client_env: dict[str, str], scratch_cluster: ScratchCluster
) -> None:
    """Stages of `sub/dvc.yaml` (one with a `wdir`) between root stages, the DVC root the git work tree's
    or a folder of it: each lock file (`sub/dvc.lock` too) is `dvc repro`'s, then again after a commit
    changes a `sub/dvc.yaml` stage, which runs in a new worktree with the lock files left uncommitted."""
    env = client_env
    top, reference = tmp_path / "top", tmp_path / "reference"
    repo = make_nested_repo(top, env, subdir)
    with_clone_remotes(repo, tmp_path, env)
    shutil.copytree(top, reference, symlinks=True)
    run = ["run-a", "--per-stage", "--dask-address", scratch_cluster.address, "--no-shared-disk", "--json",
           "--no-show-metrics"]  # fmt: skip

    stages = ["branch@b0", "branch@b1", "sub/dvc.yaml:fetch", "sub/dvc.yaml:tally", "join"]
    for second, commands_so_far in ((False, 5), (True, 7)):  # all 5 stages; then tally (changed), the join
        if second:
            for tree in (top, reference):  # tally writes 3 copies now: tally and the join run again
                tally = tree / subdir / "sub/work/tally.py"
                tally.write_text(tally.read_text().replace("text * 2", "text * 3"))
                git(tree, "commit", "-q", "-am", "tally x3", env=env)
        reproduced = dvc("repro", cwd=reference / subdir, env=env)
        assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr

        ran = dvcflow(*run, cwd=repo, env=env, timeout=PATIENCE)

        assert ran.returncode == 0, ran.stdout + ran.stderr
        tasks = {
            task["name"]: task["state"] for task in json.loads(ran.stdout)["tasks"] if task["name"] in stages
        }
        assert tasks == {
            name: "UpToDate" if second and index < 3 else "Completed" for index, name in enumerate(stages)
        }, tasks
        assert_as_dvc_repro(top, reference, subdir, env, locks=("dvc.lock", "sub/dvc.lock"))
        for output in ("out/joined.txt", "sub/out/fetch.txt", "sub/out/tally.txt", "sub/tally.json"):
            assert (repo / output).read_bytes() == (reference / subdir / output).read_bytes(), output
        places = scratch_cluster.cwd_log.read_text().splitlines()
        assert len(places) == commands_so_far, places  # each stage that ran, once
        for place in places:
            assert Path(place).is_relative_to(scratch_cluster.scratch), place
            assert not Path(place).is_relative_to(top), place


# Units: no process, no server.


def test_shared_disk_without_a_dask_address_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    from dvcflow.core.errors import UsageError
    from dvcflow.services.sweep import run_sweep

    with pytest.raises(UsageError) as refused:
        run_sweep(tmp_path / "nowhere", set_params=["train.C=1,2"], shared_disk=False)
    assert refused.value.message == "--shared-disk needs --dask-address"


def test_workers_that_all_see_the_repository_run_the_stages_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvcflow.services import remote_stages

    (tmp_path / ".dvc").mkdir()
    seen: list[str] = []
    monkeypatch.setattr(
        remote_stages, "ask_workers", lambda *_: {"tcp://a": (True, True), "tcp://b": (True, True)}
    )
    assert remote_stages.plan_clones(tmp_path, "tcp://s:1", None, seen.append) is None
    assert seen == ["Dask workers see this repository (2 of 2): stages run in it"]
    assert not list((tmp_path / ".dvc" / "tmp").iterdir())  # the token file is gone


def test_a_worker_without_dvcflow_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvcflow.core.errors import ConfigError
    from dvcflow.services import remote_stages

    (tmp_path / ".dvc").mkdir()
    answers = {"tcp://a:1": (True, False), "tcp://b:2": (False, False)}
    monkeypatch.setattr(remote_stages, "ask_workers", lambda *_: answers)
    with pytest.raises(ConfigError) as refused:
        remote_stages.plan_clones(tmp_path, "tcp://s:1", None, lambda _: None)
    assert refused.value.message == "1 of 2 Dask workers lack dvcflow: tcp://b:2"
    assert refused.value.hint == "install it where the workers run: pip install 'dvcflow[dask]'"


def test_entries_go_to_their_own_dvc_lock_in_dvc_repro_s_order(tmp_path: Path) -> None:
    """Stages of two `dvc.yaml` files, finished in any order: each entry in its own file, new ones after
    those already there in `dvc repro`'s order; what a clone starts from is the same, written nowhere, and
    names the lock file the caller lacks (a reused worktree then drops its own)."""
    import yaml

    from dvcflow.core.clones import CloneResult
    from dvcflow.dvc.clone_stage import lock_text, write_lock

    (tmp_path / "sub").mkdir()
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  old:\n    cmd: echo old\n")
    finished = [
        CloneResult("join", "dvc.lock", "join", {"cmd": "join"}),
        CloneResult("sub/dvc.yaml:tally", "sub/dvc.lock", "tally", {"cmd": "tally"}),
        CloneResult("branch@b0", "dvc.lock", "branch@b0", {"cmd": "b0"}),
        CloneResult("sub/dvc.yaml:fetch", "sub/dvc.lock", "fetch", {"cmd": "fetch"}),
    ]
    order = ["branch@b0", "sub/dvc.yaml:fetch", "sub/dvc.yaml:tally", "join"]

    texts = json.loads(lock_text(tmp_path, finished, order, ["dvc.lock", "sub/dvc.lock", "other/dvc.lock"]))

    assert not (tmp_path / "sub" / "dvc.lock").exists()
    assert texts["other/dvc.lock"] is None
    assert list(yaml.safe_load(texts["dvc.lock"])["stages"]) == ["old", "branch@b0", "join"]
    sub = yaml.safe_load(texts["sub/dvc.lock"])["stages"]
    assert list(sub.items()) == [("fetch", {"cmd": "fetch"}), ("tally", {"cmd": "tally"})]
    write_lock(tmp_path, finished, order)
    assert (tmp_path / "dvc.lock").read_text() == texts["dvc.lock"]
    assert (tmp_path / "sub" / "dvc.lock").read_text() == texts["sub/dvc.lock"]


def test_a_stage_in_a_clone_is_submitted_to_a_worker_with_what_it_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CloneLauncher` submits a stage to reproduce inside the Dask annotation of its grant, as the
    in-place launcher does, so a `gpu: 1` stage lands only on a worker started with `--resources GPU=1`
    (the clone task was submitted without it, to any worker)."""
    from types import SimpleNamespace

    import dask

    from dvcflow.core.clones import CloneSource
    from dvcflow.core.graph import Decision, PlannedStage
    from dvcflow.core.resources import Demand, Grant, Resources
    from dvcflow.dvc import clone_stage
    from dvcflow.engine import clone_task
    from dvcflow.engine.scheduler import Action

    annotations: list[dict[str, object]] = []

    class Submitted:
        task_run_id = None

        def add_done_callback(self, _callback: object) -> None:
            pass

    class FakeTask:
        def with_options(self, **_options: object) -> FakeTask:
            return self

        def submit(self, *_args: object, **_kwargs: object) -> Submitted:
            annotations.append(dict(dask.get_annotations()))
            return Submitted()

    monkeypatch.setattr(clone_task, "clone_stage_task", FakeTask())
    monkeypatch.setattr(clone_stage, "sent_files", lambda _root: ("dvc.lock",))
    monkeypatch.setattr(clone_stage, "lock_text", lambda *_args: "{}")
    session: Any = SimpleNamespace(spec=lambda _name: SimpleNamespace(deps=()))
    demand = Demand(resources=(("gpu", 1),))
    launcher = clone_task.CloneLauncher(
        tmp_path,
        session,
        CloneSource("url", "0" * 40, "."),
        order=["train"],
        retries=0,
        resources=Resources(demands={"train": demand}, dask=True),
    )
    stage = PlannedStage("train", 1, Decision.CHANGED, "changed", (), demand=demand)

    launcher.launch(stage, Action.RUN, "changed", (), Grant(demand))

    assert annotations == [{"resources": {"GPU": 1}}]
