"""Bad input, every command: one `Error:` line naming the problem, a non-zero exit, no traceback, no file
changed — and no flow run, because the checks run before Prefect is contacted (the API below is dead)."""

from __future__ import annotations

import hashlib
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
    return lambda repo: (repo / relative).write_text(text)


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
        "Error: DVC cannot read the pipeline of {repo} ('./dvc.yaml' validation failed)",
    ),
    (
        "contradictory-flags",
        lambda repo: None,
        ["run-a", "--jobs", "2"],
        2,
        "Error: --jobs needs --per-stage",
    ),
]


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
