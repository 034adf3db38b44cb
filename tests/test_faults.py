"""Faults: real signals, processes and server. Each leaves the repo consistent; a re-run completes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from dvcflow.proc.children import TERM_WAIT_S
from dvcflow.services.launch import EPHEMERAL_INTERRUPT_GRACE_S
from tests.conftest import Processes, integration_fixture
from tests.helpers import api_post, base_env, dvc, dvcflow, free_port, make_tiny_repo

# The stage says when its command runs (`started`), then holds on until the test creates `release` (or
# `seconds` pass), and counts its completions: the tests act at known moments, not after guessed sleeps.
SLOW_STAGE = "stages:\n  slow:\n    cmd: python hold.py {seconds}\n    outs:\n      - slow.txt\n"
HOLD_PY = """import pathlib, sys, time
pathlib.Path('started').touch()
deadline = time.monotonic() + float(sys.argv[1])
while not pathlib.Path('release').exists() and time.monotonic() < deadline:
    time.sleep(0.05)
with open('completions.txt', 'a') as completions:
    completions.write('x')
pathlib.Path('slow.txt').write_text('done')
"""


def wait_for_file(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


class Watched:
    """A dvcflow process whose stderr is read as it arrives, so a test can act at the right moment."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dvcflow", *args],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {text!r}; stderr so far:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code, "".join(self.out), "".join(self.lines)


def processes_in(repo: Path) -> list[str]:
    """Live processes (DVC, a stage's command, anything) working in `repo` or below: their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == repo or repo in cwd.parents:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or not ours to look at
            continue
    return found


def slow_repo(tmp_path: Path, env: dict[str, str], seconds: int) -> Path:
    repo = make_tiny_repo(tmp_path / "repo", env, SLOW_STAGE.format(seconds=seconds))
    (repo / "hold.py").write_text(HOLD_PY)  # untracked: DVC does not look at it
    return repo


@pytest.mark.parametrize(
    "command",
    [["run-a"], ["run-b"], ["run-a", "--per-stage"]],  # DVC runs the stage; dvcflow's engine does (twice)
    ids=["run-a", "run-b", "per-stage"],
)
def test_ctrl_c_during_a_stage_exits_130_and_the_next_run_finishes(
    tmp_path: Path, client_env: dict[str, str], command: list[str]
) -> None:
    repo = slow_repo(tmp_path, client_env, seconds=60)
    run = Watched(command, repo, client_env)
    wait_for_file(repo / "started")
    os.killpg(run.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    code, _, stderr = run.finish(timeout=40)  # the stage would hold 60 s: it is stopped, not waited for
    assert code == 130, stderr
    assert "Interrupted" in stderr
    assert not re.search(r"^Traceback", stderr, re.MULTILINE), stderr  # the stage's own is in its log
    assert "Retry 1/1" not in stderr  # an interrupted stage is not retried
    # The stage's task run and the flow run are Crashed, whoever ran the stage's command (issue 20).
    flow_run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", stderr)
    assert flow_run is not None, stderr
    assert final_states(client_env, flow_run.group(1)) == ("Crashed", ["Crashed"])
    assert not (repo / "completions.txt").exists()  # the stage's command never got to its end
    assert not (repo / "slow.txt").exists()
    assert not (repo / "dvc.lock").exists()
    assert not list(repo.glob(".*.tmp"))

    (repo / "release").touch()
    again = dvcflow("run-a", cwd=repo, env=client_env)
    assert again.returncode == 0, again.stderr
    assert (repo / "slow.txt").read_text() == "done"
    assert json.loads(dvc("status", "--json", cwd=repo, env=client_env).stdout) == {}


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def final_states(env: dict[str, str], flow_run_id: str, timeout: float = 30) -> tuple[str, list[str]]:
    """The flow run's state name and its task runs', once the server has recorded each as final (it
    records task runs from events, a moment after they happen): polled, bounded."""
    api_url = client_env_api(env)
    deadline = time.monotonic() + timeout
    while True:
        runs = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        tasks = api_post(api_url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        assert isinstance(runs, list) and isinstance(tasks, list)
        states = [runs[0]["state"], *(task["state"] for task in tasks)]
        if all(state and state["type"] in FINAL_STATES for state in states) or time.monotonic() > deadline:
            return runs[0]["state_name"], sorted(task["state_name"] for task in tasks)
        time.sleep(0.2)


CRASHED_WITHIN_S = 15.0  # the watchdog needs ~0.1 s; the margin is for a loaded 2-core CI machine


@pytest.mark.parametrize("command", ["run-a", "run-b"])  # DVC runs the stage; dvcflow's engine does
def test_sigkill_mid_stage_is_crashed_at_once_leaves_no_process_behind_and_a_rerun_completes(
    tmp_path: Path, client_env: dict[str, str], command: str
) -> None:
    repo = slow_repo(tmp_path, client_env, seconds=60)
    run = Watched([command], repo, client_env)
    wait_for_file(repo / "started")
    os.kill(run.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _, _, killed_log = run.finish(timeout=30)
    killed = re.search(r"/runs/flow-run/([0-9a-f-]{36})", killed_log)
    assert killed is not None, killed_log
    # Crashed without another run: dvcflow's watchdog saw its process die.
    api_url = client_env_api(client_env)
    state = None
    while time.monotonic() - killed_at < CRASHED_WITHIN_S:
        ghost = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [killed.group(1)]}}})
        assert isinstance(ghost, list)
        state = ghost[0]["state_name"]
        if state == "Crashed":
            break
        time.sleep(0.1)
    assert state == "Crashed", f"still {state} {CRASHED_WITHIN_S} s after SIGKILL"
    assert "watchdog" in ghost[0]["state"]["message"]
    deadline = time.monotonic() + 10
    while processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(repo) == []  # DVC and the stage's command died with dvcflow, not re-parented

    (repo / "release").touch()
    again = dvcflow(command, cwd=repo, env=client_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(dvc("status", "--json", cwd=repo, env=client_env).stdout) == {}
    assert "Marked" not in again.stderr  # nothing left for the next run to sweep
    assert (repo / "completions.txt").read_text() == "x"  # only the re-run's command finished


def test_two_runs_at_once_take_turns(tmp_path: Path, client_env: dict[str, str]) -> None:
    repo = slow_repo(tmp_path, client_env, seconds=120)
    first = Watched(["run-a"], repo, client_env)
    wait_for_file(repo / "started")
    second = Watched(["run-a"], repo, client_env)
    second.wait_for("Another dvcflow run is in progress")  # while the first one's stage still runs
    (repo / "release").touch()
    second_code, _, second_err = second.finish()
    first_code, _, first_err = first.finish()
    assert (first_code, second_code) == (0, 0), first_err + second_err
    assert "Stage 'slow' didn't change, skipping" in second_err
    assert (repo / "completions.txt").read_text() == "x"  # the stage ran once, not twice at the same time
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "slow" in lock["stages"]


# A stage that notes each event with its time: the first run's command holds on until SIGTERM, then takes
# `TRAP_S` to end (a trainer writing a checkpoint), noting it is alive meanwhile; a later run's ends at once.
TRAPS_SIGTERM = """import os, pathlib, signal, sys, time
def note(what):
    with open('stage.log', 'a') as log:
        log.write(f'{what} {time.time():.6f} {os.getpid()}\\n')
first = not os.path.exists('stage.log')
note('start')
if not first:
    pathlib.Path('slow.txt').write_text('done')
    sys.exit(0)
def on_term(*_):
    note('term')
    ends = time.monotonic() + {trap_s}
    while time.monotonic() < ends:
        note('alive')
        time.sleep(0.05)
    note('end')
    os._exit(143)
signal.signal(signal.SIGTERM, on_term)
time.sleep(120)
"""
TRAP_S = 3.0  # below the tether's SIGKILL after 5 s (`tether.GRACE_S`): the stage ends on its own


# DVC's child holds the lock; the shim around the engine's stage command does
@pytest.mark.parametrize("command", ["run-a", "run-b"], ids=["run-a", "run-b"])
def test_a_run_waiting_for_a_killed_run_starts_once_its_stage_has_ended(
    tmp_path: Path, client_env: dict[str, str], command: str
) -> None:
    """The run lock outlives a SIGKILLed dvcflow until the stage's process group is gone (issue 20 §4):
    the next run, already waiting for the lock, must not start its stage beside the killed run's, which
    takes `TRAP_S` to end after its SIGTERM."""
    env = {**client_env, "DVCFLOW_WARM": "0"}  # the starter may decline a command while src/ changes
    repo = make_tiny_repo(tmp_path / "repo", env, SLOW_STAGE.replace("hold.py {seconds}", "stage.py"))
    (repo / "stage.py").write_text(TRAPS_SIGTERM.replace("{trap_s}", str(TRAP_S)))
    first = Watched([command], repo, env)
    wait_for_file(repo / "stage.log")
    second = Watched([command], repo, env)
    second.wait_for("Another dvcflow run is in progress")
    os.kill(first.process.pid, signal.SIGKILL)
    first.finish(timeout=30)
    code, _, stderr = second.finish(timeout=120)
    assert code == 0, stderr
    assert "busy" not in stderr, stderr  # DVC's locks of the stage's outputs, held by the killed run's DVC
    events = [line.split() for line in (repo / "stage.log").read_text().splitlines()]
    kinds = [kind for kind, _, _ in events]
    assert kinds[:2] == ["start", "term"] and kinds.count("start") == 2, kinds
    killed = [float(at) for kind, at, pid in events if pid == events[0][2]]
    started = [float(at) for kind, at, pid in events[1:] if kind == "start"]
    # The killed run's stage had ended before the next run's started, not beside it.
    assert "end" in kinds and kinds.index("end") < kinds.index("start", 1), kinds
    assert started[0] > max(killed), (started, max(killed))
    assert (repo / "slow.txt").read_text() == "done"
    assert json.loads(dvc("status", "--json", cwd=repo, env=env).stdout) == {}


SERVER_STOP_WITHIN_S = 20.0  # `dvcflow server stop` with a run on it: the run ending (Ctrl-C), the stop
API_LOST_EXIT_WITHIN_S = 15.0  # the pidfd sees the server die at once; DVC's stop, and a loaded CI's margin


def crashed_once_back(env: dict[str, str], flow_run_id: str, timeout: float = 60) -> dict[str, object]:
    """The flow run once it is Crashed, after the server is back (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = api_post(
            client_env_api(env), "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )
        assert isinstance(runs, list) and runs
        if runs[0]["state_name"] == "Crashed" or time.monotonic() > deadline:
            return runs[0]
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["sigkill", "server-stop"], ids=["sigkill", "server-stop"])
def test_server_gone_during_a_run(tmp_path: Path, processes: Processes, how: str) -> None:
    """Issue 20: a SIGKILL of the server gave exit 4 only 46-54 s later, with Prefect's ERROR noise, and left
    the run Running. Now: exit 4 within seconds and one error, the run Crashed once the server is back (the
    watchdog). `dvcflow server stop` tells the command to end first (exit 130, recorded Crashed)."""
    home, port = tmp_path / "home", free_port()
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(port))
    assert processes.dvcflow("server", "start", cwd=tmp_path, env=env).returncode == 0
    try:
        repo = slow_repo(tmp_path, env, seconds=120)  # the stage would hold 120 s: it is not waited for
        run = Watched(["run-a"], repo, env)
        wait_for_file(repo / "started")
        gone_at = time.monotonic()
        if how == "sigkill":
            os.kill(int((home / "server.pid").read_text()), signal.SIGKILL)
        else:
            stop = processes.dvcflow("server", "stop", cwd=tmp_path, env=env)
            stopped_in = time.monotonic() - gone_at
            assert stop.returncode == 0, stop.stderr
            assert "A dvcflow command is running flow run" in stop.stderr, stop.stderr
            # The told command ends within seconds; not the 30 s wait for it (`crash.STOP_WAIT_S`), which
            # a command ended but not reaped yet (a zombie: the test reaps it in `finish`) must not cost.
            assert stopped_in < SERVER_STOP_WITHIN_S, f"dvcflow server stop took {stopped_in:.1f} s"
        code, _, stderr = run.finish(timeout=120)
        took = time.monotonic() - gone_at
        errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
        if how == "sigkill":
            assert code == 4, stderr
            assert took < API_LOST_EXIT_WITHIN_S, f"exit 4 only {took:.1f} s after the server died"
            assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], stderr
        else:
            assert code == 130, stderr
            assert errors == [], stderr
        for noise in ("EventsWorker", "Error logging to API", "Traceback"):
            assert noise not in stderr, stderr
        assert not (repo / "completions.txt").exists()  # the stage was stopped, not waited for
        assert dvc("status", "--json", cwd=repo, env=env).returncode == 0  # DVC still reads the repo

        assert processes.dvcflow("server", "start", cwd=tmp_path, env=env).returncode == 0
        flow_run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", stderr)
        assert flow_run is not None, stderr
        ghost = crashed_once_back(env, flow_run.group(1))  # no run needed: the watchdog waited for it
        assert ghost["state_name"] == "Crashed", ghost
        (repo / "release").touch()  # the next run's stage ends at once instead of holding 120 s
        again = dvcflow("run-a", cwd=repo, env=env)
        assert again.returncode == 0, again.stderr
        assert json.loads(dvc("status", "--json", cwd=repo, env=env).stdout) == {}
    finally:
        dvcflow("server", "stop", cwd=tmp_path, env=env)
        reap_watchdogs(port)


def reap_watchdogs(port: int) -> None:
    """End the watchdogs still waiting for the server of `port` (a test that failed before the server was
    back leaves them polling for `watchdog.PATIENCE_S`): found by the API address on their command line."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "dvcflow.api.watchdog" in command and any(f":{port}/" in part for part in command):
            with contextlib.suppress(psutil.Error):
                process.kill()


FLOW_SERIES = """
import sys
from prefect import flow, tags
from prefect.settings import temporary_settings

@flow(name="load probe")
def probe(i: int) -> int:
    return i

with tags(sys.argv[2]), temporary_settings(updates={"flows.heartbeat_frequency": None}):
    states = [probe(i, return_state=True) for i in range(int(sys.argv[1]))]
print(sum(state.is_completed() for state in states))
"""


def test_load_fifty_in_a_row_and_eight_at_once(tmp_path: Path, client_env: dict[str, str]) -> None:
    """Counted by what this test started (a tag of its own, the runs' links): other tests share the server,
    and a deployment's schedule of theirs may add runs meanwhile."""
    api_url = client_env_api(client_env)
    env = {**client_env, "PREFECT_API_URL": api_url}
    series_tag = f"load-probe-{uuid.uuid4().hex[:8]}"
    series = subprocess.run(
        [sys.executable, "-c", FLOW_SERIES, "50", series_tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert series.stdout.strip() == "50", series.stderr
    assert "database is locked" not in series.stderr

    repos = [make_tiny_repo(tmp_path / f"repo{i}", client_env) for i in range(8)]
    runs = [Watched(["run-a", "--no-show-metrics"], repo, client_env) for repo in repos]
    results = [run.finish(timeout=300) for run in runs]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    assert not any("database is locked" in out + err for _, out, err in results)
    links = [re.findall(r"/runs/flow-run/([0-9a-f-]{36})", out + err) for _, out, err in results]
    assert all(links), results
    ids = {found[0] for found in links}
    # Nothing lost: the server holds every run this test made, and nothing stuck: each of them finished.
    probes = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [series_tag]}}})
    made = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": sorted(ids)}}})
    assert isinstance(probes, list) and isinstance(made, list)
    assert (len(probes), {run["id"] for run in made}) == (50, ids)
    assert {run["state_type"] for run in probes + made} == {"COMPLETED"}


def client_env_api(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['DVCFLOW_PORT']}/api"


# dvcflow's own worst case after Ctrl-C (SIGINT, SIGTERM, SIGKILL of DVC's group), plus a loaded CI's margin
EPHEMERAL_EXIT_WITHIN_S = EPHEMERAL_INTERRUPT_GRACE_S + TERM_WAIT_S + 3.0


@integration_fixture
def ephemeral_run_mid_stage(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`dvcflow run-a --ephemeral` (no server, so no warm starter) in a slow repository, once its stage
    has started; its output in tmp_path/output.txt; whatever is left of its process group killed after."""
    env = base_env(tmp_path / "home")
    env["DVCFLOW_HOME"] = str(tmp_path / "home")
    repo = slow_repo(tmp_path, env, seconds=60)
    with (tmp_path / "output.txt").open("w") as output:  # a file: a pipe would wait for the server's exit
        run = subprocess.Popen(
            [sys.executable, "-m", "dvcflow", "run-a", "--ephemeral"],
            cwd=repo,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_file(repo / "started", timeout=240)  # the temporary server starts slowly on 2 cores
            yield repo, run
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)  # the temporary server and the stage, if still there


def test_sigkill_with_the_temporary_server_leaves_no_server_behind(
    ephemeral_run_mid_stage: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    """Prefect stops its temporary server only in an exit hook, so a SIGKILLed dvcflow left it serving
    forever; it is tethered now."""
    repo, run = ephemeral_run_mid_stage
    assert any("uvicorn" in line for line in processes_in(repo))  # it runs where dvcflow runs
    run.kill()
    run.wait(timeout=30)
    deadline = time.monotonic() + 15
    while processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The temporary server, DVC and the stage's command all ended with dvcflow.
    assert processes_in(repo) == []


def test_ctrl_c_with_the_temporary_server_exits_130_at_once(
    tmp_path: Path, ephemeral_run_mid_stage: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """--ephemeral: the terminal's SIGINT stops Prefect's temporary server too; dvcflow must not spend
    minutes retrying to record the run on it."""
    _, run = ephemeral_run_mid_stage
    os.killpg(run.pid, signal.SIGINT)
    interrupted = time.monotonic()
    code = run.wait(timeout=60)
    took = time.monotonic() - interrupted
    text = (tmp_path / "output.txt").read_text()
    assert code == 130, text
    assert took < EPHEMERAL_EXIT_WITHIN_S, f"exited {took:.1f} s after Ctrl-C"
    assert "Interrupted" in text and "Traceback" not in text
