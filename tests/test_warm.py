"""The warm starter (`dvcflow.cli.warm`, on `dvcflow.proc.zygote`): a command forked from the pre-imported
process behaves as if the console script had run it itself. With the session's server up, every integration
test's `dvcflow(...)` goes through it; these tests check that it does, and what a child takes over from its
client."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvcflow.api.tags import PID_TAG
from dvcflow.cli import warm
from dvcflow.core.errors import ExitCode
from dvcflow.core.settings import warm_enabled
from dvcflow.proc import zygote
from tests.conftest import LiveServer, integration_fixture
from tests.helpers import api_post, base_env, dvcflow, make_tiny_repo
from tests.test_faults import CRASHED_WITHIN_S, Watched, processes_in, slow_repo, wait_for_file


def served(home: Path) -> dict[int, list[str]]:
    """The children the starter forked (pid: the command's arguments), from its log."""
    log = (home / zygote.LOG_NAME).read_text()
    return {int(pid): eval(args) for args, pid in re.findall(r"serving (\[.*\]) in (\d+)", log)}


def refusals(home: Path) -> list[str]:
    return re.findall(r"refused .*", (home / zygote.LOG_NAME).read_text())


def flow_run(api_url: str, output: str) -> dict[str, object]:
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", output)
    assert match, output
    runs = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [match.group(1)]}}})
    assert isinstance(runs, list) and len(runs) == 1
    run = runs[0]
    assert isinstance(run, dict)
    return run


def run_pid(run: dict[str, object]) -> int:
    tags = run["tags"]
    assert isinstance(tags, list)
    token = next(tag.removeprefix(PID_TAG) for tag in tags if tag.startswith(PID_TAG))
    return int(token.partition(".")[0])


def normalized(text: str) -> str:
    """Without what differs between any two runs: names, ids, times, durations, task-run suffixes."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "ID", text)
    text = re.sub(r"\d\d:\d\d:\d\d\.\d+", "TIME", text)
    text = re.sub(r"\d+\.\d+s", "Ns", text)
    text = re.sub(r"'[a-z]+-[a-z]+'", "'NAME'", text)
    text = re.sub(r"\b[a-z]+-[a-z]+ · | · [a-z]+-[a-z]+$", " · NAME", text, flags=re.M)
    return re.sub(r"(Task run '[a-z ]+)-[0-9a-f]{3}'", r"\1-XXX'", text)


@pytest.fixture
def starter(live_server: LiveServer) -> int:
    pid = zygote.ping(live_server.home)  # returns once the starter has finished its imports
    assert pid is not None, (live_server.home / zygote.LOG_NAME).read_text()
    return pid


def test_run_a_is_served_warm_and_prints_and_exits_as_without_it(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    env = live_server.env
    repo = make_tiny_repo(tmp_path / "repo", env)
    first = dvcflow("run-a", cwd=repo, env=env)
    assert first.returncode == 0, first.stderr
    served_first = flow_run(live_server.api_url, first.stdout)
    assert served(live_server.home).get(run_pid(served_first)) == ["run-a"]  # a child of the starter ran it

    warm_run = dvcflow("run-a", cwd=repo, env=env)
    cold_run = dvcflow("run-a", cwd=repo, env={**env, "DVCFLOW_WARM": "0"})
    assert (warm_run.returncode, cold_run.returncode) == (0, 0), warm_run.stderr + cold_run.stderr
    assert run_pid(flow_run(live_server.api_url, cold_run.stdout)) not in served(live_server.home)
    assert normalized(warm_run.stdout) == normalized(cold_run.stdout)
    assert normalized(warm_run.stderr) == normalized(cold_run.stderr)
    assert "Stage 'hello' didn't change, skipping" in warm_run.stderr

    usage = dvcflow("run-a", "--no-such-flag", cwd=repo, env=env)
    cold_usage = dvcflow("run-a", "--no-such-flag", cwd=repo, env={**env, "DVCFLOW_WARM": "0"})
    assert (usage.returncode, usage.stdout, usage.stderr) == (
        cold_usage.returncode,
        cold_usage.stdout,
        cold_usage.stderr,
    )
    assert usage.returncode == 2 and "Usage: python -m dvcflow run-a" in usage.stderr
    assert zygote.ping(live_server.home) == starter  # one starter served them all, and it is still up


def test_environment_and_cwd_reach_the_stage_command(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    stage = (
        "stages:\n  probe:\n"
        "    cmd: python -c \"import os; open('probe.txt', 'w').write(os.environ['WARM_PROBE'])\"\n"
        "    outs:\n      - probe.txt\n"
    )
    repo = make_tiny_repo(tmp_path / "repo", live_server.env, stage)
    (repo / "sub").mkdir()
    before = set(served(live_server.home))
    run = dvcflow("run-a", cwd=repo / "sub", env={**live_server.env, "WARM_PROBE": "from the client"})
    assert run.returncode == 0, run.stderr
    assert (repo / "probe.txt").read_text() == "from the client"
    assert list(set(served(live_server.home)) - before) == [
        run_pid(flow_run(live_server.api_url, run.stdout))
    ]


def test_ctrl_c_reaches_the_served_command(tmp_path: Path, live_server: LiveServer, starter: int) -> None:
    repo = slow_repo(tmp_path, live_server.env, seconds=60)
    run = Watched(["run-a"], repo, live_server.env)
    wait_for_file(repo / "started")
    os.killpg(run.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the client's process group
    code, _, stderr = run.finish(timeout=60)
    assert code == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    assert ["run-a"] in served(live_server.home).values()


EARLY_CTRL_C = """
import json, os, signal, socket
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's shell gives it (not ignored)
from dvcflow.cli import warm
from dvcflow.core.settings import resolve_server_config
from dvcflow.proc import zygote
request = zygote._request(["run-a"], warm.PACKAGE)
connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
path = str(zygote.socket_path(resolve_server_config().home))
child = zygote._handshake(connection, path, json.dumps(request).encode(), 10.0)
os.killpg(child, signal.SIGINT)  # a Ctrl-C right after `go`, before the child has become the command
print(zygote._wait_for(connection, child, set()))
"""


def test_a_ctrl_c_forwarded_before_the_child_began_the_command_still_interrupts_it(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    repo = slow_repo(tmp_path, live_server.env, seconds=60)
    client = subprocess.run(
        [sys.executable, "-c", EARLY_CTRL_C],
        cwd=repo,
        env=live_server.env,
        capture_output=True,
        text=True,
        timeout=40,  # a Ctrl-C the child's starter-made handlers swallowed: the stage would hold 60 s
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.split()[-1] in {"130", str(-signal.SIGINT)}, client.stdout + client.stderr
    assert not (repo / "completions.txt").exists()


def test_sigkill_of_the_client_kills_the_child_and_the_flow_run_is_crashed(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    repo = slow_repo(tmp_path, live_server.env, seconds=60)
    before = set(served(live_server.home))
    run = Watched(["run-a"], repo, live_server.env)
    wait_for_file(repo / "started")
    os.kill(run.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _, _, log = run.finish(timeout=30)  # the child held the same pipes: they close once it is dead
    (child,) = set(served(live_server.home)) - before
    state = None
    while time.monotonic() - killed_at < CRASHED_WITHIN_S:
        ghost = flow_run(live_server.api_url, log)
        state = ghost["state_name"]
        if state == "Crashed":
            break
        time.sleep(0.1)
    assert state == "Crashed", f"still {state} {CRASHED_WITHIN_S} s after SIGKILL"
    assert run_pid(ghost) == child
    deadline = time.monotonic() + 10
    while processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(repo) == []  # the child, DVC and the stage's command
    assert f"the client of {child} is gone" in (live_server.home / zygote.LOG_NAME).read_text()


def test_a_starter_killed_mid_command_leaves_the_command_its_real_exit_status(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    """SIGKILL of the starter while it serves a run-a: the flow goes on in the child, and the client exits
    with the child's own status (issue 20), not 1 ("failed") nor "unknown"."""
    repo = slow_repo(tmp_path, live_server.env, seconds=60)
    run = Watched(["run-a"], repo, live_server.env)
    try:
        wait_for_file(repo / "started")
        os.kill(starter, signal.SIGKILL)
        (repo / "release").touch()  # the stage ends after the starter is gone
        code, stdout, stderr = run.finish(timeout=120)
        assert code == 0, stderr
        assert "exit status is unknown" not in stderr
        assert flow_run(live_server.api_url, stdout)["state_name"] == "Completed"
        assert (repo / "completions.txt").read_text() == "x"
    finally:  # the session's server launches a starter again; later tests expect one
        restarted = dvcflow("server", "start", cwd=tmp_path, env=live_server.env)
        assert restarted.returncode == 0, restarted.stderr
        deadline = time.monotonic() + 90  # the killed one's socket stays until the new one replaces it
        while zygote.ping(live_server.home, timeout=5) in (None, starter):
            assert time.monotonic() < deadline, (live_server.home / zygote.LOG_NAME).read_text()
            time.sleep(0.2)


def test_another_import_path_runs_in_the_calling_process(
    tmp_path: Path, live_server: LiveServer, starter: int
) -> None:
    """Prefect settings are served (tests/test_warm_settings.py); another import path is not."""
    other_path = dvcflow("--version", cwd=tmp_path, env={**live_server.env, "PYTHONPATH": str(tmp_path)})
    assert other_path.stdout == f"dvcflow {warm_version()}\n"
    assert any(": another import path" in line for line in refusals(live_server.home))
    assert zygote.ping(live_server.home) == starter  # refusing is no reason to stop


@integration_fixture
def own_starter(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int]]:
    """A starter of the test's own (no server needed for `--version`), importing a copy of dvcflow's
    source (`PYTHONPATH`, for it and its clients): what a test writes there never reaches the session's
    starter or the checkout. Yields its home, the clients' environment and its pid."""
    src = tmp_path / "src"
    shutil.copytree(warm.PACKAGE, src / "dvcflow")  # with its bytecode: no recompiling
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **base_env(home),
        "DVCFLOW_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PYTHONPATH": str(src),
    }
    with (home / zygote.LOG_NAME).open("wb") as log:
        starter = subprocess.Popen(
            [sys.executable, "-m", "dvcflow.cli.warm", str(home), str(os.getpid())],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_file(zygote.socket_path(home), timeout=30)  # bound at start-up, before its imports
        assert zygote.ping(home) == starter.pid
        yield home, env, starter.pid
    finally:
        starter.terminate()
        assert starter.wait(timeout=60) == 0


def test_a_changed_source_file_runs_the_command_here_and_the_starter_starts_afresh(
    tmp_path: Path, own_starter: tuple[Path, dict[str, str], int]
) -> None:
    home, env, pid = own_starter
    assert dvcflow("--version", cwd=tmp_path, env=env).returncode == 0
    assert "serving ['--version']" in (home / zygote.LOG_NAME).read_text()
    probe = Path(env["PYTHONPATH"]) / "dvcflow" / "_warm_test_probe.py"
    probe.write_text("# a new source file\n")
    changed = dvcflow("--version", cwd=tmp_path, env=env)
    assert (changed.returncode, changed.stdout) == (0, f"dvcflow {warm_version()}\n")
    # Refused (or, had the client taken over 2 s to connect, found by the idle check first)
    wait_for_log(home, "starting afresh", count=1)
    wait_for_file(zygote.socket_path(home), timeout=30)  # the same process, its new image listening
    assert zygote.ping(home) == pid
    probe.write_text("# changed again, and no command comes\n")
    wait_for_log(home, "starting afresh", count=2)  # an idle starter notices by itself
    assert zygote.ping(home) == pid
    assert dvcflow("--version", cwd=tmp_path, env=env).returncode == 0
    assert len(refusals(home)) <= 1


def wait_for_log(home: Path, text: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (home / zygote.LOG_NAME).read_text().count(text) < count:
        assert time.monotonic() < deadline, (home / zygote.LOG_NAME).read_text()
        time.sleep(0.05)


# A client that sends its request, gets its child's pid and leaves without saying GO (as one whose
# handshake timed out does, then running the command itself). The child's stdout is a pipe of the client's:
# the command must print nothing there (before the fix, its child ran at once). Not a guessed wait: a
# witness, the same command asked for next and told to go, runs to its end first; the child that gave up
# was forked before it, so had it run the command too it would have printed by then. Then the client
# leaves, and reads that pipe to its end: all the child ever wrote, once it is gone.
GIVE_UP = """
import json, os, socket, sys
from dvcflow.cli import warm
from dvcflow.proc import zygote

def ask(stdout):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(sys.argv[1])
    request = zygote._request(["--version"], warm.PACKAGE)
    socket.send_fds(connection, [json.dumps(request).encode()], [0, stdout, 2])
    os.close(stdout)
    return connection, json.loads(connection.recv(zygote.MAX_MESSAGE))["accepted"]

def everything(read_end):  # until every writer has closed it: the child is gone
    data = b""
    while chunk := os.read(read_end, 4096):
        data += chunk
    return data

child_out, child_in = os.pipe()
connection, child = ask(child_in)
print("accepted", child)
witness_out, witness_in = os.pipe()
witness, _ = ask(witness_in)
witness.send(zygote.GO)
print("witness:", everything(witness_out))
connection.close()  # gives up: no GO
print("it ran:", everything(child_out))
"""


def test_a_client_that_gave_up_never_gets_its_command_run_and_a_stalled_one_delays_no_one(
    tmp_path: Path, own_starter: tuple[Path, dict[str, str], int]
) -> None:
    home, env, pid = own_starter
    gave_up = subprocess.run(
        [sys.executable, "-c", GIVE_UP, str(zygote.socket_path(home))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # returns once the child (holding the same pipes) is gone too
    )
    child = int(gave_up.stdout.split()[1])
    witnessed = repr(f"dvcflow {warm_version()}\n".encode())
    assert gave_up.stdout == f"accepted {child}\nwitness: {witnessed}\nit ran: b''\n", gave_up.stderr
    deadline = time.monotonic() + 30
    while f"{child} ended" not in (home / zygote.LOG_NAME).read_text():
        assert time.monotonic() < deadline, (home / zygote.LOG_NAME).read_text()
        time.sleep(0.05)
    assert f"the client of {child} is gone" in (home / zygote.LOG_NAME).read_text()

    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stalled:
        stalled.connect(str(zygote.socket_path(home)))  # and sends no request, yet
        assert zygote.ping(home, timeout=60) == pid
        served_now = dvcflow("--version", cwd=tmp_path, env=env)
        assert served_now.stdout == f"dvcflow {warm_version()}\n"
        # Both were answered while the stalled client was still waited for, not after the starter had
        # given up on it (the previous loop waited 2 s for its request, then dropped it): it is answered too.
        stalled.settimeout(60)
        stalled.send(json.dumps({"protocol": zygote.PROTOCOL, "ping": True}).encode())
        assert json.loads(stalled.recv(zygote.MAX_MESSAGE) or b"{}") == {"pong": pid}
    assert "serving ['--version']" in (home / zygote.LOG_NAME).read_text()


def warm_version() -> str:
    from dvcflow import __version__

    return __version__


def test_fingerprint_sees_a_changed_or_added_source_file(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    first = zygote.fingerprint(["script-dir", str(tmp_path)], package=str(tmp_path))
    assert zygote.fingerprint(["other-script-dir", str(tmp_path)], package=str(tmp_path)) == first
    (tmp_path / "a.py").write_text("A = 10\n")
    second = zygote.fingerprint(["script-dir", str(tmp_path)], package=str(tmp_path))
    assert second["code"] != first["code"]
    (tmp_path / "b.py").write_text("")
    assert zygote.fingerprint(["script-dir", str(tmp_path)], package=str(tmp_path))["code"] != second["code"]


def test_commands_run_here_when_off_for_server_commands_or_without_a_starter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVCFLOW_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert warm.serve_here(["--version"]) is None  # no socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:  # a socket no one listens on
        dead.bind(str(zygote.socket_path(tmp_path)))
    assert warm.serve_here(["--version"]) is None
    monkeypatch.setenv("DVCFLOW_WARM", "0")
    assert not warm_enabled(os.environ)
    assert warm.serve_here(["--version"]) is None
    assert warm.serve_here(["server", "stop"]) is None


def test_the_client_exits_with_the_reported_status_and_forwards_signals() -> None:
    saved = {number: signal.getsignal(number) for number in (*zygote._IGNORABLE, signal.SIGTSTP)}
    try:
        client, starter = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        starter.send(b'{"exit": -9}')
        assert zygote._wait_for(client, os.getpid(), ignored={int(signal.SIGQUIT)}) == -9
        assert signal.getsignal(signal.SIGQUIT) is saved[signal.SIGQUIT]  # ignored stays the client's own
        assert signal.getsignal(signal.SIGINT) is not saved[signal.SIGINT]  # forwarded to the child
        starter.send(b'{"status": 3}')  # the child's own word as it exits, then the starter's
        starter.send(b'{"exit": 3}')
        assert zygote._wait_for(client, os.getpid(), ignored=set()) == 3
        starter.send(b'{"status": 0}')  # the child said it, and the starter died before reaping it
        starter.close()
        assert zygote._wait_for(client, os.getpid(), ignored=set()) == 0
        client.close()
        client, starter = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        starter.close()  # the starter died, and the child said nothing (a signal killed it): unknown, not 1
        assert zygote._wait_for(client, os.getpid(), ignored=set(), unknown=ExitCode.UNKNOWN) == 5
        assert ExitCode.UNKNOWN == zygote.UNKNOWN_EXIT
        client.close()
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_push_and_pull_on_a_terminal_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """They may prompt for a password through /dev/tty, which a served child does not have."""
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert warm._may_prompt(["run-a", "--push"]) and warm._may_prompt(["run-b", "--pull"])
    assert not warm._may_prompt(["run-a"])
    assert warm.serve_here(["run-a", "--push"]) is None
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    assert not warm._may_prompt(["run-a", "--push"])  # a pipe or a file: no prompt can be answered
