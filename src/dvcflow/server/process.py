"""The Prefect server process that `dvcflow server start` launches: `python -m dvcflow.server.process`.

It serves exactly what `prefect server start` serves (the API, the UI, and every enabled service: the
scheduler, triggers and actions, the event persister, the task-run recorder ...) in this pid, started
without work a restart does not need:

- no garbage-collector passes while the server's modules are imported (~0.6 s on 2 cores);
- not through Prefect's CLI, whose command modules the server never uses (~0.3 s);
- on SQLite, database migrations and block-type registration only when something changed since the
  last start of this database: another Prefect version or set of Prefect collections (plugins), or
  another schema revision in the file (read with `sqlite3`). Prefect's own block memo imports every
  installed collection just to check (~0.4 s with prefect-dask); its migration check imports Alembic.

An API request that a busy SQLite answered 503 is replayed within the server after milliseconds,
not by the client after 2 s (`dvcflow.server.busy_retry`).

The memo (`<PREFECT_HOME>/dvcflow-server-memo.json`) is written once the server's start-up (its
migrations and block registration) has completed. Settings come from the environment, as for Prefect.

A fresh SQLite database starts as a copy of a template: the first database this user's Prefect version
and collections migrated, copied once its start-up had completed, under `$XDG_CACHE_HOME/dvcflow/`
(`~/.cache/dvcflow/`). `make setup` prepares it (`--prepare-template`), so a user's first start is a copy
too. Delete that folder to migrate from scratch again.

With no template, Prefect's own Alembic migrations run (`migrate_new_database`) on a private file then
renamed into place, through a synchronous SQLite connection: Prefect's migration environment otherwise
sends each of its ~34,000 driver calls through aiosqlite's thread and back through the event loop, two
thread wake-ups per call (3 to 10 s of wall time here for ~2.5 s of CPU). The same migration scripts, pragmas
and transactions; `tests/test_server_services.py` proves the schema identical to Prefect's own path.
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

from dvcflow.core.errors import ServerError

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


class _SyncConnection:
    """What Prefect's migration environment calls on an async connection: `run_sync(fn)`."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def run_sync(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self._connection, *args, **kwargs)


class _SyncEngine:
    """An engine whose `connect()` yields a plain pysqlite connection wearing the async interface."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_SyncConnection]:
        with self._engine.connect() as connection:
            yield _SyncConnection(connection)


def migrate_new_database(database: Path) -> None:
    """Run Prefect's Alembic migrations ("upgrade head") into a new SQLite file, renamed into place once
    complete. Prefect's own environment script runs them; only its engine is swapped for a synchronous one
    with the same connect pragmas (`setup_sqlite`) and `BEGIN` statements (`begin_sqlite_stmt`)."""
    import asyncio

    import sqlalchemy
    from prefect.server.database import provide_database_interface
    from prefect.server.database.alembic_commands import alembic_upgrade
    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.utilities.asyncutils import run_sync_in_worker_thread

    interface = provide_database_interface()
    config = interface.database_config
    if not isinstance(config, AioSqliteConfiguration):
        raise ServerError(f"only a SQLite database is migrated by dvcflow, not {type(config).__name__}")
    partial = database.with_name(f".{database.name}.{os.getpid()}.migrating")
    engine = sqlalchemy.create_engine(f"sqlite:///{partial}", poolclass=sqlalchemy.pool.NullPool)

    def on_connect(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # as Prefect's `begin_sqlite_conn`: it emits BEGIN itself
        config.setup_sqlite(connection, record)

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", config.begin_sqlite_stmt)
    swapped = _SyncEngine(engine)

    async def sync_engine() -> _SyncEngine:
        return swapped

    async def upgrade() -> None:
        own = vars(interface)  # the engine is swapped on this instance only, and put back afterwards
        had, previous = "engine" in own, own.get("engine")
        own["engine"] = sync_engine
        try:
            await run_sync_in_worker_thread(alembic_upgrade)
        finally:
            if had:
                own["engine"] = previous
            else:
                del own["engine"]

    collecting = gc.isenabled()
    gc.disable()  # Alembic's reflection builds many short-lived objects: no collector passes meanwhile
    try:
        asyncio.run(upgrade())
        engine.dispose()  # the last connection closes: SQLite checkpoints and removes the WAL file
        partial.replace(database)
    finally:
        engine.dispose()
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
        if collecting:
            gc.enable()


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

    from dvcflow.server.busy_retry import RetryBusyDatabase

    gc.freeze()
    gc.enable()
    settings = get_current_settings()
    url = settings.server.database.connection_url
    database = _sqlite_file(url.get_secret_value() if url else None)
    home = Path(settings.home)
    fresh = database is not None and not database.exists() and not seed_from_template(home, database)
    if fresh and database is not None:
        migrate_new_database(database)
    skip = database is not None and up_to_date(home, database)
    updates: dict[str, Any] = {"server.database.migrate_on_start": False} if fresh else {}
    if skip:
        updates = {
            "server.database.migrate_on_start": False,
            "server.register_blocks_on_start": False,
            "server.memoize_block_auto_registration": False,
        }
    with temporary_settings(updates=updates):
        app = create_app(final=True)
        _reuse_app(app, get_current_settings())
        if database is not None and not skip:
            _record_after_start(app, home, database, template=fresh)
        server = get_current_settings().server
        uvicorn.run(
            app=app if database is None else RetryBusyDatabase(app),  # SQLite's lock only: see the module
            app_dir=str(prefect.__module_path__.parent),
            host=host,
            port=port,
            timeout_keep_alive=server.api.keepalive_timeout,
            ws_ping_interval=server.api.websocket_ping_interval,
            ws_ping_timeout=server.api.websocket_ping_timeout,
            log_level=server.logging_level.lower(),
        )


def prepare_template() -> str:
    """Make the template database if this Prefect version and set of collections has none yet: what a
    first server start would leave (migrated, block types registered), built in a private Prefect home.
    Set-up work (`make setup` runs it): quick when the template exists, since Prefect is not imported."""
    template = template_path()
    if schema_revision(template) is not None:
        return f"{template}: up to date"
    import asyncio
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dvcflow-template-") as folder:
        database = Path(folder) / "prefect.db"
        for name in [name for name in os.environ if name.startswith("PREFECT_")]:
            del os.environ[name]  # this process's Prefect: a private home and database, nothing else
        os.environ.update(
            PREFECT_HOME=folder,
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"{SQLITE_PREFIX}{database}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        gc.disable()
        import prefect.plugins
        from prefect.server.api.server import create_app  # noqa: F401 - the server's block classes
        from prefect.server.database import provide_database_interface
        from prefect.server.models.block_registration import run_block_auto_registration

        migrate_new_database(database)

        async def register_blocks() -> None:  # what the server's start-up does after migrating
            prefect.plugins.load_prefect_collections()
            interface = provide_database_interface()
            async with await interface.session() as session:
                await run_block_auto_registration(session=session)
            await (await interface.engine()).dispose()

        asyncio.run(register_blocks())
        _copy_database(database, template)
    return f"{template}: prepared"


def _reuse_app(app: Any, made_with: Any) -> None:
    """Prefect's in-process clients (the services' orchestration and events clients) call `create_app()`
    for the app to talk to, which sets logging up again and hashes every setting (~0.15 s each, twice
    before the server listens, then once per client) to return this same app from its cache. Return it
    directly while the settings are the very ones it was made with; any other call goes to Prefect."""
    import prefect.server.api.server as module
    from prefect.settings import get_current_settings

    original = module.create_app

    def create_app(
        settings: Any = None,
        ephemeral: bool = False,
        webserver_only: bool = False,
        final: bool = False,
        ignore_cache: bool = False,
    ) -> Any:
        default = settings is None and not (ephemeral or webserver_only or ignore_cache)
        if default and get_current_settings() is made_with:
            return app
        return original(settings, ephemeral, webserver_only, final, ignore_cache)

    module.create_app = create_app


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
    parser = argparse.ArgumentParser(prog="python -m dvcflow.server.process", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--prepare-template", action="store_true", help="make the template database (set-up), then exit"
    )
    options = parser.parse_args(argv)
    if options.prepare_template:
        try:
            print(prepare_template())
        except Exception as exc:  # set-up goes on without it: the first server start migrates instead
            print(f"could not prepare the template database: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        return 0
    if options.host is None or options.port is None:
        parser.error("--host and --port are required to serve")
    serve(options.host, options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
