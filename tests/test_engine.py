"""The stage engine on a repository shaped like a real one (not the demo), a real Prefect server.

`run-b` and `run-a --per-stage` against `dvc repro` on copies of the same repository: the same stages
run, `dvc.lock` byte for byte the same, and DVC agrees afterwards. Plus the unit checks that dvcflow
imports no project code (mltoy) and how in-process stage functions get their arguments.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dvcflow.core.errors import ConfigError
from dvcflow.engine.plugins import StageFunction, command_arguments, load_registry
from tests.conftest import LiveServer, Processes, Repos
from tests.helpers import PROJECT, api_post, dvc, dvcflow, make_shaped_repo, make_tiny_repo

STAGES = ("prep", "feature@max", "feature@sum", "shards", "train")


def states(stdout: str) -> dict[str, str]:
    """Task → state, from the run summary table."""
    rows: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) == 4 and cells[0] not in ("Task", "metrics summary"):
            rows[cells[0]] = cells[1]
    return rows


def run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = dvcflow(*args, cwd=repo, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def dvc_agrees(repo: Path, env: dict[str, str]) -> None:
    """`dvc status` clean and a following `dvc repro` runs nothing."""
    status = dvc("status", "--json", cwd=repo, env=env)
    assert json.loads(status.stdout) == {}, status.stdout
    repro = dvc("repro", cwd=repo, env=env)
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout


def dvc_files(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in ("dvc.lock", "data/raw.txt.dvc")}


@pytest.mark.timeout(600)  # three copies, three pipeline runs: slow on a loaded 2-CPU machine
def test_run_b_and_per_stage_write_what_dvc_repro_writes(tmp_path: Path, client_env: dict[str, str]) -> None:
    env = client_env
    reference = make_shaped_repo(tmp_path / "reference", env)
    per_stage = shutil.copytree(reference, tmp_path / "per-stage", symlinks=True)
    run_b = shutil.copytree(reference, tmp_path / "run-b", symlinks=True)
    assert dvc("repro", cwd=reference, env=env).returncode == 0

    result = run(per_stage, env, "run-a", "--per-stage", "--jobs", "4")
    assert states(result.stdout) == {"data/raw.txt.dvc": "UpToDate", **dict.fromkeys(STAGES, "Completed")}
    assert "Task run 'feature@sum' - > python feature.py sum" in result.stderr  # streamed per stage
    assert "Running: dvc" not in result.stderr  # no DVC process per stage
    result = run(run_b, env, "run-b")
    assert states(result.stdout) == dict.fromkeys(STAGES, "Completed")
    for repo in (per_stage, run_b):
        assert dvc_files(repo) == dvc_files(reference), repo.name
        assert (repo / "metrics.json").read_text() == (reference / "metrics.json").read_text()
        dvc_agrees(repo, env)


@pytest.mark.timeout(600)  # seven run-b processes
def test_run_b_caches_by_dvc_hashes_and_never_trusts_missing_outputs(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    env = client_env
    repo = make_shaped_repo(tmp_path / "repo", env)
    first = run(repo, env, "run-b")
    assert states(first.stdout) == dict.fromkeys(STAGES, "Completed")
    assert "'Prefect owned stage DAG'" in first.stderr
    second = run(repo, env, "run-b", "--json")  # the same run, as the strict JSON a script reads
    tasks = {task["name"]: task["state"] for task in json.loads(second.stdout)["tasks"]}
    assert {name: tasks[name] for name in STAGES} == dict.fromkeys(STAGES, "Cached")

    # One param of the second params file: exactly the stages that read it, and below them, run again.
    (repo / "config/model.yaml").write_text("model:\n  depth: 5\n  name: tiny\n")
    changed = run(repo, env, "run-b")
    assert states(changed.stdout) == {"prep": "Cached", **dict.fromkeys(STAGES[1:], "Completed")}
    # A param of the same file that no stage reads changes nothing.
    (repo / "config/model.yaml").write_text("model:\n  depth: 5\n  name: renamed\n")
    assert set(states(run(repo, env, "run-b").stdout).values()) == {"Cached"}

    # Deleted outputs are not trusted: as under `dvc repro`, DVC's run cache has these runs, so nothing
    # runs and the outputs come back from the DVC cache (the uncached metrics too: the run cache keeps them).
    (repo / "features/sum.txt").unlink()
    shutil.rmtree(repo / "shards")
    (repo / "metrics.json").unlink()
    reference = shutil.copytree(repo, tmp_path / "reference", symlinks=True)
    by_dvc = dvc("repro", cwd=reference, env=env)
    healed = run(repo, env, "run-b")
    restored = {"feature@sum", "shards", "train"}
    assert set(re.findall(r"^Stage '(.+)' is cached - skipping run", by_dvc.stdout, re.MULTILINE)) == restored
    assert "Running stage" not in by_dvc.stdout + healed.stderr
    assert states(healed.stdout) == {
        "prep": "Cached",
        "feature@max": "Cached",
        **dict.fromkeys(restored, "Restored"),
    }
    assert (
        "Stage feature@sum: not reusing its cached result, features/sum.txt changed or went missing"
        in healed.stderr
    )
    assert (
        "Stage 'shards' is cached - skipping run, checked out its outputs from the DVC cache" in healed.stderr
    )
    assert (repo / "features/sum.txt").is_file() and (repo / "metrics.json").is_file()
    assert dvc_files(repo) == dvc_files(reference)
    dvc_agrees(repo, env)

    # -s with --force: exactly that stage runs.
    forced = run(repo, env, "run-b", "shards", "-s", "--force")
    assert states(forced.stdout) == {"shards": "Completed"}

    # Lineage: the train task materialized metrics.json, with DVC's md5 and the shards as upstream.
    key = f"file://{repo / 'metrics.json'}"
    event = _asset_event(live_server, key)
    assert event["payload"]["dvc_md5"] == _lock_md5(repo, "train", "metrics.json")
    assert f"file://{repo / 'shards'}" in {related["prefect.resource.id"] for related in event["related"]}


def _lock_md5(repo: Path, stage: str, path: str) -> str:
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(str(out["md5"]) for out in lock["stages"][stage]["outs"] if out["path"] == path)


def _asset_event(server: LiveServer, key: str) -> dict[str, Any]:
    """The latest materialization event of asset `key`, once the server has persisted it."""
    body = {
        "filter": {
            "event": {"name": ["prefect.asset.materialization.succeeded"]},
            "any_resource": {"id": [key]},
            "order": "DESC",
        },
        "limit": 5,
    }
    deadline = time.monotonic() + 20
    while True:
        page = api_post(server.api_url, "/events/filter", body)
        assert isinstance(page, dict)
        if page["events"]:
            event: dict[str, Any] = page["events"][0]
            return event
        assert time.monotonic() < deadline, f"no materialization event for {key}"
        time.sleep(0.2)  # polling the API for a record written asynchronously, bounded above


def test_dvcflow_names_no_project_module() -> None:
    """mltoy is the demo's project: dvcflow learns about it only from the demo's pyproject registry."""
    offenders = []
    for path in sorted((PROJECT / "src/dvcflow").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "mltoy"]
    assert offenders == []


def test_importing_every_dvcflow_module_loads_no_project_code(processes: Processes) -> None:
    """Nor through a library it imports: every dvcflow module in a fresh interpreter, and no mltoy."""
    modules = [
        f"dvcflow.{path.relative_to(PROJECT / 'src/dvcflow').with_suffix('').as_posix().replace('/', '.')}"
        for path in sorted((PROJECT / "src/dvcflow").rglob("*.py"))
        if path.name not in ("__main__.py", "__init__.py")
    ]
    script = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print('mltoy' in sys.modules)"
    )
    loaded = processes.python("-c", script)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "False"), loaded.stderr


def test_the_demo_registers_its_stage_functions() -> None:
    registry = load_registry(PROJECT)
    assert registry == {
        name: StageFunction(name, "mltoy.cli:main") for name in ("prepare", "train", "evaluate")
    }


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("python -m mltoy.cli train --model m.joblib", ["train", "--model", "m.joblib"]),
        ("python3 scripts/train.py --epochs 3", ["--epochs", "3"]),
        ("python -m tool 'a b'", ["a b"]),
    ],
)
def test_in_process_functions_get_the_commands_arguments(command: str, argv: list[str]) -> None:
    assert command_arguments("s", (command,)) == argv


@pytest.mark.parametrize(
    "commands", [("python a.py > out.txt",), ("python a.py", "python b.py"), ("make x",)]
)
def test_commands_that_cannot_run_in_process_are_refused(commands: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="stage 's'"):
        command_arguments("s", commands)


Verdicts = dict[str, tuple[bool, list[str]]]


def _logged(call: Callable[[], Any]) -> tuple[bool, list[str]]:
    """`call`'s answer and the lines it logged to DVC's `dvc.stage` logger at debug level (`dvc -v`)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("dvc.stage")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        return bool(call()), lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _verdicts(root: Path, session: Any = None) -> tuple[Verdicts, Verdicts]:
    """Each stage's `PipelineSession.changed` (of `session`, else a fresh one) and DVC's own
    `Stage.changed` from a fresh session, each with the debug lines it logged."""
    from dvc.repo import lock_repo

    from dvcflow.core.graph import StageKind
    from dvcflow.dvc.session import PipelineSession

    with PipelineSession(root) as fresh:
        graph = fresh.snapshot(with_status=False).graph
        names = [node.name for node in graph.nodes if node.kind is StageKind.STAGE]
        ours = {name: _logged(partial((session or fresh).changed, name)) for name in names}
        with lock_repo(fresh._repo):
            theirs = {name: _logged(partial(fresh._stage(name).changed, False, None)) for name in names}
    return ours, theirs


def test_the_sessions_changed_check_agrees_with_dvcs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repos: Repos
) -> None:
    """run-b asks `PipelineSession.changed` (DVC's checks without its read-write locks) whether a
    trusted hit must be recorded: it must say what `Stage.changed` says, whatever changed."""
    env = repos.env
    repo = repos.shaped(tmp_path / "repo")
    assert dvc("repro", cwd=repo, env=env).returncode == 0
    monkeypatch.chdir(repo)
    ours, theirs = _verdicts(repo)
    assert ours == theirs and not any(changed for changed, _ in ours.values())

    scenarios: list[tuple[str, Any]] = [
        ("a param", lambda: (repo / "params.yaml").write_text("prep:\n  scale: 11\ntrain:\n  epochs: 3\n")),
        ("a dep", lambda: (repo / "feature.py").write_text((repo / "feature.py").read_text() + "\n")),
        ("a deleted output", lambda: (repo / "features/max.txt").unlink()),
        ("a directory output", lambda: (repo / "shards/extra.shard").write_text("1\n")),
        (
            "a command",
            lambda: (repo / "dvc.yaml").write_text(
                (repo / "dvc.yaml").read_text().replace("python shard.py", "python  shard.py")
            ),
        ),
        ("the DVC cache", lambda: shutil.rmtree(repo / ".dvc/cache")),
    ]
    for what, change in scenarios:
        subprocess.run(["git", "stash", "-q", "-u"], cwd=repo, env=env, check=True)  # start clean
        subprocess.run(["git", "stash", "drop", "-q"], cwd=repo, env=env, check=False)
        assert dvc("repro", cwd=repo, env=env).returncode == 0
        change()
        ours, theirs = _verdicts(repo)
        assert ours == theirs, what
        assert any(changed for changed, _ in ours.values()), what
        assert any(line.endswith(" changed.") for _, lines in ours.values() for line in lines), what  # logged

    # A session that recorded a stage itself asks with the index it kept: still DVC's verdicts afresh
    from dvcflow.dvc.session import PipelineSession
    from dvcflow.engine.executor import execute

    subprocess.run(["git", "stash", "-q", "-u"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "stash", "drop", "-q"], cwd=repo, env=env, check=False)
    assert dvc("repro", cwd=repo, env=env).returncode == 0
    (repo / "params.yaml").write_text("prep:\n  scale: 11\ntrain:\n  epochs: 3\n")
    with PipelineSession(repo) as session:
        assert session.changed("prep")
        execute(session, "prep", force=False, check_changed=True, log=lambda _: None)
        ours, theirs = _verdicts(repo, session)
    assert ours == theirs
    assert not ours["prep"][0] and ours["feature@sum"][0], ours


def write_label(argv: list[str]) -> None:
    """An in-process stage function for the test below: writes relative to the working directory."""
    Path("out.txt").write_text(argv[0])


def test_sessions_in_threads_keep_the_process_in_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repos: Repos
) -> None:
    """Two repositories' sessions used at once (sweep trials with --per-stage, a threaded Dask worker): each
    DVC call and in-process function runs in its own repository, and the process's working directory is
    the same afterwards (one lock, `dvc.repository.CWD_LOCK`, for every change of it)."""
    from dvcflow.engine.executor import close_session, execute, open_session

    stages = (
        "stages:\n  hello:\n    cmd: python write.py {label}\n    deps: [write.py]\n    outs: [out.txt]\n"
    )
    roots = {}
    for label in ("left", "right"):
        root = tmp_path / label
        root.mkdir()
        (root / "write.py").write_text("import sys\nopen('out.txt', 'w').write(sys.argv[1])\n")
        roots[label] = repos.tiny(root, stages=stages.format(label=label)).resolve()
    monkeypatch.chdir(tmp_path)
    function = StageFunction("hello", "tests.test_engine:write_label")
    start = threading.Barrier(len(roots))
    failures: list[BaseException] = []

    def use(root: Path) -> None:
        try:
            session = open_session(root)
            start.wait(timeout=60)
            for turn in range(6):
                session.changed("hello")
                execute(session, "hello", force=True, check_changed=False,
                        function=function if turn % 2 else None, log=lambda _: None)  # fmt: skip
                assert (root / "out.txt").read_text() == root.name
        except BaseException as err:  # reported by the main thread
            failures.append(err)
        finally:
            close_session(root)

    threads = [threading.Thread(target=use, args=(root,)) for root in roots.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures
    assert Path.cwd() == tmp_path
    assert not (tmp_path / "out.txt").exists()
    for root in roots.values():
        assert "out.txt" in (root / "dvc.lock").read_text()


HOLD_PY = """\
import subprocess, sys
open("out.txt", "w").write("done")
# A DVC process of someone else's (a `dvc status` of an editor, say) takes the repository lock as this
# stage ends, and keeps it well beyond DVC's own retries (3 s) — bounded: it lets go after 8 s.
holder = subprocess.Popen(
    [sys.executable, "-c", "import sys, time\\nfrom dvc.lock import Lock\\nlock = Lock('.dvc/tmp/lock')\\n"
     "lock.lock()\\nprint('held', flush=True)\\ntime.sleep(8)\\nlock.unlock()"],
    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
)
assert holder.stdout.readline().strip() == b"held"
"""


def test_a_repository_lock_held_by_another_dvc_process_fails_the_stage_in_one_line_not_a_hang(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """The engine takes DVC's repository lock only around its DVC calls: another DVC process may hold it
    when a stage is to be recorded. After DVC's retries the stage fails with one line and the run ends
    (no lock left held inside the process: the flow closes its session). It is not retried: a retry would
    remove what the stage wrote, and could take another process's result from DVC's run cache."""
    stages = "stages:\n  hold:\n    cmd: python hold.py\n    deps: [hold.py]\n    outs: [out.txt]\n"
    root = tmp_path / "held"
    root.mkdir()
    (root / "hold.py").write_text(HOLD_PY)
    repo = make_tiny_repo(root, client_env, stages=stages)

    result = dvcflow("run-a", "--per-stage", "--retries", "1", cwd=repo, env=client_env, timeout=120)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"another DVC process holds the repository lock of {repo}" in output
    assert re.search(r"│ hold\s+│ Failed\s+│\s+1 │", result.stdout), result.stdout  # one attempt
    assert "Retry" not in result.stderr
    assert "Traceback" not in output
    assert "finished in state Failed" in result.stdout
    assert not (repo / "dvc.lock").exists()  # untouched by the failed stage


CHANGES_ITS_DEP = (
    "stages:\n  copy:\n    cmd: python copier.py\n    deps: [data.csv, copier.py]\n    outs: [out.txt]\n"
)
# The command reads data.csv, then the file changes before it ends (a slow copy into a watched folder).
COPY_THEN_CHANGED = (
    "import pathlib\n"
    "pathlib.Path('out.txt').write_text(pathlib.Path('data.csv').read_text())\n"
    "with open('data.csv', 'a') as data:\n"
    "    data.write('written while the stage ran\\n')\n"
)


def test_a_dep_changed_while_its_command_ran_is_never_recorded(tmp_path: Path, repos: Repos) -> None:
    from dvcflow.core.errors import PipelineError
    from dvcflow.dvc.session import PipelineSession
    from dvcflow.engine.executor import execute

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "data.csv").write_text("1\n")
    (repo / "copier.py").write_text(COPY_THEN_CHANGED)
    repos.tiny(repo, stages=CHANGES_ITS_DEP)
    with PipelineSession(repo) as session, pytest.raises(PipelineError, match=r"data\.csv changed while"):
        execute(session, "copy", force=False, check_changed=True, log=lambda _: None)
    assert not (repo / "dvc.lock").exists()  # nothing recorded: the next run runs it again
    status = dvc("status", "--json", cwd=repo, env=repos.env)
    assert "copy" in json.loads(status.stdout), status.stdout


def test_a_run_killed_while_waiting_for_resources_leaves_the_outputs(tmp_path: Path, repos: Repos) -> None:
    """The resources are taken before `prepare` deletes the outputs: a wait that ends by Ctrl-C or a kill
    (here: the holding raises) leaves the previous outputs and no DVC lock behind."""
    import contextlib

    from dvcflow.dvc.session import PipelineSession
    from dvcflow.engine.executor import execute

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "data.csv").write_text("1\n")
    (repo / "copier.py").write_text("import shutil\nshutil.copy('data.csv', 'out.txt')\n")
    repos.tiny(repo, stages=CHANGES_ITS_DEP)
    assert dvc("repro", cwd=repo, env=repos.env).returncode == 0
    (repo / "data.csv").write_text("2\n")

    @contextlib.contextmanager
    def interrupted_wait() -> Iterator[dict[str, str]]:
        raise KeyboardInterrupt
        yield {}

    with PipelineSession(repo) as session, pytest.raises(KeyboardInterrupt):
        execute(
            session, "copy", force=False, check_changed=True, log=lambda _: None, holding=interrupted_wait
        )
    assert (repo / "out.txt").read_text() == "1\n"
    assert not json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text() or "{}").get("write")
