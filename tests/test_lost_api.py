"""When a remote Prefect API counts as lost mid-run (`dvcflow.api.lost`): a refused connection is, a busy
server that answers slowly is not (the real server killed mid-run: tests/test_faults.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dvcflow.api import lost
from tests.conftest import integration_fixture


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lost, "CHECK_EVERY_S", 0.05)
    monkeypatch.setattr(lost, "HEALTH_TIMEOUT_S", 0.1, raising=False)


@integration_fixture
def silent_server() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never answers: a server busy for good."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def _lost_within(api_url: str, seconds: float) -> list[str]:
    reasons: list[str] = []
    found = threading.Event()

    def on_lost(reason: str) -> None:
        reasons.append(reason)
        found.set()

    with lost.lost_api_ends_the_run(api_url, None, on_lost):
        found.wait(seconds)
    return reasons


def test_a_server_that_only_times_out_is_busy_not_lost(quick_checks: None, silent_server: int) -> None:
    # Ten checks time out (three used to end the run with exit 4): still not lost.
    assert _lost_within(f"http://127.0.0.1:{silent_server}/api", 1.5) == []


def test_a_server_silent_for_silent_s_is_lost(
    quick_checks: None, silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lost, "SILENT_S", 0.5)
    reasons = _lost_within(f"http://127.0.0.1:{silent_server}/api", 10)
    assert len(reasons) == 1 and reasons[0].startswith("no answer for"), reasons


def test_refused_connections_are_lost_after_three_checks(quick_checks: None, closed_port: int) -> None:
    started = time.monotonic()
    reasons = _lost_within(f"http://127.0.0.1:{closed_port}/api", 10)
    assert len(reasons) == 1 and "refused" in reasons[0].lower(), reasons
    assert time.monotonic() - started < 5
