"""Retake the Prefect UI screenshots in docs/figures/ against today's code (part of `make docs`).

    .venv/bin/python scripts/ui_screenshots.py            # all figures, written to docs/figures/
    .venv/bin/python scripts/ui_screenshots.py run-a run-b  # only these (names: see FIGURES)
    .venv/bin/python scripts/ui_screenshots.py --out DIR    # somewhere else

It starts its own dvcflow server (a free port, its own DVCFLOW_HOME in a temporary folder), runs the real
commands that fill each page in a temporary git+DVC copy of the demo, and shoots each page with Chromium
headless, driven through the DevTools protocol so that it waits until the page shows what it should (a
single-page app draws long after the load event). Every wait is bounded; the server, the serving process
and the browser are stopped and the temporary folder removed on the way out, whatever happened.

Needs Chromium (`/usr/bin/chromium`, or CHROMIUM=path); without it, exits 0 with a one-line note.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.helpers import (  # noqa: E402  (the builders the tests use: one copy of the demo recipe)
    base_env,
    free_port,
    make_pipeline_repo,
    make_resource_repo,
    timed_stage,
)

FIGURES_DIR = PROJECT / "docs" / "figures"
WIDTH, HEIGHT = 1400, 900
COMMAND_TIMEOUT = 300  # one dvcflow command on a loaded 2-core machine
PAGE_TIMEOUT = 60  # a page until it shows what it should
RUN_TIMEOUT = 180  # a deployment run until it ends


def log(message: str) -> None:
    print(f"ui_screenshots: {message}", flush=True)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# --- the browser ----------------------------------------------------------------------------------------


class Browser:
    """One headless Chromium and one page of it, through the DevTools protocol (a websocket)."""

    def __init__(self, executable: str, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True)
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        port = port_file.read_text().split("\n")[0].strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.loads(response.read()) if t.get("type") == "page"]
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are dropped)."""
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + 30
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def shoot(self, url: str, ready: str, target: Path, *, height: int = HEIGHT, settle: float = 2.0) -> None:
        """Open `url`, wait until the JavaScript expression `ready` holds, then save a PNG of the viewport."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not self.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 400) : ''")
                raise RuntimeError(f"{url} did not show what it should within {PAGE_TIMEOUT} s: {text!r}")
            time.sleep(0.5)
        time.sleep(settle)  # the graph's canvas and the fonts settle after the text is there
        data = self.call("Page.captureScreenshot", format="png")["data"]
        target.write_bytes(base64.b64decode(data))
        log(
            f"wrote {target.relative_to(PROJECT) if target.is_relative_to(PROJECT) else target}"
            f" ({target.stat().st_size // 1024} KB)"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def text_on_page(*needles: str) -> str:
    """A `ready` expression: every needle is in the page's visible text."""
    return " && ".join(f"document.body && document.body.innerText.includes({json.dumps(n)})" for n in needles)


# --- the server and the commands ------------------------------------------------------------------------


class Lab:
    """dvcflow's server on a free port with its own home, and the environment its commands run in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.env = base_env(root)
        self.env.update(
            DVCFLOW_HOME=str(root / "dvcflow-home"),
            DVCFLOW_PORT=str(self.port),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DVC_NO_ANALYTICS="1",
        )
        self.ui = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.ui}/api"

    def dvcflow(self, *args: str, cwd: Path, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dvcflow", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"dvcflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout + done.stderr

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        for attempt in range(6):
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as err:  # a busy SQLite answers 503: back off as Prefect's client
                if err.code not in (429, 502, 503) or attempt == 5:
                    raise
                time.sleep(0.5 * 2**attempt)

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := check()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting {timeout:.0f} s for {what}")
            time.sleep(1)
        return found

    def demo(self, name: str) -> Path:
        return make_pipeline_repo(self.root / name, self.env)


def flow_run_link(output: str) -> str:
    found = re.findall(r"http://\S+/runs/flow-run/[0-9a-f-]{36}", output)
    if not found:
        raise RuntimeError(f"no flow run link in:\n{output}")
    return str(found[-1])


@contextlib.contextmanager
def server(lab: Lab) -> Iterator[None]:
    lab.dvcflow("server", "start", cwd=lab.root)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            lab.dvcflow("server", "stop", cwd=lab.root, check=False)


@contextlib.contextmanager
def background(lab: Lab, *args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """A dvcflow command in its own process group; Ctrl-C (SIGINT to the group) on the way out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dvcflow", *args],
        cwd=cwd,
        env=lab.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# --- the figures ----------------------------------------------------------------------------------------


def shoot_runs(lab: Lab, browser: Browser, out: Path, wanted: set[str]) -> None:
    """docs/tour.md: run-b on a fresh copy (every stage runs: the DAG and today's log lines), then
    `run-a --fail-once` (the retried `dvc repro` task, the metrics artifact, the streamed logs)."""
    repo = lab.demo("tour")
    link_b = flow_run_link(lab.dvcflow("run-b", cwd=repo))
    link_a = flow_run_link(lab.dvcflow("run-a", "--fail-once", cwd=repo))
    if "run-b" in wanted:
        browser.shoot(
            link_b,
            text_on_page("Logs", "metrics summary", "Beginning flow run"),
            out / "run-b-dag-in-prefect-ui.png",
            settle=4,
        )
    if "run-a" in wanted:
        browser.shoot(
            link_a, text_on_page("Logs", "dvc repro", "Retry 1/1"), out / "run-a-in-prefect-ui.png", settle=4
        )


def shoot_notify(lab: Lab, browser: Browser, out: Path) -> None:
    """docs/deploy.md "Notifications": the automation `dvcflow notify --webhook` creates."""
    repo = lab.demo("chain")
    lab.dvcflow(
        "notify", "--webhook", "http://127.0.0.1:4399/hooks/T0KEN-abc123", "--name", "chain-alerts", cwd=repo
    )
    automations = lab.api("POST", "/automations/filter", {})
    automation = next(a for a in automations if a["name"] == "chain-alerts")
    browser.shoot(
        f"{lab.ui}/automations/automation/{automation['id']}",
        text_on_page("chain-alerts", "Trigger"),
        out / "automation-in-prefect-ui.png",
    )


def shoot_deployment(lab: Lab, browser: Browser, out: Path, wanted: set[str]) -> None:
    """docs/deploy.md: `dvcflow deploy --cron ... --on-change` serving; a run started by hand, then a
    change to params.yaml and the run its trigger schedules; the deployment page, the Custom run form
    and the Event Feed."""
    repo = lab.demo("demo")
    with background(
        lab, "deploy", "--name", "demo", "--cron", "0 3 * * *", "--on-change", "--debounce", "1", cwd=repo
    ):
        deployment = lab.wait(
            "the deployment",
            lambda: next(
                iter(lab.api("POST", "/deployments/filter", {"deployments": {"name": {"any_": ["demo"]}}})),
                None,
            ),
            COMMAND_TIMEOUT,
        )
        lab.wait(
            "its automation (the on-change trigger)",
            lambda: lab.api("GET", f"/automations/related-to/prefect.deployment.{deployment['id']}"),
            COMMAND_TIMEOUT,
        )

        def finished() -> list[dict[str, Any]]:
            runs = lab.api(
                "POST",
                "/flow_runs/filter",
                {
                    "deployments": {"id": {"any_": [deployment["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
                },
            )
            return list(runs)

        lab.dvcflow("trigger", "demo", cwd=repo)
        lab.wait("the run started by hand", lambda: len(finished()) >= 1, RUN_TIMEOUT)
        time.sleep(3)  # the watcher's debounce window after the hand run rewrote outputs (not inputs)
        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("max_iter: 200", "max_iter: 300"))
        lab.wait("the run the change scheduled", lambda: len(finished()) >= 2, RUN_TIMEOUT)
        page = f"{lab.ui}/deployments/deployment/{deployment['id']}"
        if "deployment" in wanted:
            browser.shoot(
                page, text_on_page("demo", "Completed", "Schedules"), out / "deployment-in-prefect-ui.png"
            )
        if "custom-run" in wanted:
            browser.shoot(
                f"{page}/run", text_on_page("repo_root", "keep_going"), out / "deployment-custom-run-form.png"
            )
        if "event-feed" in wanted:
            events = "&".join(
                f"events={e}" for e in ("dvcflow.repository.changed", "prefect.flow-run.Scheduled")
            )
            browser.shoot(
                f"{lab.ui}/events?{events}",
                text_on_page("repository changed", "Flow run scheduled"),
                out / "on-change-event-feed.png",
                height=1000,
            )


def shoot_concurrency(lab: Lab, browser: Browser, out: Path) -> None:
    """docs/resources.md: the machine's global concurrency limits while stages hold them (two `train@*`
    stages hold both GPUs and 24 of 32 GB, `evaluate` the licence and 4 GB)."""
    train = timed_stage("train-${item}", 40, {"resources": {"gpu": 1, "mem_gb": 12}})
    stages = {
        "train": {"foreach": ["small", "large"], "do": train},
        "evaluate": timed_stage("evaluate", 40, {"resources": {"mem_gb": 4}, "mutex": ["licence-server"]}),
    }
    repo = make_resource_repo(lab.root / "gpus", lab.env, stages)
    with background(
        lab, "run-b", "--jobs", "3", "--resource", "gpu=2", "--resource", "mem_gb=32", cwd=repo
    ) as run:

        def held() -> bool:
            limits = lab.api("POST", "/v2/concurrency_limits/filter", {})
            active = {limit["name"].rsplit(":", 1)[-1]: limit["active_slots"] for limit in limits}
            return active.get("gpu") == 2 and active.get("licence-server") == 1

        lab.wait("the stages to hold their slots", held, COMMAND_TIMEOUT)
        browser.shoot(
            f"{lab.ui}/concurrency-limits",
            text_on_page(":gpu", ":mem_gb", "licence-server"),
            out / "concurrency-limits-in-prefect-ui.png",
            height=520,
        )
        run.wait(timeout=RUN_TIMEOUT)


FIGURES = {
    "run-b": "run-b-dag-in-prefect-ui.png",
    "run-a": "run-a-in-prefect-ui.png",
    "automation": "automation-in-prefect-ui.png",
    "deployment": "deployment-in-prefect-ui.png",
    "custom-run": "deployment-custom-run-form.png",
    "event-feed": "on-change-event-feed.png",
    "concurrency": "concurrency-limits-in-prefect-ui.png",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)} (default: all)"
    )
    parser.add_argument("--out", type=Path, default=FIGURES_DIR, help="where to write the PNGs")
    args = parser.parse_args()
    wanted = set(args.figures or FIGURES)
    if unknown := wanted - set(FIGURES):
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}; known: {', '.join(FIGURES)}")
    chromium = find_chromium()
    if chromium is None:
        log("no Chromium found (/usr/bin/chromium or CHROMIUM=...): the UI screenshots were not retaken")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dvcflow-shots-") as tmp:
        lab = Lab(Path(tmp))
        with server(lab):
            browser = Browser(chromium, lab.root / "chromium-profile")
            try:
                if wanted & {"run-a", "run-b"}:
                    shoot_runs(lab, browser, args.out, wanted)
                if "automation" in wanted:
                    shoot_notify(lab, browser, args.out)
                if "concurrency" in wanted:  # before the deployment adds its own limit to the page
                    shoot_concurrency(lab, browser, args.out)
                if wanted & {"deployment", "custom-run", "event-feed"}:
                    shoot_deployment(lab, browser, args.out, wanted)
            finally:
                browser.close()
    log(f"{len(wanted)} figure(s) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
