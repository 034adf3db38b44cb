"""Fixtures: one real Prefect server for the session (started through `dvcflow server start`),
and fresh git+DVC repositories per test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import PROJECT, base_env, dvcflow, free_port, make_pipeline_repo


@dataclass(frozen=True)
class LiveServer:
    home: Path
    port: int
    env: dict[str, str]  # what a dvcflow client needs to use this server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@pytest.fixture(autouse=True)
def _no_debug_from_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's DVCFLOW_DEBUG=1 (read by the CLI boundary) must not change what in-process tests see."""
    monkeypatch.delenv("DVCFLOW_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _no_interrupt_carried_over() -> Iterator[None]:
    """A test that interrupts commands in-process must not leave later tests of this worker interrupted."""
    yield
    children = sys.modules.get("dvcflow.proc.children")
    if children is not None:
        children.clear_interrupted()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real Prefect server on a free port, managed by dvcflow itself."""
    home = tmp_path_factory.mktemp("dvcflow-home")
    port = free_port()
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(port))
    started = dvcflow("server", "start", cwd=PROJECT, env=env, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield LiveServer(home=home, port=port, env=env)
    finally:
        dvcflow("server", "stop", cwd=PROJECT, env=env, timeout=60)


@pytest.fixture
def client_env(live_server: LiveServer) -> dict[str, str]:
    """Environment for a dvcflow run against the session's server."""
    return dict(live_server.env)


@pytest.fixture
def pipeline_repo(tmp_path: Path, client_env: dict[str, str]) -> Path:
    """A committed git+DVC copy of the demo pipeline with its raw data in place."""
    return make_pipeline_repo(tmp_path / "repo", client_env)


@pytest.fixture
def dask_scheduler(tmp_path: Path, client_env: dict[str, str]) -> Iterator[str]:
    """A `distributed.LocalCluster` (two threaded workers) in its own process, on a free port."""
    port = free_port()
    script = (
        "import time\n"
        "from distributed import LocalCluster\n"
        f"cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, scheduler_port={port},"
        " dashboard_address=None)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
