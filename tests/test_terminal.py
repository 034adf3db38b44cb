"""A prompt on the terminal (docs/failure-modes.md): DVC asking for its remote's password under
`run-a --pull`, a stage's `getpass` under `run-b` and `--per-stage`, answered on a real pseudo-terminal that
is dvcflow's controlling terminal, as a user's shell gives it. They ran in the terminal's background and
waited for ever."""

from __future__ import annotations

import os
import re
import select
import shutil
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Processes, integration_fixture
from tests.helpers import basic_auth, dvc, git, make_tiny_repo, webdav_server

USER, PASSWORD = "someone", "open-sesame"
PATIENCE = 120  # seconds for a whole run on a loaded 2-core machine

# Runs ARGV as a session leader whose controlling terminal is its stdin (a pty's slave), in the
# terminal's foreground: what a login shell gives the command a user types.
ON_A_TERMINAL = (
    "import os, sys\n"
    "os.close(os.open(os.ttyname(0), os.O_RDWR))  # a session leader's first terminal becomes its own\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class Terminal:
    """A command on a pty: what it wrote there, and answers typed when a prompt shows."""

    def __init__(self, processes: Processes, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.process = processes.start(
            [sys.executable, "-c", ON_A_TERMINAL, *args],
            cwd=cwd,
            env={**env, "TERM": "dumb"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.output = ""

    def read_until(self, pattern: str, deadline: float) -> bool:
        """Read the terminal until `pattern` shows (True) or the command ends or time runs out (False)."""
        while time.monotonic() < deadline:
            if re.search(pattern, self.output):
                return True
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the command ended: the pty's other side is closed
                    return bool(re.search(pattern, self.output))
                self.output += chunk.decode(errors="replace")
            elif self.process.poll() is not None:
                return bool(re.search(pattern, self.output))
        return False

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, deadline: float, *, close: bool = True) -> int:
        self.read_until(r"(?!x)x", deadline)  # everything until it ends
        try:
            return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if close:
                os.close(self.master)


@integration_fixture
def webdav_with_password(tmp_path: Path) -> Iterator[str]:
    with webdav_server(tmp_path / "webdav", **basic_auth(USER, PASSWORD)) as url:
        yield url


def cold(client_env: dict[str, str]) -> dict[str, str]:
    """A command the warm starter would serve runs in a process without a terminal (docs/server.md)."""
    return {**client_env, "DVCFLOW_WARM": "0"}


PROMPT = r"(?m)^Secret: "  # at a line's start: the run's log shows the stage's command, which names it too
GETPASS_STAGE = (
    "stages:\n"
    "  ask:\n"
    "    cmd: >-\n"
    "      python -c \"import getpass; s = getpass.getpass('Secret: '); open('secret.txt', 'w').write(s)\"\n"
    "    outs:\n"
    "      - secret.txt\n"
)


@pytest.mark.parametrize("command", [["run-b"], ["run-a", "--per-stage"], ["run-a"]])
def test_a_stage_prompt_gets_the_terminal_and_hides_what_is_typed(
    command: list[str], tmp_path: Path, client_env: dict[str, str], processes: Processes
) -> None:
    env = cold(client_env)
    repo = make_tiny_repo(tmp_path / "repo", env, GETPASS_STAGE)
    deadline = time.monotonic() + PATIENCE
    terminal = Terminal(processes, [sys.executable, "-m", "dvcflow", *command], repo, env)
    assert terminal.read_until(PROMPT, deadline), terminal.output
    terminal.type("hunter2\n")
    code = terminal.finish(deadline)
    assert code == 0, terminal.output
    assert (repo / "secret.txt").read_text() == "hunter2"
    assert "hunter2" not in terminal.output  # typed with the echo off: the prompt had the terminal's modes
    status = dvc("status", "--json", cwd=repo, env=env)
    assert status.stdout.strip() == "{}", status.stdout + status.stderr


@pytest.mark.parametrize("command", ["run-b", "run-a"])
@pytest.mark.parametrize("after", [0.0, 0.8], ids=["at-once", "after-a-while"])
def test_ctrl_c_at_a_stage_prompt_stops_the_run(
    command: str, after: float, tmp_path: Path, client_env: dict[str, str], processes: Processes
) -> None:
    """At once: the prompting stage still holds the terminal, the Ctrl-C is its own, and dvcflow is told.
    After a while: the terminal is dvcflow's again while the prompt waits, so the Ctrl-C is dvcflow's."""
    env = cold(client_env)
    repo = make_tiny_repo(tmp_path / "repo", env, GETPASS_STAGE)
    deadline = time.monotonic() + PATIENCE
    terminal = Terminal(processes, [sys.executable, "-m", "dvcflow", command], repo, env)
    assert terminal.read_until(PROMPT, deadline), terminal.output
    time.sleep(after)  # a person reading the prompt
    terminal.type("\x03")  # the terminal's Ctrl-C, to its foreground group
    code = terminal.finish(deadline)
    assert code == 130, terminal.output
    assert not (repo / "secret.txt").exists()
    assert not (repo / "dvc.lock").exists()  # nothing recorded
    after_the_stage = terminal.output.partition("KeyboardInterrupt")[2]  # its own traceback is its output
    assert "Traceback" not in after_the_stage, terminal.output


def test_run_a_pull_asks_for_the_remotes_password_on_the_terminal(
    tmp_path: Path, client_env: dict[str, str], processes: Processes, webdav_with_password: str
) -> None:
    env = cold(client_env)
    repo = make_tiny_repo(
        tmp_path / "repo",
        env,
        "stages:\n  count:\n    cmd: wc -c < data.txt > count.txt\n"
        "    deps: [data.txt]\n    outs: [count.txt]\n",
    )
    (repo / "data.txt").write_text("tracked by DVC, kept on the remote\n")
    for args in (
        ("add", "-q", "data.txt"),
        ("remote", "add", "-d", "store", webdav_with_password),
        ("remote", "modify", "store", "user", USER),
        ("remote", "modify", "--local", "store", "password", PASSWORD),
        ("push", "-q"),
        ("remote", "modify", "--local", "--unset", "store", "password"),
        ("remote", "modify", "store", "ask_password", "true"),
    ):
        done = dvc(*args, cwd=repo, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", "data on a remote that asks for a password", env=env)
    (repo / "data.txt").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")

    deadline = time.monotonic() + PATIENCE
    terminal = Terminal(processes, [sys.executable, "-m", "dvcflow", "run-a", "--pull"], repo, env)
    assert terminal.read_until("Enter a password for host", deadline), terminal.output
    terminal.type(PASSWORD + "\n")
    code = terminal.finish(deadline)
    assert code == 0, terminal.output
    assert PASSWORD not in terminal.output
    assert (repo / "data.txt").read_text() == "tracked by DVC, kept on the remote\n"
    assert (repo / "count.txt").read_text().strip() == "35"


def test_the_terminal_s_modes_come_back_after_a_command_that_changed_them(
    tmp_path: Path, client_env: dict[str, str], processes: Processes
) -> None:
    """A prompt killed with the echo off (or a stage that turns it off and ends) must not leave the user's
    shell without echo."""
    env = cold(client_env)
    stage = "stages:\n  mute:\n    cmd: stty -echo < /dev/tty && echo muted > mute.txt\n"
    stage += "    outs: [mute.txt]\n"
    repo = make_tiny_repo(tmp_path / "repo", env, stage)
    deadline = time.monotonic() + PATIENCE
    terminal = Terminal(processes, [sys.executable, "-m", "dvcflow", "run-b"], repo, env)
    modes = termios.tcgetattr(terminal.master)
    assert modes[3] & termios.ECHO
    code = terminal.finish(deadline, close=False)
    try:
        assert code == 0, terminal.output
        assert (repo / "mute.txt").read_text() == "muted\n"  # it ran, the terminal lent to it
        assert termios.tcgetattr(terminal.master)[3] & termios.ECHO, "the echo stayed off"
    finally:
        os.close(terminal.master)
