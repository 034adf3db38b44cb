"""The lean server start (`dvcflow.server.process`) keeps what deployments, automations and run history
need: a restart that skips migrations and block registration still schedules runs (scheduler), fires
automations (triggers, actions) and stores events (event persister)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from dvcflow.server import process
from tests.conftest import Processes
from tests.helpers import api_post, base_env, free_port

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


def test_lean_start_still_schedules_and_runs_automations(tmp_path: Path, processes: Processes) -> None:
    """A first server with no template migrates a fresh database and leaves it as the template; set-up's
    `--prepare-template` makes the same one in another cache; a second server, on another fresh home,
    starts from that copy, skipping migrations and block registration."""
    first_env = _server_env(tmp_path / "first", tmp_path / "cache-first")
    first = processes.dvcflow("server", "start", cwd=PROJECT, env=first_env, timeout=180)
    assert first.returncode == 0, first.stderr
    assert processes.dvcflow("server", "stop", cwd=PROJECT, env=first_env, timeout=60).returncode == 0
    assert (tmp_path / "first" / "prefect" / process.MEMO_NAME).is_file()
    [left] = (tmp_path / "cache-first" / "dvcflow").glob("prefect-*.db")

    cache = tmp_path / "cache"
    env = _server_env(tmp_path / "second", cache)
    prepare = [sys.executable, "-m", "dvcflow.server.process", "--prepare-template"]
    for outcome in ("prepared", "up to date"):
        done = processes.run(prepare, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip().endswith(outcome), done.stdout + done.stderr
    [prepared] = (cache / "dvcflow").glob("prefect-*.db")
    assert prepared.name == left.name and _schema(prepared) == _schema(left)
    assert _block_types(prepared) == _block_types(left) != []

    api = f"http://127.0.0.1:{env['DVCFLOW_PORT']}/api"
    second = processes.dvcflow("server", "start", cwd=PROJECT, env=env, timeout=180)
    assert second.returncode == 0, second.stderr
    try:
        database = tmp_path / "second" / "prefect" / "prefect.db"
        assert process.up_to_date(tmp_path / "second" / "prefect", database)
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
        processes.dvcflow("server", "stop", cwd=PROJECT, env=env, timeout=60)


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in body:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _schema(database: Path) -> list[object]:
    """Every table, index and trigger as SQLite stores it, with the Alembic revision. Within a table the
    constraint clauses are sorted: Prefect's own migrations write them in an order that varies from run to
    run (their batch operations iterate sets), so only their set is a fact of the schema."""
    clauses = ("CONSTRAINT", "PRIMARY KEY", "UNIQUE", "FOREIGN KEY", "CHECK")
    schema: list[object] = []
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        schema.append(sorted(row[0] for row in db.execute("SELECT version_num FROM alembic_version")))
    for kind, name, table, sql in rows:
        if kind == "table" and sql:
            head, _, rest = sql.partition("(")
            parts = _split_top_level(rest[: rest.rindex(")")])
            columns = [part for part in parts if not part.upper().startswith(clauses)]
            constraints = sorted(part for part in parts if part.upper().startswith(clauses))
            schema.append((kind, name, table, head.strip(), columns, constraints))
        else:
            schema.append((kind, name, table, sql))
    return schema


def test_fast_migration_leaves_prefects_own_schema(tmp_path: Path, processes: Processes) -> None:
    """`migrate_new_database` (a synchronous connection under Prefect's migration scripts) and Prefect's own
    `prefect server database upgrade` leave the same tables, columns, constraints, indexes and revision."""
    env = base_env(tmp_path / "home")
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # not the user's ~/.prefect
    theirs, ours = tmp_path / "theirs.db", tmp_path / "ours.db"
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"{process.SQLITE_PREFIX}{theirs}"
    upgrade = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
    done = processes.run(upgrade, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"{process.SQLITE_PREFIX}{ours}"
    code = f"import pathlib, dvcflow.server.process as s; s.migrate_new_database(pathlib.Path({str(ours)!r}))"
    done = processes.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ours")] == []  # renamed into place
    assert process.schema_revision(ours) is not None
    assert _schema(ours) == _schema(theirs)


def _block_types(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        query = "SELECT t.slug, s.checksum FROM block_type t JOIN block_schema s ON s.block_type_id = t.id"
        return sorted(db.execute(query).fetchall())


def _database(path: Path, revision: str | None) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        if revision:
            db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def test_memo_skips_only_an_unchanged_database(tmp_path: Path) -> None:
    database = _database(tmp_path / "prefect.db", "abc123")
    assert not process.up_to_date(tmp_path, database)  # never started
    process.record_start(tmp_path, database)
    assert process.up_to_date(tmp_path, database)
    with sqlite3.connect(database) as db:  # another schema revision in the file: migrate again
        db.execute("UPDATE alembic_version SET version_num = 'def456'")
    assert not process.up_to_date(tmp_path, database)
    database.unlink()
    assert not process.up_to_date(tmp_path, database)  # no database: migrate


def test_memo_key_names_prefect_and_its_collections(tmp_path: Path) -> None:
    key = json.loads(process.start_key(tmp_path / "prefect.db"))
    assert key[0] == process.metadata.version("prefect")
    assert any(name.startswith("prefect_dask=") for name in key[2])  # a dev dependency here
