"""The lean server start (`dvcflow.prefect_server`) keeps what deployments, automations and run history
need: a restart that skips migrations and block registration still schedules runs (scheduler), fires
automations (triggers, actions) and stores events (event persister)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dvcflow import prefect_server
from tests.helpers import api_post, base_env, dvcflow, free_port

PROJECT = Path(__file__).resolve().parents[1]


def _post_events(api_url: str, events: list[dict[str, object]]) -> None:
    request = urllib.request.Request(
        f"{api_url}/events", data=json.dumps(events).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def _wait_for(what: str, probe: object, timeout: float = 90.0) -> object:
    """Poll `probe()` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()  # type: ignore[operator]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: nothing within {timeout:g} s")


def _server_env(home: Path, cache: Path) -> dict[str, str]:
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(free_port()), XDG_CACHE_HOME=str(cache))
    return env


@pytest.mark.integration
def test_lean_start_still_schedules_and_runs_automations(tmp_path: Path) -> None:
    """A first server migrates a fresh database and leaves it as the template; a second one, on another
    fresh home, starts from that copy, skipping migrations and block registration."""
    cache = tmp_path / "cache"
    first_env = _server_env(tmp_path / "first", cache)
    first = dvcflow("server", "start", cwd=PROJECT, env=first_env, timeout=180)
    assert first.returncode == 0, first.stderr
    assert dvcflow("server", "stop", cwd=PROJECT, env=first_env, timeout=60).returncode == 0
    assert (tmp_path / "first" / "prefect" / prefect_server.MEMO_NAME).is_file()
    assert list((cache / "dvcflow").glob("prefect-*.db"))

    env = _server_env(tmp_path / "second", cache)
    api = f"http://127.0.0.1:{env['DVCFLOW_PORT']}/api"
    second = dvcflow("server", "start", cwd=PROJECT, env=env, timeout=180)
    assert second.returncode == 0, second.stderr
    try:
        database = tmp_path / "second" / "prefect" / "prefect.db"
        assert prefect_server.up_to_date(tmp_path / "second" / "prefect", database)
        flow = api_post(api, "/flows/", {"name": "services-check"})
        assert isinstance(flow, dict)
        deployment = api_post(
            api,
            "/deployments/",
            {
                "name": "every-hour",
                "flow_id": flow["id"],
                "schedules": [{"schedule": {"interval": 3600}, "active": True}],
            },
        )
        assert isinstance(deployment, dict)
        scheduled = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        _wait_for("the scheduler's runs", lambda: api_post(api, "/flow_runs/filter", scheduled))

        kind = f"dvcflow.test.{uuid.uuid4().hex[:8]}"
        automation = api_post(
            api,
            "/automations/",
            {
                "name": "services-check",
                "trigger": {"type": "event", "posture": "Reactive", "expect": [kind], "threshold": 1},
                "actions": [{"type": "do-nothing"}],
            },
        )
        assert isinstance(automation, dict)

        def fired() -> object:
            # A new event each time: the trigger may still be loading, and Prefect drops an event whose
            # id it has seen (its event publisher deduplicates by id), so a repeat would never count.
            event = {
                "id": str(uuid.uuid4()),
                "occurred": datetime.now(UTC).isoformat(),
                "event": kind,
                "resource": {"prefect.resource.id": "dvcflow.test"},
            }
            _post_events(api, [event])
            about = {"filter": {"resource": {"id": [f"prefect.automation.{automation['id']}"]}}}
            found = api_post(api, "/events/filter", about)
            assert isinstance(found, dict)
            return [e for e in found["events"] if e["event"] == "prefect.automation.action.executed"]

        _wait_for("the automation's action", fired)
    finally:
        dvcflow("server", "stop", cwd=PROJECT, env=env, timeout=60)


def _database(path: Path, revision: str | None) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        if revision:
            db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def test_memo_skips_only_an_unchanged_database(tmp_path: Path) -> None:
    database = _database(tmp_path / "prefect.db", "abc123")
    assert not prefect_server.up_to_date(tmp_path, database)  # never started
    prefect_server.record_start(tmp_path, database)
    assert prefect_server.up_to_date(tmp_path, database)
    with sqlite3.connect(database) as db:  # another schema revision in the file: migrate again
        db.execute("UPDATE alembic_version SET version_num = 'def456'")
    assert not prefect_server.up_to_date(tmp_path, database)
    database.unlink()
    assert not prefect_server.up_to_date(tmp_path, database)  # no database: migrate


def test_memo_key_names_prefect_and_its_collections(tmp_path: Path) -> None:
    key = json.loads(prefect_server.start_key(tmp_path / "prefect.db"))
    assert key[0] == prefect_server.metadata.version("prefect")
    assert any(name.startswith("prefect_dask=") for name in key[2])  # a dev dependency here
