"""`dvcflow deploy`, `trigger`, `runs`, `notify` against the session's real Prefect server, with real
serving processes, a real `prefect worker` and a real HTTP receiver."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer
from tests.helpers import dvcflow, make_tiny_repo

# a -> b -> c, and d on its own. Each stage appends its name to ran.log (untracked) when it runs and
# fails while a file `break-<name>` exists.
STAGE_PY = """\
import os, sys
name, deps = sys.argv[1], sys.argv[2:]
with open("ran.log", "a") as log:
    log.write(name + "\\n")
if os.path.exists(f"break-{name}"):
    sys.exit(f"stage {name} is broken")
with open(f"{name}.txt", "w") as out:
    out.write("".join(open(f"{dep}.txt").read() for dep in deps) + name)
"""
CHAIN = """\
stages:
  a: {cmd: python stage.py a, deps: [stage.py], outs: [a.txt]}
  b: {cmd: python stage.py b a, deps: [stage.py, a.txt], outs: [b.txt]}
  c: {cmd: python stage.py c b, deps: [stage.py, b.txt], outs: [c.txt]}
  d: {cmd: python stage.py d, deps: [stage.py], outs: [d.txt]}
"""


# Bounds for waits the issue does not fix: generous, because a loaded 2-core CI machine runs a no-op
# pipeline run in 15-30 s (a fresh process imports Prefect and DVC each time).
PATIENCE = 150


class Served:
    """A `dvcflow deploy` process: its stdout lines as they come, and Ctrl-C as a terminal sends it."""

    def __init__(self, process: subprocess.Popen[str], marker: str) -> None:
        self.process = process
        self.marker = marker
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Any, timeout: float) -> list[str]:
        """Lines until `predicate(lines so far)` holds; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self.lines.empty()):
                raise AssertionError(f"gave up after {timeout} s; output so far:\n" + "\n".join(self.seen))
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue
        return self.seen

    def interrupt(self) -> int:
        """SIGINT to the whole process group, as Ctrl-C in a terminal does."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=60)

    def survivors(self, grace: float = 15.0) -> list[str]:
        """Processes this serving process started (they inherit its marker) still alive `grace` s after it
        exited: a child may take a moment to notice its parent is gone (multiprocessing's resource
        tracker reads a pipe until it closes)."""
        deadline = time.monotonic() + grace
        while (alive := self._marked()) and time.monotonic() < deadline:
            time.sleep(0.2)  # polling /proc, not synchronising with the process under test
        return alive

    def _marked(self) -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"DVCFLOW_TEST_MARK={self.marker}".encode() in environ.split(b"\0"):
                try:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                except OSError:
                    continue
        return found


@contextmanager
def serving(repo: Path, env: dict[str, str], *args: str, command: str = "deploy") -> Iterator[Served]:
    """`dvcflow deploy ARGS` (or another long-running `command`) in its own process group, killed after."""
    marker = uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, "-m", "dvcflow", command, *args],
        cwd=repo,
        env={**env, "DVCFLOW_TEST_MARK": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    served = Served(process, marker)
    try:
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def completed(lines: list[str]) -> int:
    return sum(": Completed after " in line for line in lines)


def test_interval_schedule_runs_twice_and_ctrl_c_leaves_no_process(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_tiny_repo(tmp_path / "repo", client_env)
    name = unique("every5")
    with serving(repo, client_env, "--interval", "5", "--name", name) as served:
        served.wait_for(lambda seen: any("Serving; Ctrl-C stops." in line for line in seen), timeout=PATIENCE)
        served.wait_for(lambda seen: completed(seen) >= 1, timeout=PATIENCE)
        # The next run is due 5 s after the first was; the runner runs one at a time (limit 1), so it starts
        # by the time the first ended, and takes one more run's time: bounded by the schedule, not a guess.
        lines = served.wait_for(lambda seen: completed(seen) >= 2, timeout=5 + PATIENCE)
        assert f"Deployment 'dvcflow pipeline/{name}' (every 5 s), served from this process." in lines
        assert any(line.endswith("started") or " started  http" in line for line in lines)
        code = served.interrupt()
        assert code == 0, served.process.stderr.read() if served.process.stderr else code
        assert served.survivors() == []
    assert (repo / "out.txt").read_text() == "hello"


def api(live_server: LiveServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The Prefect REST API, as a client independent of dvcflow (the UI, a script) uses it."""
    import urllib.request

    request = urllib.request.Request(
        f"{live_server.api_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


def deployment_id(lines: list[str]) -> str:
    for line in lines:
        if "/deployments/deployment/" in line:
            return line.rsplit("/", 1)[1].strip()
    raise AssertionError("no deployment link in:\n" + "\n".join(lines))


def make_chain_repo(root: Path, env: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "stage.py").write_text(STAGE_PY)
    (root / ".gitignore").write_text("ran.log\nbreak-*\n")
    return make_tiny_repo(root, env, stages=CHAIN)


def ran(repo: Path) -> list[str]:
    path = repo / "ran.log"
    return path.read_text().split() if path.exists() else []


def test_api_run_with_overridden_parameters_fails_then_a_retry_redoes_only_what_is_out_of_date(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    """The deployment defaults to one `dvc repro` task; a run started through the API asks for
    per-stage with 2 jobs and gets it. Stage b fails, so the run ends Failed with c not run; b is
    fixed and the run retried as the UI's Retry does it: only b and c run again."""
    repo = make_chain_repo(tmp_path / "repo", client_env)
    (repo / "break-b").write_text("")
    with serving(repo, client_env, "--name", unique("chain")) as served:
        lines = served.wait_for(lambda seen: any("Serving; Ctrl-C stops." in line for line in seen), PATIENCE)
        assert "(on demand only)" in lines[0]
        run = api(
            live_server,
            "POST",
            f"/deployments/{deployment_id(lines)}/create_flow_run",
            {"parameters": {"per_stage": True, "jobs": 2}},
        )
        served.wait_for(lambda seen: any(": Failed after " in line for line in seen), PATIENCE)
        assert any("1 stage(s) failed: b" in line for line in served.seen)
        flow_run = api(live_server, "GET", f"/flow_runs/{run['id']}")
        assert flow_run["parameters"]["per_stage"] is True and flow_run["parameters"]["jobs"] == 2
        # The run's state message, as the UI shows it, says why in the stage's own words (issue 20).
        assert flow_run["state"]["message"] == (
            "1 stage(s) failed: b; 1 not run: c\n"
            "b: stage b is broken (exit code 1) — the retry failed the same way"
        )
        expected = {"a": "Completed", "b": "Failed", "c": "NotRun", "d": "Completed"}
        deadline = time.monotonic() + PATIENCE
        while True:  # the server records task runs from events, a moment after the run ends
            tasks = api(
                live_server, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}}
            )
            states = {task["name"]: task["state"]["name"] for task in tasks if task["name"] in "abcd"}
            if states == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling the API for records written asynchronously, bounded above
        assert states == expected
        before = ran(repo)
        assert sorted(set(before)) == ["a", "b", "d"]

        (repo / "break-b").unlink()
        api(
            live_server,
            "POST",
            f"/flow_runs/{run['id']}/set_state",
            {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}},
        )
        served.wait_for(lambda seen: completed(seen) >= 1, PATIENCE)
        assert ran(repo)[len(before) :] == ["b", "c"]
        assert (repo / "c.txt").read_text() == "abc"
        assert served.interrupt() == 0


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records the bodies POSTed to it."""

    def __init__(self) -> None:
        self.posts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.put({"path": self.path, **json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any]:
        """The first POST (kept in `received` with all others) for which `predicate` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching POST within {timeout} s; got {self.received}")
            try:
                post = self.posts.get(timeout=remaining)
            except queue.Empty:
                continue
            self.received.append(post)
            if predicate(post):
                return post

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_name(output: str) -> str:
    match = re.search(r"Flow run '([\w-]+)' finished in state", output)
    assert match, output
    return match.group(1)


def test_notify_posts_once_for_a_failed_run_and_for_completed_only_when_asked(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = make_chain_repo(tmp_path / "repo", client_env)
    (repo / "break-b").write_text("")
    receiver = Receiver()
    token = uuid.uuid4().hex
    try:
        created = dvcflow("notify", "--webhook", f"{receiver.url}/hook/{token}", cwd=repo, env=client_env)
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("Created notification 'repo-webhook': webhook ")
        assert "ends Failed, Crashed." in created.stdout
        listed = dvcflow("notify", "--list", "--json", cwd=repo, env=client_env)
        assert json.loads(listed.stdout)[0]["on"] == ["crashed", "failed"]
        assert token not in created.stdout + created.stderr + listed.stdout + listed.stderr

        failed = dvcflow("run-a", cwd=repo, env=client_env)
        assert failed.returncode == 1
        failed_run = run_name(failed.stdout)
        post = receiver.wait_for(lambda post: post["run"] == failed_run, timeout=30)
        assert post["path"] == f"/hook/{token}"
        # The notification and `dvcflow runs --json` say why in the stage's own words (issue 20).
        reason = "failed to reproduce 'b': stage b is broken (exit code 1) — the retry failed the same way"
        assert post["state"] == "Failed" and post["reason"] == reason
        listed_runs = dvcflow("runs", "--json", "--limit", "1", cwd=repo, env=client_env)
        rows = json.loads(listed_runs.stdout)
        assert [(row["name"], row["message"]) for row in rows] == [(failed_run, reason)]
        assert post["repository"] == str(repo) and post["flow"] == "Prefect operates DVC pipeline"
        assert post["link"].endswith(f"/runs/flow-run/{failed.stdout.split('/runs/flow-run/')[1].split()[0]}")

        (repo / "break-b").unlink()
        quiet = dvcflow("run-a", cwd=repo, env=client_env)
        assert quiet.returncode == 0, quiet.stderr
        updated = dvcflow(
            "notify",
            "--webhook",
            f"{receiver.url}/hook/{token}",
            "--on",
            "completed",
            cwd=repo,
            env=client_env,
        )
        assert updated.stdout.startswith("Updated notification 'repo-webhook'"), updated.stdout
        loud = dvcflow("run-a", cwd=repo, env=client_env)
        loud_run = run_name(loud.stdout)
        receiver.wait_for(lambda post: post["run"] == loud_run and post["state"] == "Completed", timeout=30)
        # By the time the third run's message arrived, the second (Completed, not asked for) sent none
        # and the first sent exactly one.
        assert [post["run"] for post in receiver.received] == [failed_run, loud_run]

        removed = dvcflow("notify", "--remove", "repo-webhook", cwd=repo, env=client_env)
        assert removed.stdout.startswith("Removed notification 'repo-webhook'"), removed.stderr
        again = dvcflow("notify", "--remove", "repo-webhook", cwd=repo, env=client_env)
        assert again.returncode == 2
        assert again.stderr.splitlines()[-2:] == [
            "Error: no notification named 'repo-webhook' for this repository",
            "Hint: `dvcflow notify --list` shows none",
        ]
    finally:
        receiver.close()


def test_a_prefect_worker_runs_a_triggered_run_of_a_pool_deployment(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    repo = make_tiny_repo(tmp_path / "repo", client_env)
    pool, name = unique("pool"), unique("pooled")
    registered = dvcflow("deploy", "--pool", pool, "--shared-disk", "--name", name, cwd=repo, env=client_env)
    assert registered.returncode == 0, registered.stderr
    assert f"in work pool '{pool}'" in registered.stdout
    assert f"prefect worker start --pool {pool}" in registered.stdout
    worker_env = {
        **client_env,
        "PREFECT_API_URL": live_server.api_url,
        "PREFECT_HOME": str(tmp_path / "worker-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DVC_NO_ANALYTICS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
        cwd=tmp_path,
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        triggered = dvcflow("trigger", name, "--wait", cwd=repo, env=client_env, timeout=120)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        assert f"of 'dvcflow pipeline/{name}': Completed" in triggered.stdout
        assert (repo / "out.txt").read_text() == "hello"
    finally:
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


# Bad input that needs the server to be recognised (the rest: tests/test_deploy_cli.py, no server).
BAD_INPUT = {
    "cron-invalid": (
        ["deploy", "--cron", "61 * * * *", "--name", "bad-cron"],
        'Error: --cron: Invalid cron string: "61 * * * *"',
    ),
    "trigger-unknown": (["trigger", "no-such-deployment"], "Error: no deployment named 'no-such-deployment'"),
}


def test_bad_input_is_one_error_line_and_registers_nothing(
    tmp_path: Path, client_env: dict[str, str], live_server: LiveServer
) -> None:
    """Every case runs as its own process, all at once (they are independent); `--remove` of an unknown
    name is checked in the notify test."""
    repo = make_tiny_repo(tmp_path / "repo", client_env)
    processes = {
        case: subprocess.Popen(
            [sys.executable, "-m", "dvcflow", *args],
            cwd=repo,
            env=client_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (args, _) in BAD_INPUT.items()
    }
    for case, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert process.returncode == 2, (case, stderr)
        assert errors == [BAD_INPUT[case][1]], (case, stderr)
        assert "Traceback" not in stderr and stdout == "", (case, stdout)
    deployments = api(
        live_server, "POST", "/deployments/filter", {"deployments": {"name": {"any_": ["bad-cron"]}}}
    )
    assert deployments == []


def test_a_deployment_runs_its_targets_per_stage_within_the_resources_its_stages_declare(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """`deploy TARGETS --per-stage --resource gpu=1 -j 3`: a run reproduces the targets (and what they
    depend on) and nothing else, and its `gpu: 1` stages never overlap, whoever starts the run."""
    from tests.helpers import forget_machine_limit, make_resource_repo, most_at_once, stage_spans, timed_stage

    forget_machine_limit(client_env, "gpu")  # an earlier test's limit would be kept
    stages = {f"g{index}": timed_stage(f"g{index}", 0.5, {"resources": {"gpu": 1}}) for index in range(3)}
    stages["other"] = timed_stage("other", 0.1)
    repo = make_resource_repo(tmp_path / "repo", client_env, stages)
    name = unique("gpus")
    args = ("g0", "g1", "g2", "--per-stage", "-j", "3", "--resource", "gpu=1", "--name", name)
    with serving(repo, client_env, *args) as served:
        served.wait_for(lambda seen: any("Serving; Ctrl-C stops." in line for line in seen), PATIENCE)
        triggered = dvcflow("trigger", name, "--wait", cwd=repo, env=client_env, timeout=PATIENCE)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    spans = stage_spans(repo)
    assert sorted(spans) == ["g0", "g1", "g2"]  # the targets; `other` was not asked for
    assert most_at_once([(span["start"], span["end"]) for span in spans.values()]) == 1
    assert {span["gpus"] for span in spans.values()} == {"0"}  # the one GPU's index, in turn


def test_a_deployment_whose_resource_flags_no_stage_fits_in_is_refused(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """The flags win over every machine's settings and GPUs: a stage needing more would fail every run."""
    from tests.helpers import make_resource_repo, timed_stage

    stages = {"big": timed_stage("big", 0.1, {"resources": {"gpu": 2}}), "small": timed_stage("small", 0.1)}
    repo = make_resource_repo(tmp_path / "repo", client_env, stages)
    refused = dvcflow("deploy", "--per-stage", "--resource", "gpu=1", cwd=repo, env=client_env)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[0] == (
        "Error: stage 'big' needs gpu=2, more than the whole capacity (gpu=1, from --resource)"
    )
    assert "Deployment" not in refused.stdout
