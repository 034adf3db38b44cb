"""The Prefect server process that `dvcflow server start` launches: `python -m dvcflow.prefect_server`.

It serves exactly what `prefect server start` serves (the API, the UI, and every enabled service: the
scheduler, triggers and actions, the event persister, the task-run recorder ...) in this pid, started
without work a restart does not need:

- no garbage-collector passes while the server's modules are imported (~0.6 s on 2 cores);
- not through Prefect's CLI, whose command modules the server never uses (~0.3 s);
- on SQLite, database migrations and block-type registration only when something changed since the
  last start of this database: another Prefect version or set of Prefect collections (plugins), or
  another schema revision in the file (read with `sqlite3`). Prefect's own block memo imports every
  installed collection just to check (~0.4 s with prefect-dask); its migration check imports Alembic.

The memo (`<PREFECT_HOME>/dvcflow-server-memo.json`) is written once the server's start-up (its
migrations and block registration) has completed. Settings come from the environment, as for Prefect.

A fresh SQLite database starts as a copy of a template: the first database this user's Prefect version
and collections migrated (~5 s of Alembic on 2 cores), copied once its start-up had completed, under
`$XDG_CACHE_HOME/dvcflow/` (`~/.cache/dvcflow/`). Delete that folder to migrate from scratch again.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path
from typing import Any

MEMO_NAME = "dvcflow-server-memo.json"
SQLITE_PREFIX = "sqlite+aiosqlite:///"


def _collections() -> list[str]:
    return sorted(
        f"{entry.name}={entry.dist.version if entry.dist else '?'}"
        for entry in metadata.entry_points(group="prefect.collections")
    )


def start_key(database: Path) -> str:
    """What must not change for a start to skip migrations and block registration."""
    return json.dumps([metadata.version("prefect"), str(database.resolve()), _collections()])


def template_path() -> Path:
    """The cached copy of a freshly started database, one per Prefect version and set of collections."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dvcflow"
    digest = hashlib.sha256(json.dumps(_collections()).encode()).hexdigest()[:12]
    return cache / f"prefect-{metadata.version('prefect')}-{digest}.db"


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy (SQLite's backup API, safe while the source is in use), renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with (
            contextlib.closing(sqlite3.connect(source)) as src,
            contextlib.closing(sqlite3.connect(partial)) as dst,
        ):
            src.backup(dst)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def seed_from_template(home: Path, database: Path) -> bool:
    """Start a missing database as a copy of the template, memo included; False when there is none."""
    template = template_path()
    if database.exists() or schema_revision(template) is None:
        return False
    try:
        _copy_database(template, database)
        record_start(home, database)
    except (OSError, sqlite3.Error):
        database.unlink(missing_ok=True)
        return False
    return True


def schema_revision(database: Path) -> list[str] | None:
    """The Alembic revision(s) recorded in a SQLite database file; None when there is none."""
    if not database.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return sorted(row[0] for row in db.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error:
        return None


def _memo(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / MEMO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def up_to_date(home: Path, database: Path) -> bool:
    """True when the last completed start of this database had the same key and left this revision."""
    memo = _memo(home)
    revision = schema_revision(database)
    return (
        revision is not None and memo.get("key") == start_key(database) and memo.get("revision") == revision
    )


def record_start(home: Path, database: Path) -> None:
    """After a completed start: migrations and block registration are done for this key and revision."""
    memo = {"key": start_key(database), "revision": schema_revision(database)}
    tmp = home / f".{MEMO_NAME}.tmp"
    tmp.write_text(json.dumps(memo) + "\n", encoding="utf-8")
    tmp.replace(home / MEMO_NAME)


def _sqlite_file(url: str | None) -> Path | None:
    if url and url.startswith(SQLITE_PREFIX) and ":memory:" not in url:
        return Path(url.removeprefix(SQLITE_PREFIX).split("?", 1)[0])
    return None


def serve(host: str, port: int) -> None:
    gc.disable()
    import prefect
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings, temporary_settings

    gc.freeze()
    gc.enable()
    settings = get_current_settings()
    url = settings.server.database.connection_url
    database = _sqlite_file(url.get_secret_value() if url else None)
    home = Path(settings.home)
    fresh = database is not None and not database.exists() and not seed_from_template(home, database)
    skip = database is not None and up_to_date(home, database)
    updates: dict[str, Any] = {}
    if skip:
        updates = {
            "server.database.migrate_on_start": False,
            "server.register_blocks_on_start": False,
            "server.memoize_block_auto_registration": False,
        }
    with temporary_settings(updates=updates):
        app = create_app(final=True)
        if database is not None and not skip:
            _record_after_start(app, home, database, template=fresh)
        server = get_current_settings().server
        uvicorn.run(
            app=app,
            app_dir=str(prefect.__module_path__.parent),
            host=host,
            port=port,
            timeout_keep_alive=server.api.keepalive_timeout,
            ws_ping_interval=server.api.websocket_ping_interval,
            ws_ping_timeout=server.api.websocket_ping_timeout,
            log_level=server.logging_level.lower(),
        )


def _record_after_start(app: Any, home: Path, database: Path, *, template: bool) -> None:
    """Write the memo once the app's own start-up (migrations, then block registration) succeeded;
    `template`: a fresh database, also kept as the template for the next fresh one."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            with contextlib.suppress(OSError, sqlite3.Error):
                record_start(home, database)
                if template:
                    _copy_database(database, template_path())
            yield state

    app.router.lifespan_context = lifespan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvcflow.prefect_server", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    serve(options.host, options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
