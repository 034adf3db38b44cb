"""DVC parity: `dvcflow run-a ARGS` runs the stages `dvc repro ARGS` runs, and moves data like it.

One generated pipeline (a chain, a fork, a `foreach` stage, a `.dvc`-tracked source) is built and
reproduced once per module, then two of its inputs are changed so that some stages are stale. Each
differential case copies it twice and runs `dvc repro ARGS` on one copy and `dvcflow run-a ARGS` on the
other: the stages DVC reports running, and the resulting `dvc.lock`, must be equal. The remote tests push
from one clone and `--pull` in a fresh clone, against a directory remote and a WebDAV server on 127.0.0.1.

run-b against `dvc repro` on a pipeline with every stage flag that decides whether DVC runs a stage
(`always_changed`, `frozen`, `persist` and `cache: false` outputs, a stage without deps or outputs), step
by step from a freshly reproduced repository; and both engines under a concurrent `dvc repro`, which DVC's
locks must refuse as they refuse a second `dvc repro`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Processes, integration_fixture
from tests.helpers import base_env, dvc, dvcflow, git, make_tiny_repo, webdav_server

STEP_PY = """\
import sys
out, *inputs = sys.argv[1:]
text = "".join(open(name).read() for name in inputs)
with open(out, "w") as f:
    f.write(f"{out}<{text}>")
"""


def _stage(out: str, *inputs: str) -> dict[str, object]:
    return {"cmd": f"python step.py {out} {' '.join(inputs)}", "deps": ["step.py", *inputs], "outs": [out]}


PIPELINE = {
    "stages": {
        "src": _stage("src.txt", "raw.txt"),
        "chain1": _stage("c1.txt", "src.txt"),
        "chain2": _stage("c2.txt", "c1.txt"),
        "fork_left": _stage("left.txt", "c1.txt", "left.cfg"),
        "fork_right": _stage("right.txt", "c1.txt"),
        "each": {"foreach": ["x", "y"], "do": _stage("each-${item}.txt", "src.txt", "${item}.cfg")},
        "join": _stage("join.txt", "c2.txt", "left.txt", "right.txt", "each-x.txt", "each-y.txt"),
    }
}
STALE = ("fork_left", "each@x")  # their own inputs change after the first `dvc repro`


def build_pipeline(root: Path, env: dict[str, str]) -> Path:
    """The generated pipeline, reproduced and committed, then `left.cfg` and `x.cfg` changed."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main", env=env)
    assert dvc("init", "-q", cwd=root, env=env).returncode == 0
    (root / "step.py").write_text(STEP_PY)
    for name in ("raw.txt", "left.cfg", "x.cfg", "y.cfg"):
        (root / name).write_text(name)
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    for args in (("add", "-q", "raw.txt"), ("repro", "-q")):
        done = dvc(*args, cwd=root, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    (root / "left.cfg").write_text("left, changed")
    (root / "x.cfg").write_text("x, changed")
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "generated pipeline, two inputs changed since the last repro", env=env)
    return root


@integration_fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    return build_pipeline(root / "pipeline", base_env(root))


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def dvc_ran(output: str) -> list[str]:
    return re.findall(r"^Running stage '(.+)':$", output, flags=re.MULTILINE)


def run_json(args: list[str], repo: Path, env: dict[str, str]) -> dict[str, object]:
    result = dvcflow("run-a", *args, "--json", "--no-show-metrics", cwd=repo, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def stages_of(data: dict[str, object], kind: str) -> list[str]:
    stages = data["stages"]
    assert isinstance(stages, dict)
    return list(stages[kind])


# (arguments, the stages that run): the expectation keeps the comparison with DVC from passing vacuously.
CASES = [
    ([], {"fork_left", "each@x", "join"}),
    (["-s", "join"], set()),
    (["-s", "-f", "join"], {"join"}),
    (["-f", "chain2"], {"src", "chain1", "chain2"}),
    (["--downstream", "-f", "chain1"], {"chain1", "chain2", "fork_left", "fork_right", "join"}),
    (["--glob", "fork_*"], {"fork_left"}),
    (["--glob", "-s", "each@*"], {"each@x"}),
    (["each"], {"each@x"}),
    (["--glob", "--downstream", "*left"], {"fork_left", "join"}),
    (["-s", "-f", "dvc.yaml:chain2", "fork_right"], {"chain2", "fork_right"}),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) or "(all)" for a, _ in CASES])
def test_run_a_runs_the_stages_dvc_repro_runs(
    pipeline: Path, tmp_path: Path, client_env: dict[str, str], args: list[str], expected: set[str]
) -> None:
    by_dvc = copy_of(pipeline, tmp_path / "dvc")
    by_dvcflow = copy_of(pipeline, tmp_path / "dvcflow")
    env = client_env
    reference = subprocess.Popen(  # DVC's own run goes on while dvcflow's does
        [sys.executable, "-m", "dvc", "repro", *args],
        cwd=by_dvc,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    data = run_json(args, by_dvcflow, env)
    dvc_output, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, dvc_output
    assert stages_of(data, "ran") == dvc_ran(dvc_output)
    assert set(stages_of(data, "ran")) == expected
    assert (by_dvcflow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text()
    assert [task["name"] for task in data["tasks"]] == ["dvc repro"]  # type: ignore[index]


# The engine under `--per-stage` picks stages with the same arguments: a subset of the cases above, chosen
# to cover targets, -s, -f, --downstream and --glob once each (every case costs a real flow run).
PER_STAGE_CASES = [CASES[0], CASES[2], CASES[4], CASES[6], CASES[9]]


@pytest.mark.parametrize(
    ("args", "expected"), PER_STAGE_CASES, ids=[" ".join(a) or "(all)" for a, _ in PER_STAGE_CASES]
)
def test_run_a_per_stage_runs_the_stages_dvc_repro_runs(
    pipeline: Path, tmp_path: Path, client_env: dict[str, str], args: list[str], expected: set[str]
) -> None:
    by_dvc = copy_of(pipeline, tmp_path / "dvc")
    by_dvcflow = copy_of(pipeline, tmp_path / "dvcflow")
    reference = dvc("repro", *args, cwd=by_dvc, env=client_env)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    result = dvcflow(
        "run-a", "--per-stage", *args, "--json", "--no-show-metrics", cwd=by_dvcflow, env=client_env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    ran = {
        task["name"] for task in tasks if task["state"] == "Completed" and not task["name"].endswith(".dvc")
    }
    assert ran == set(dvc_ran(reference.stdout)) == expected
    assert (by_dvcflow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text()


# Real remotes: a directory, and a WebDAV server on 127.0.0.1 run by the test.


@integration_fixture
def webdav_url(tmp_path: Path) -> Iterator[str]:
    """A WebDAV server (wsgidav on cheroot) on a free loopback port, in a thread of this process."""
    with webdav_server(tmp_path / "webdav") as url:
        yield url


@pytest.fixture(params=["directory", "webdav"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "webdav":
        return str(request.getfixturevalue("webdav_url"))
    (tmp_path / "store").mkdir()
    return str(tmp_path / "store")


def test_push_then_pull_in_a_fresh_clone_reruns_nothing(
    pipeline: Path, tmp_path: Path, client_env: dict[str, str], remote_url: str
) -> None:
    env = client_env
    origin = copy_of(pipeline, tmp_path / "origin")
    assert dvc("remote", "add", "-d", "store", remote_url, cwd=origin, env=env).returncode == 0
    pushed = run_json(["--push"], origin, env)
    assert set(stages_of(pushed, "ran")) == {*STALE, "join"}
    assert [(t["name"], t["state"]) for t in pushed["tasks"]] == [  # type: ignore[index, union-attr]
        ("dvc repro", "Completed"),
        ("dvc push", "Completed"),
    ]
    git(origin, "add", "-A", env=env)
    git(origin, "commit", "-q", "-m", "reproduced and pushed", env=env)

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone), env=env)
    assert not (clone / "raw.txt").exists() and not (clone / "join.txt").exists()
    if "webdav" not in remote_url:  # the same pre-flight either way; once is enough
        # Without --pull the missing source is one line before any flow run, naming the way out.
        refused = dvcflow("run-a", cwd=clone, env=env, timeout=60)
        assert refused.returncode == 3  # bad input: nothing ran
        assert refused.stderr.splitlines() == [
            "Error: raw.txt is missing (tracked by raw.txt.dvc): fetch it from remote 'store' with --pull"
        ]
    pulled = run_json(["--pull"], clone, env)
    assert stages_of(pulled, "ran") == []
    assert set(stages_of(pulled, "pulled")) == {
        "raw.txt.dvc",
        *("src", "chain1", "chain2", "fork_left", "fork_right", "each@x", "each@y", "join"),
    }
    status = dvc("status", "--json", cwd=clone, env=env)
    assert json.loads(status.stdout) == {}
    assert (clone / "join.txt").read_text() == (origin / "join.txt").read_text()


def test_run_a_per_stage_pushes_what_the_selected_stages_wrote(
    pipeline: Path, tmp_path: Path, client_env: dict[str, str]
) -> None:
    """`--per-stage --push`: the stages run in the engine, then one `dvc push` task uploads the outputs of
    the selected stages (here `join` and what it depends on), as run-a's does."""
    env = client_env
    origin = copy_of(pipeline, tmp_path / "origin")
    (tmp_path / "store").mkdir()
    assert dvc("remote", "add", "-d", "store", str(tmp_path / "store"), cwd=origin, env=env).returncode == 0
    pushed = run_json(["join", "--per-stage", "--push"], origin, env)
    tasks = pushed["tasks"]
    assert isinstance(tasks, list)
    assert (tasks[-1]["name"], tasks[-1]["state"]) == ("dvc push", "Completed")
    assert {task["state"] for task in tasks[:-1]} <= {"Completed", "UpToDate"}
    cloud = dvc("status", "--cloud", "--json", "join", "--with-deps", cwd=origin, env=env)
    assert cloud.returncode == 0 and json.loads(cloud.stdout) == {}, cloud.stdout
    assert any((tmp_path / "store").rglob("*")), "nothing reached the remote"


def test_a_fresh_clone_without_pull(pipeline: Path, tmp_path: Path, client_env: dict[str, str]) -> None:
    """--allow-missing skips stages that only lack their data, as `dvc repro --allow-missing` does; a
    stage whose input is missing fails once, without a retry (none could help)."""
    env = client_env
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(pipeline), str(clone), env=env)
    reference = copy_of(clone, tmp_path / "reference")
    allowed = run_json(["--allow-missing", "chain2"], clone, env)
    by_dvc = dvc("repro", "--allow-missing", "chain2", cwd=reference, env=env)
    assert by_dvc.returncode == 0, by_dvc.stdout + by_dvc.stderr
    assert stages_of(allowed, "ran") == dvc_ran(by_dvc.stdout + by_dvc.stderr) == []
    assert stages_of(allowed, "skipped") == ["raw.txt.dvc", "src", "chain1", "chain2"]

    failed = dvcflow("run-a", "-s", "chain1", "--retries", "3", "--json", cwd=clone, env=env)
    assert failed.returncode == 1
    data = json.loads(failed.stdout)
    assert [(t["name"], t["state"], t["attempts"]) for t in data["tasks"]] == [("dvc repro", "Failed", 1)]
    assert "src.txt" in data["tasks"][0]["message"]
    assert "Retry" not in failed.stderr
    assert data["stages"] == {  # failed before its cmd: not among those that ran
        "ran": [], "skipped": [], "pulled": [], "restored": [], "failed": ["chain1"],
    }  # fmt: skip

    # --retries reaches run-a's task: 0 means the one-time failure is final.
    once = dvcflow("run-a", "-s", "chain1", "--fail-once", "--retries", "0", "--json", cwd=clone, env=env)
    assert once.returncode == 1
    tasks = json.loads(once.stdout)["tasks"]
    assert [(t["name"], t["state"], t["attempts"]) for t in tasks] == [("dvc repro", "Failed", 1)]
    assert "Intentional one-time failure" in tasks[0]["message"]


@integration_fixture(scope="module")
def pushed_origin(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline reproduced, pushed to a directory remote (`store` beside it) and committed."""
    root = tmp_path_factory.mktemp("pushed")
    env = base_env(root)
    origin = copy_of(pipeline, root / "origin")
    (root / "store").mkdir()
    for args in (("remote", "add", "-d", "store", str(root / "store")), ("repro", "-q"), ("push", "-q")):
        done = dvc(*args, cwd=origin, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    git(origin, "add", "-A", env=env)
    git(origin, "commit", "-q", "-m", "reproduced and pushed", env=env)
    return origin


def workspace(root: Path) -> dict[str, str]:
    """Every file outside .git and .dvc, with its text: what a run leaves for the user."""
    return {
        path.relative_to(root).as_posix(): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not {".git", ".dvc"} & set(path.relative_to(root).parts)
    }


@pytest.mark.parametrize(
    ("args", "edited", "expected"),
    [
        (["--pull"], False, set()),
        (["--pull"], True, {"fork_left", "join"}),
        (["--pull", "--allow-missing"], True, {"fork_left", "join"}),
    ],
    ids=["pull", "pull-one-input-changed", "pull-allow-missing-one-input-changed"],
)
def test_run_a_per_stage_pulls_as_dvc_repro_pull_does(
    pushed_origin: Path,
    tmp_path: Path,
    client_env: dict[str, str],
    args: list[str],
    edited: bool,
    expected: set[str],
) -> None:
    """`--per-stage --pull [--allow-missing]` in fresh clones: the stages that run, `dvc.lock` and the
    workspace equal `dvc repro --pull [--allow-missing]`'s. Unchanged stages are pulled, not rerun; with
    --allow-missing they are skipped and only what the changed stages read is fetched."""
    env = client_env
    clones = [tmp_path / "dvc", tmp_path / "dvcflow"]
    for clone in clones:
        git(tmp_path, "clone", "-q", str(pushed_origin), str(clone), env=env)
        if edited:
            (clone / "left.cfg").write_text("left, changed in the clone")
    by_dvc, by_dvcflow = clones
    reference = dvc("repro", *args, cwd=by_dvc, env=env)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    result = dvcflow("run-a", "--per-stage", *args, "--json", "--no-show-metrics", cwd=by_dvcflow, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    ran = {t["name"] for t in tasks if t["state"] == "Completed" and not t["name"].endswith(".dvc")}
    assert ran == set(dvc_ran(reference.stdout)) == expected
    pulled = {t["name"] for t in tasks if t["state"] == "Pulled"}
    assert pulled == set(
        re.findall(r"^Pulling data for stage: '(.+)'$", reference.stdout, flags=re.MULTILINE)
    )
    assert (by_dvcflow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text()
    assert workspace(by_dvcflow) == workspace(by_dvc)
    if "--allow-missing" not in args:
        assert len(pulled) == 9 - len(expected)  # the source and every stage that did not run
        assert "join.txt" in workspace(by_dvcflow)  # everything restored, not only what ran
        status = dvc("status", "--json", cwd=by_dvcflow, env=env)
        assert json.loads(status.stdout) == {}


def test_run_a_per_stage_allow_missing_skips_what_only_lacks_data(
    pipeline: Path, tmp_path: Path, client_env: dict[str, str]
) -> None:
    """A fresh clone without a remote: `--per-stage --allow-missing chain2` runs nothing, as
    `dvc repro --allow-missing chain2` does (without the flag, src would run and fail on raw.txt)."""
    env = client_env
    clones = [tmp_path / "dvc", tmp_path / "dvcflow"]
    for clone in clones:
        git(tmp_path, "clone", "-q", str(pipeline), str(clone), env=env)
    by_dvc, by_dvcflow = clones
    reference = dvc("repro", "--allow-missing", "chain2", cwd=by_dvc, env=env)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    result = dvcflow(
        "run-a",
        "--per-stage",
        "--allow-missing",
        "chain2",
        "--json",
        "--no-show-metrics",
        cwd=by_dvcflow,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = json.loads(result.stdout)["tasks"]
    assert [(t["name"], t["state"]) for t in tasks] == [
        (name, "UpToDate") for name in ("raw.txt.dvc", "src", "chain1", "chain2")
    ]
    assert dvc_ran(reference.stdout) == []
    assert (by_dvcflow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text()
    assert workspace(by_dvcflow) == workspace(by_dvc)


# run-b decides what runs as `dvc repro` does, whatever the stage's flags.

FLAG_PY = """\
import sys
name, out, *inputs = sys.argv[1:]
with open("ran.log", "a") as log:  # the counter: one line per command that ran
    log.write(name + "\\n")
text = "".join(open(path).read() for path in inputs)
if out != "-":
    with open(out, "a" if name == "persist" else "w") as f:
        f.write(f"{name}<{text}>\\n")
"""


def _flagged(
    name: str, out: str, *inputs: str, out_flags: dict[str, object] | None = None, **flags: object
) -> dict[str, object]:
    """`python flag.py NAME OUT INPUTS...` (OUT `-`: no output), with DVC's stage and output flags."""
    stage: dict[str, object] = {"cmd": f"python flag.py {name} {out} {' '.join(inputs)}".rstrip()}
    if inputs:
        stage["deps"] = ["flag.py", *inputs]
    if out != "-":
        stage["outs"] = [{out: out_flags} if out_flags else out]
    stage.update(flags)
    return stage


FLAGS_PIPELINE = {
    "stages": {
        "base": _flagged("base", "base.txt", "raw.txt"),
        "always": _flagged("always", "always.txt", "base.txt", always_changed=True),
        "frozen": _flagged("frozen", "frozen.txt", "frozen.cfg"),  # frozen once reproduced
        "persist": _flagged("persist", "persist.txt", "persist.cfg", out_flags={"persist": True}),
        "uncached": _flagged("uncached", "uncached.txt", "base.txt", out_flags={"cache": False}),
        "callback": _flagged("callback", "-"),  # no deps, no outputs: DVC runs it every time
        "envecho": {  # issue 20's
            "cmd": "sh -c 'echo envecho >> ran.log; echo MYVAR=$MYVAR > env.txt'",
            "always_changed": True,
            "outs": [{"env.txt": {"cache": False}}],
        },
    }
}
ALWAYS = {"always", "callback", "envecho"}


@integration_fixture(scope="module")
def flags_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flagged pipeline reproduced by `dvc repro`, then `frozen` frozen and a stage `added` without
    a `dvc.lock` entry (as `dvc stage add` leaves it), committed."""
    root = tmp_path_factory.mktemp("flags") / "pipeline"
    env = {**base_env(root.parent), "MYVAR": "initial"}
    root.mkdir()
    git(root, "init", "-q", "-b", "main", env=env)
    assert dvc("init", "-q", cwd=root, env=env).returncode == 0
    (root / "flag.py").write_text(FLAG_PY)
    for name in ("raw.txt", "frozen.cfg", "persist.cfg"):
        (root / name).write_text(name)
    (root / "dvc.yaml").write_text(yaml.safe_dump(FLAGS_PIPELINE, sort_keys=False))
    done = dvc("repro", "-q", cwd=root, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    later = {"stages": {**FLAGS_PIPELINE["stages"], "added": _flagged("added", "added.txt", "base.txt")}}
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(later, sort_keys=False).replace("  frozen:\n", "  frozen:\n    frozen: true\n")
    )
    (root / "ran.log").unlink()
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "flagged pipeline, reproduced, one stage frozen", env=env)
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


# (what changes before the step, the stages whose command runs, run-b's states of the others); run in
# this order on the same two copies, MYVAR changing each time. The first step starts from `dvc repro`'s
# result: run-b has no Prefect record yet, and must find the stages up to date by DVC's record.
FLAG_STEPS: list[tuple[str, Callable[[Path], object], set[str], dict[str, str]]] = [
    (
        "after dvc repro",  # ...and `added` has no dvc.lock entry yet
        lambda repo: None,
        {*ALWAYS, "added"},
        dict.fromkeys(["base", "frozen", "persist", "uncached"], "UpToDate"),
    ),
    (
        "nothing changed",
        lambda repo: None,
        ALWAYS,
        dict.fromkeys(["base", "frozen", "persist", "uncached", "added"], "Cached"),
    ),
    (
        "a dep of the frozen stage changed",
        lambda repo: (repo / "frozen.cfg").write_text("frozen.cfg, changed"),
        ALWAYS,
        {**dict.fromkeys(["base", "persist", "uncached", "added"], "Cached"), "frozen": "UpToDate"},
    ),
    (
        "a persist output edited",
        lambda repo: _append(repo / "persist.txt", "edited\n"),
        {*ALWAYS, "persist"},
        dict.fromkeys(["base", "frozen", "uncached", "added"], "Cached"),
    ),
    (
        "an uncached output edited",
        lambda repo: (repo / "uncached.txt").write_text("edited\n"),
        {*ALWAYS, "uncached"},
        dict.fromkeys(["base", "frozen", "persist", "added"], "Cached"),
    ),
    (
        "a cached output deleted",  # DVC takes it from its run cache: nothing runs
        lambda repo: (repo / "base.txt").unlink(),
        ALWAYS,
        {"base": "Restored", **dict.fromkeys(["frozen", "persist", "uncached", "added"], "Cached")},
    ),
    (
        "a source changed",
        lambda repo: (repo / "raw.txt").write_text("raw.txt, changed"),
        {*ALWAYS, "base", "uncached", "added"},
        dict.fromkeys(["frozen", "persist"], "Cached"),
    ),
]


def _ran_since(repo: Path, seen: int) -> tuple[list[str], int]:
    lines = (repo / "ran.log").read_text().splitlines() if (repo / "ran.log").exists() else []
    return lines[seen:], len(lines)


@pytest.mark.timeout(900)  # seven steps, each a run-b and a dvc repro
def test_run_b_runs_the_stages_dvc_repro_runs_whatever_their_flags(
    flags_pipeline: Path, tmp_path: Path, client_env: dict[str, str]
) -> None:
    by_dvc = copy_of(flags_pipeline, tmp_path / "dvc")
    by_dvcflow = copy_of(flags_pipeline, tmp_path / "dvcflow")
    seen = {by_dvc: 0, by_dvcflow: 0}
    for number, (what, change, expected, others) in enumerate(FLAG_STEPS):
        env = {**client_env, "MYVAR": f"step {number}"}
        for repo in (by_dvc, by_dvcflow):
            change(repo)
        reference = dvc("repro", cwd=by_dvc, env=env)
        assert reference.returncode == 0, reference.stdout + reference.stderr
        result = dvcflow("run-b", "--json", cwd=by_dvcflow, env=env)
        assert result.returncode == 0, what + result.stdout + result.stderr
        states = {task["name"]: task["state"] for task in json.loads(result.stdout)["tasks"]}
        assert states.pop("metrics summary") == "Completed"
        ran_by_dvc, seen[by_dvc] = _ran_since(by_dvc, seen[by_dvc])
        ran_by_dvcflow, seen[by_dvcflow] = _ran_since(by_dvcflow, seen[by_dvcflow])
        assert set(dvc_ran(reference.stdout)) == set(ran_by_dvc) == expected, what
        assert sorted(ran_by_dvcflow) == sorted(ran_by_dvc), what  # each command once, no more
        assert states == {**dict.fromkeys(expected, "Completed"), **others}, what
        assert (by_dvcflow / "dvc.lock").read_text() == (by_dvc / "dvc.lock").read_text(), what
        mine, theirs = workspace(by_dvcflow), workspace(by_dvc)
        del mine["ran.log"], theirs["ran.log"]  # the same lines (above), in the order stages finished
        assert mine == theirs, what
        assert (by_dvcflow / "env.txt").read_text() == f"MYVAR=step {number}\n", what
    status = dvc("status", "--json", cwd=by_dvcflow, env=client_env)
    assert set(json.loads(status.stdout)) == ALWAYS, status.stdout  # always changed, for DVC too


# A concurrent `dvc repro` is refused while a stage's command runs, as DVC refuses a second `dvc repro`.


@pytest.mark.parametrize("command", [["run-b"], ["run-a", "--per-stage"]], ids=["run-b", "per-stage"])
def test_a_concurrent_dvc_repro_is_refused_while_the_engine_runs_a_stage(
    tmp_path: Path, client_env: dict[str, str], command: list[str], processes: Processes
) -> None:
    """The stage's command runs under DVC's read-write locks of its deps and outputs, as under
    `dvc repro`: a `dvc repro` of the stage meanwhile is refused ("busy") instead of running the command
    a second time into the same output, and the output recorded is the stage's own, written once.

    The command writes a first line, then waits until the test has run the concurrent `dvc repro`
    (bounded: 20 s), then a second line."""
    env = client_env
    release = tmp_path / "release"
    slow = (
        f"sh -c 'echo partial > slow.out; i=0; while [ ! -e {release} ] && [ $i -lt 200 ];"
        " do sleep 0.1; i=$((i+1)); done; echo full >> slow.out'"
    )
    stages = {"stages": {"slow": {"cmd": slow, "deps": ["trigger.txt"], "outs": ["slow.out"]}}}
    repo = make_tiny_repo(tmp_path / "repo", env, stages=yaml.safe_dump(stages))
    (repo / "trigger.txt").write_text("changed\n")
    engine = processes.start(
        [sys.executable, "-m", "dvcflow", *command, "slow"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        out = repo / "slow.out"
        while not (out.exists() and out.read_text() == "partial\n"):
            assert engine.poll() is None, engine.communicate()
            assert time.monotonic() < deadline, "the stage's command never started"
            time.sleep(0.05)  # polling for the command's first line, bounded above
        concurrent = dvc("repro", "slow", cwd=repo, env=env)
        release.touch()
        stdout, stderr = engine.communicate(timeout=180)
    finally:
        release.touch()
        if engine.poll() is None:
            engine.kill()
            engine.communicate()
    assert engine.returncode == 0, stdout + stderr
    assert concurrent.returncode != 0, concurrent.stdout
    assert "slow.out' is busy" in concurrent.stderr
    assert out.read_text() == "partial\nfull\n"
    assert "Retry" not in stderr
    status = dvc("status", "--json", cwd=repo, env=env)
    assert json.loads(status.stdout) == {}, status.stdout
