"""The DVC child process (`python -m dvcflow.dvc.child`): one DVC start-up runs `dvc repro` and reads the
metrics; a warmed-up child runs nothing until asked, and exits quietly when never asked."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from dvcflow.dvc import commands, metrics_files, repository
from dvcflow.proc import children
from tests.conftest import Processes, integration_fixture
from tests.helpers import base_env, make_tiny_repo

STAGES = """\
stages:
  score:
    cmd: python score.py
    metrics:
      - m.json:
          cache: false
"""
SCORE = "print('scoring')\nopen('m.json', 'w').write('{\"acc\": 0.5}')\n"


@integration_fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    env = base_env(tmp_path / "home")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    root = make_tiny_repo(tmp_path / "repo", env, stages=STAGES)
    (root / "score.py").write_text(SCORE)
    return root


def test_repro_reads_the_metrics_in_the_same_process(repo: Path) -> None:
    lines: list[str] = []
    run = commands.repro(repo, ["repro"], lines.append, metrics=True)
    assert run.result.ok, lines
    assert "scoring" in lines  # the stage's own output is streamed
    assert run.metrics == {"m.json": {"acc": 0.5}} == metrics_files.metrics_show(repo)
    assert not any("dvcflow-metrics" in line for line in lines)  # the marked line is not output


def test_failed_repro_reports_no_metrics(repo: Path) -> None:
    (repo / "score.py").write_text("raise SystemExit(3)\n")
    run = commands.repro(repo, ["repro"], lambda _: None, metrics=True)
    assert not run.result.ok and run.metrics is None


def test_warm_child_runs_only_when_asked(repo: Path) -> None:
    commands.warm_up(["repro"], repo, metrics=True)
    (process,) = commands._warm.values()
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    assert ready and process.stdout.readline() == commands.READY_MARK  # DVC imported, now waiting
    assert process.poll() is None and not (repo / "m.json").exists()  # warmed up, nothing run
    lines: list[str] = []
    run = commands.repro(repo, ["repro"], lines.append, metrics=True)
    assert run.result.ok and run.metrics == {"m.json": {"acc": 0.5}}
    assert "scoring" in lines
    assert commands._warm == {}  # claimed


def test_unclaimed_warm_child_exits_without_running_dvc(repo: Path) -> None:
    commands.warm_up(["repro"], repo)
    (process,) = commands._warm.values()
    commands._warm.clear()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()  # as when dvcflow exits without asking
    assert process.wait(timeout=60) == 0
    assert process.stdout.read() in ("", commands.READY_MARK)  # no output but the ready mark
    process.stdout.close()
    assert not (repo / "m.json").exists() and not (repo / "dvc.lock").exists()


def test_child_refuses_to_run_for_a_dead_parent(repo: Path) -> None:
    import subprocess

    env = {**os.environ, repository.PARENT_PID_ENV: "1"}  # not our parent: dvcflow is gone
    result = subprocess.run(commands.dvc_command("repro"), cwd=repo, env=env, capture_output=True, timeout=60)
    assert result.returncode == 143
    assert not (repo / "m.json").exists()


def test_interrupt_from_a_signal_handler_while_the_lock_is_held() -> None:
    """A Ctrl-C handler runs in the thread it interrupts, possibly inside `stream` holding the lock."""
    import threading

    def handler_inside_pump() -> None:
        with children._RUNNING_LOCK:
            children.interrupt_commands(grace=0.1)

    thread = threading.Thread(target=handler_inside_pump, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "interrupt_commands deadlocked on _RUNNING_LOCK"


def test_a_command_started_after_an_interrupt_is_stopped_at_once(
    tmp_path: Path, processes: Processes
) -> None:
    """A stage still preparing when Ctrl-C came (or a retry) must not run its command to the end (real
    `sleep` and `true` processes, which `processes` kills should the interrupt not)."""
    import time

    children.interrupt_commands(grace=0.1)
    assert children.interrupted()
    began = time.monotonic()
    code, _ = children.stream_process(["sleep", "30"], tmp_path, dict(os.environ), lambda _line: None)
    assert code != 0
    assert time.monotonic() - began < 10
    children.clear_interrupted()
    assert not children.interrupted()
    code, _ = children.stream_process(["true"], tmp_path, dict(os.environ), lambda _line: None)
    assert code == 0
