"""Bad input, every command: one `Error:` line naming the problem, a non-zero exit, no traceback, no file
changed — and no flow run, because the checks run before Prefect is contacted (the API below is dead)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import integration_fixture
from tests.helpers import base_env, dvcflow, free_port, make_pipeline_repo


@integration_fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad-input")
    env = base_env(root)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"  # nothing listens: a flow run would fail
    return make_pipeline_repo(root / "pristine", env), env


def snapshot(repo: Path) -> dict[str, str]:
    return {
        str(path.relative_to(repo)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and ".git" not in path.parts and "tmp" not in path.relative_to(repo).parts
    }


def write(relative: str, text: str) -> Callable[[Path], None]:
    def put(repo: Path) -> None:
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(text)

    return put


def remove(relative: str) -> Callable[[Path], None]:
    return lambda repo: (repo / relative).unlink()


CASES = [
    (
        "run-a-empty-params",
        write("params.yaml", ""),
        ["run-a"],
        3,
        "Error: {repo}/params.yaml: params file is empty",
    ),
    (
        "run-a-malformed-params",
        write("params.yaml", "split: [0.2\n"),
        ["run-a"],
        3,
        "Error: {repo}/params.yaml: not valid YAML (expected ',' or ']', but got '<stream end>' at line 2)",
    ),
    (
        "run-a-params-is-a-list",
        write("params.yaml", "- 1\n"),
        ["run-a", "--per-stage"],
        3,
        "Error: {repo}/params.yaml: params file is a list, not a mapping of params",
    ),
    (
        "run-a-params-file-missing",
        remove("params.yaml"),
        ["run-a"],
        3,
        "Error: {repo}/params.yaml: params file not found (dvc.yaml's stages read it)",
    ),
    (
        "run-b-unknown-params-path",
        lambda repo: None,
        ["run-b", "--params", "nope.yaml"],
        3,
        "Error: {repo}/nope.yaml: params file not found",
    ),
    (
        "run-b-missing-key",
        write("params.yaml", "split:\n  test_size: 0.2\n  random_state: 1\ntrain:\n  C: 1.0\n"),
        ["run-b"],
        3,
        "Error: {repo}/params.yaml: missing key 'evaluate'",
    ),
    (
        "run-b-missing-raw-data",
        remove("data/raw/iris.csv"),
        ["run-b"],
        3,
        "Error: {repo}/data/raw/iris.csv: not found (stage data/raw/iris.csv.dvc needs it)",
    ),
    (
        "run-a-unknown-target",
        lambda repo: None,
        ["run-a", "nosuch"],
        2,
        "Error: unknown target 'nosuch': Stage 'nosuch' not found inside 'dvc.yaml' file",
    ),
    ("run-a-empty-glob", lambda repo: None, ["run-a", "--glob", "zz*"], 2, "Error: no stage matches 'zz*'"),
    (
        "run-a-downstream-without-target",
        lambda repo: None,
        ["run-a", "--downstream"],
        2,
        "Error: --downstream needs a target: the stages downstream of which stage?",
    ),
    (
        "run-a-push-without-remote",
        lambda repo: None,
        ["run-a", "--push"],
        3,
        "Error: --push needs a DVC remote, and {repo} has no default remote",
    ),
    (
        "run-a-missing-tracked-source",
        remove("data/raw/iris.csv"),
        ["run-a"],
        3,
        "Error: data/raw/iris.csv is missing (tracked by data/raw/iris.csv.dvc): no DVC remote is configured "
        "to fetch it from: restore the file (in dvcflow's demo repository `make setup` writes it)",
    ),
    (
        "run-a-invalid-dvc-yaml",
        write("dvc.yaml", "stages:\n  x:\n    cmd: echo\n    bogus: 2\n"),
        ["run-a", "--retries", "3"],
        3,
        "Error: DVC cannot read the pipeline of {repo} ('./dvc.yaml' validation failed: extra keys not "
        "allowed at stages.x.bogus)",
    ),
    (
        "contradictory-flags",
        lambda repo: None,
        ["run-a", "--jobs", "2"],
        2,
        "Error: --jobs needs --per-stage",
    ),
]


def write_bytes(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda repo: (repo / relative).write_bytes(data)


def directory(relative: str) -> Callable[[Path], None]:
    def replace(repo: Path) -> None:
        (repo / relative).unlink()
        (repo / relative).mkdir()

    return replace


def without_train_cmd(repo: Path) -> None:
    text = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(re.sub(r"(?m)^    cmd: python -m mltoy.cli train .*\n", "", text))


CONFLICTED_LOCK = "<<<<<<< HEAD\nschema: '2.0'\n=======\nschema: '2.0'\n>>>>>>> theirs\n"
UNDEFINED_FOREACH = "stages:\n  loop:\n    foreach: ${nosuch}\n    do:\n      cmd: echo ${item}\n"
CYCLE = (
    "stages:\n"
    "  a: {cmd: cp b.txt a.txt, deps: [b.txt], outs: [a.txt]}\n"
    "  b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n"
)
OVERLAP = "stages:\n  a: {cmd: mkdir -p d, outs: [d]}\n  b: {cmd: touch d/x, outs: [d/x]}\n"
RUNS = {"run-a": ["run-a"], "run-b": ["run-b"], "per-stage": ["run-a", "--per-stage"], "plan": ["plan"]}
EVERY = {**RUNS, "metrics": ["metrics"]}
UNREADABLE = "Error: DVC cannot read the {what} of {{repo}} ({why})"


def unreadable(why: str, commands: dict[str, list[str]] = EVERY) -> dict[str, tuple[list[str], str]]:
    """The same one line from every command (`metrics` says what it was reading)."""
    return {
        name: (args, UNREADABLE.format(what="metrics" if name == "metrics" else "pipeline", why=why))
        for name, args in commands.items()
    }


# Issue 20: the definition of the pipeline is input: exit 3 and one line, whichever command reads it.
DEFINITION_CASES: list[tuple[str, Callable[[Path], None], dict[str, tuple[list[str], str]]]] = [
    (
        "dvc-yaml-is-a-list",
        write("dvc.yaml", "- prepare\n- train\n"),
        {
            **{name: (args, "Error: {repo}/dvc.yaml: a list, not a mapping with a `stages:` section")
               for name, args in RUNS.items()},
            "metrics": (["metrics"], UNREADABLE.format(
                what="metrics", why="'./dvc.yaml' validation failed: expected a dictionary")),
        },
    ),
    (
        "dvc-yaml-not-utf8",
        write_bytes("dvc.yaml", b"stages:\n  x:\n    cmd: echo \xff\n"),
        {
            **{name: (args, "Error: {repo}/dvc.yaml: not valid UTF-8 (byte b'\\xff' at position 27)")
               for name, args in RUNS.items()},
            "metrics": (["metrics"], UNREADABLE.format(
                what="metrics", why="unable to read: 'dvc.yaml', is not valid utf-8")),
        },
    ),
    (
        "params-yaml-is-a-directory",
        directory("params.yaml"),
        {
            **{name: (args, "Error: {repo}/params.yaml: a directory, not a file")
               for name, args in RUNS.items()},
            "metrics": (["metrics"], UNREADABLE.format(
                what="metrics", why="failed to parse 'vars' in 'dvc.yaml': 'params.yaml' is a directory")),
        },
    ),
    (
        "conflict-markers-in-dvc-lock",
        write("dvc.lock", CONFLICTED_LOCK),
        unreadable(
            "unable to read: 'dvc.lock', YAML file structure is corrupted at line 2 (mapping values are not "
            "allowed here); it has git merge conflict markers: resolve the conflict"
        ),
    ),
    (
        "stage-without-cmd",
        without_train_cmd,
        unreadable("'./dvc.yaml' validation failed: required key not provided at stages.train.cmd"),
    ),
    (
        "dvc-lock-is-a-directory",
        directory("dvc.lock"),
        unreadable("{repo}/dvc.lock is a directory, not a file"),
    ),
    (
        "dvc-lock-not-utf8",
        write_bytes("dvc.lock", b"schema: '\xff'\n"),
        unreadable("unable to read: 'dvc.lock', is not valid utf-8"),
    ),
    (
        "dvc-yaml-syntax-error",
        write("dvc.yaml", "stages:\n  x: [\n"),
        {
            **{name: (args, "Error: {repo}/dvc.yaml: not valid YAML (expected the node content, but found "
                      "'<stream end>' at line 3)") for name, args in RUNS.items()},
            "metrics": (["metrics"], UNREADABLE.format(
                what="metrics", why="unable to read: 'dvc.yaml', YAML file structure is corrupted at line 3 "
                "(expected the node content, but found '<stream end>')")),
        },
    ),
    (
        "undefined-foreach-variable",
        write("dvc.yaml", UNDEFINED_FOREACH),
        unreadable("failed to parse 'stages.loop.foreach' in 'dvc.yaml': Could not find 'nosuch'"),
    ),
    # `metrics` does not build the stage graph (nor does `dvc metrics show`): these do not concern it.
    (
        "dependency-cycle",
        write("dvc.yaml", CYCLE),
        unreadable("the stages a, b depend on each other's outputs in a cycle", RUNS),
    ),
    (
        "overlapping-outputs",
        write("dvc.yaml", OVERLAP),
        unreadable(
            "output 'd/x' of stage b is inside output 'd' of stage a: track them in separate directories, or "
            "individually",
            RUNS,
        ),
    ),
    (
        "repo-is-a-file",
        lambda repo: None,
        {
            name: ([*args, "--repo", "params.yaml"], "Error: {repo}/params.yaml is a file, not a folder")
            for name, args in EVERY.items()
        },
    ),
]  # fmt: skip
CASES += [
    (f"{command}-{name}", break_it, args, 3, message)
    for name, break_it, commands in DEFINITION_CASES
    for command, (args, message) in commands.items()
]
CASES.append(
    (
        "metrics-malformed-metrics-file",
        write("reports/metrics.json", '{"accuracy": '),
        ["metrics"],
        3,
        "Error: reports/metrics.json: the metrics file cannot be read (JSON file structure is corrupted)",
    )
)


@pytest.mark.parametrize(("name", "break_it", "args", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    pristine: tuple[Path, dict[str, str]],
    tmp_path: Path,
    name: str,
    break_it: Callable[[Path], None],
    args: list[str],
    code: int,
    message: str,
) -> None:
    import shutil

    source, env = pristine
    repo = tmp_path / name
    shutil.copytree(source, repo, symlinks=True)
    break_it(repo)
    before = snapshot(repo)
    result = dvcflow(*args, cwd=repo, env=env, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == message.format(repo=repo)
    assert "Traceback" not in result.stderr
    assert "unreachable" not in result.stderr  # rejected before Prefect was contacted
    assert result.stdout == ""
    assert snapshot(repo) == before


def test_an_empty_foreach_without_targets_is_the_rest_of_the_graph_as_for_dvc_repro(
    pristine: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`foreach: []` defines no stage; `dvc repro` then goes on with the rest of the graph (here the data
    source), where dvcflow said `no stage matches ''`."""
    import shutil

    source, env = pristine
    repo = tmp_path / "empty-foreach"
    shutil.copytree(source, repo, symlinks=True)
    (repo / "dvc.yaml").write_text("stages:\n  loop:\n    foreach: []\n    do:\n      cmd: echo ${item}\n")
    (repo / "dvc.lock").unlink()
    result = dvcflow("plan", cwd=repo, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "│    1 │ data/raw/iris.csv.dvc │" in result.stdout
    assert "1 stages in 1 waves" in result.stdout


def test_a_full_disk_while_taking_the_run_lock_is_one_line_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OSError 28 writing the run lock: exit 3 and a line that says the disk is full (was exit 70)."""
    import errno
    import os

    from dvcflow.core.errors import ConfigError, ExitCode
    from dvcflow.proc import runlock

    class FullDisk:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlock, "os", FullDisk())
    with pytest.raises(ConfigError) as raised, runlock.exclusive_run(tmp_path, on_wait=pytest.fail):
        pytest.fail("the block ran without its lock written")
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    folder = tmp_path / ".dvc" / "tmp"
    said = f"no space left on the device of {folder} (writing the run lock dvcflow-run.lock)"
    assert raised.value.message == said
    monkeypatch.undo()
    with runlock.exclusive_run(tmp_path, on_wait=pytest.fail):  # and the lock is free again
        pass
