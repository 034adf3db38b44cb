"""Fixtures: one real Prefect server for the session (started through `dvcflow server start`),
and fresh git+DVC repositories per test.

The two layers of the suite follow from the fixtures, not from markers someone can forget:
- a fixture that starts a process, a server or a repository is declared with `@integration_fixture`, and
  every test that uses it, directly or through another fixture, is marked `integration`;
- every other test is a unit test (`make test-fast`), and one that starts a process or opens a network
  socket all the same fails, saying what it started (`_UnitLayerGuard`).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from tests.helpers import (
    PROJECT,
    base_env,
    dask_cluster_process,
    dvcflow,
    free_port,
    git,
    make_pipeline_repo,
    make_shaped_repo,
    make_tiny_repo,
)

FixtureFunction = TypeVar("FixtureFunction", bound=Callable[..., Any])
_INTEGRATION = "_starts_a_process_a_server_or_a_repository"


def integration_fixture(function: FixtureFunction | None = None, **options: Any) -> Any:
    """`@pytest.fixture` (same options) for a fixture that starts a process, a server or a repository:
    every test that uses it, directly or through other fixtures, is an integration test."""

    def declare(fixture_function: FixtureFunction) -> Any:
        setattr(fixture_function, _INTEGRATION, True)
        return pytest.fixture(**options)(fixture_function)

    return declare if function is None else declare(function)


def _uses_an_integration_fixture(item: pytest.Item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)  # every `pytest.Function` has one
    if fixtures is None:
        return False
    return any(
        getattr(definition.func, _INTEGRATION, False)
        for definitions in fixtures.name2fixturedefs.values()
        for definition in definitions
    )


@pytest.hookimpl(tryfirst=True)  # before `-m "not integration"` deselects by the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    by_hand = []
    for item in items:
        uses_one = _uses_an_integration_fixture(item)
        if item.get_closest_marker("integration") is not None and not uses_one:
            by_hand.append(item.nodeid)
        if uses_one:
            item.add_marker(pytest.mark.integration)
    if by_hand:
        raise pytest.UsageError(
            "marked integration by hand, not by an @integration_fixture it uses (tests/conftest.py): "
            + ", ".join(by_hand)
        )


class UnitLayerViolation(RuntimeError):
    """A unit test started a process or used a network socket."""


class _UnitLayerGuard:
    """While a unit test sets up and runs, an audit hook refuses, and remembers, the start of a process
    and a network socket's connect or bind. Unix sockets (socket pairs, a starter's socket in tmp_path)
    are in-process plumbing and allowed; threads that were already running when the test began (a Prefect
    client's workers left by an earlier integration test of this worker) are not the test's doing."""

    PROCESS_EVENTS = frozenset(
        {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system"}
    )
    SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind"})

    def __init__(self) -> None:
        self.watching = False
        self.earlier_threads: set[int] = set()
        self.violations: list[str] = []

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.watching or threading.get_ident() in self.earlier_threads:
            return
        if event in self.PROCESS_EVENTS:
            what = f"started a process ({event} {_shown(args)})"
        elif event in self.SOCKET_EVENTS and isinstance(args[1], tuple):  # AF_INET(6): (host, port, ...)
            what = f"used a network socket ({event} {args[1]!r})"
        else:
            return
        self.violations.append(what)
        raise UnitLayerViolation(
            f"a unit test {what}: do it in a fixture declared with @integration_fixture (tests/conftest.py)"
        )

    def check(self, item: pytest.Item) -> Iterator[None]:
        if item.get_closest_marker("integration") is not None:
            yield
            return
        self.watching, self.violations = True, []
        self.earlier_threads = {thread.ident for thread in threading.enumerate() if thread.ident} - {
            threading.get_ident()
        }
        try:
            yield
        finally:
            self.watching = False
        if self.violations:  # also when the test caught the exception
            pytest.fail("a unit test must not " + "; ".join(self.violations), pytrace=False)


def _shown(args: tuple[Any, ...]) -> str:
    return " ".join(repr(arg) for arg in args[:2])[:200]


_guard = _UnitLayerGuard()
sys.addaudithook(_guard.audit)  # once per process: conftest modules are imported once


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard.check(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard.check(item))


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


@integration_fixture(scope="session")
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


@integration_fixture
def pipeline_repo(tmp_path: Path, client_env: dict[str, str]) -> Path:
    """A committed git+DVC copy of the demo pipeline with its raw data in place."""
    return make_pipeline_repo(tmp_path / "repo", client_env)


@integration_fixture
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
    with dask_cluster_process(script, port, tmp_path, client_env) as address:
        yield address


class Processes:
    """Processes of a test: run to their end (`run`, as `subprocess.run`; `python`, `dvcflow`) or started
    (`start`, as `subprocess.Popen`). At the test's end, any process it started, itself or through the code
    it tests, that is still running is killed."""

    def __init__(self) -> None:
        self.before = {child.pid for child in psutil.Process().children(recursive=True)}

    def run(self, args: list[str], **options: Any) -> subprocess.CompletedProcess[Any]:
        options.setdefault("timeout", 240)
        return subprocess.run(args, **options)

    def python(self, *args: str, **options: Any) -> subprocess.CompletedProcess[Any]:
        """`python ARGS` with this interpreter, its output captured as text unless told otherwise."""
        options.setdefault("capture_output", True)
        options.setdefault("text", True)
        return self.run([sys.executable, *args], **options)

    def dvcflow(
        self, *args: str, cwd: Path, env: dict[str, str], timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """`python -m dvcflow ARGS` (tests/helpers.py)."""
        return dvcflow(*args, cwd=cwd, env=env, timeout=timeout)

    def start(self, args: list[str], **options: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(args, **options)

    def close(self) -> None:
        left = [child for child in psutil.Process().children(recursive=True) if child.pid not in self.before]
        for child in left:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(left, timeout=30)


@integration_fixture
def processes() -> Iterator[Processes]:
    """For a test that runs or starts processes, itself or through the code it tests."""
    started = Processes()
    try:
        yield started
    finally:
        started.close()


@dataclass(frozen=True)
class Repos:
    """The tests' repository builders (tests/helpers.py) and git, with one environment (the `repos` fixture's:
    no Prefect server answers there)."""

    env: dict[str, str]

    def tiny(self, root: Path, stages: str | None = None) -> Path:
        return make_tiny_repo(root, self.env, stages)

    def shaped(self, root: Path) -> Path:
        return make_shaped_repo(root, self.env)

    def pipeline(self, root: Path) -> Path:
        return make_pipeline_repo(root, self.env)

    def git(self, repo: Path, *args: str) -> str:
        return git(repo, *args, env=self.env)


def offline_env(home: Path) -> dict[str, str]:
    """`base_env` for dvcflow with its home in `home` and no server (nothing listens on port 9)."""
    return {**base_env(home), "DVCFLOW_HOME": str(home), "DVCFLOW_PORT": "9"}


@integration_fixture
def repos(tmp_path: Path) -> Repos:
    """For a test that builds git+DVC repositories (git and DVC run as processes) without a server."""
    return Repos(offline_env(tmp_path / "home"))


@integration_fixture
def closed_port() -> int:
    """A local TCP port nothing listens on: connecting to it is a real refused connection."""
    return free_port()
