"""`dvcflow server start|stop|status|env`: the local Prefect server every dvcflow command agrees with."""

from pathlib import Path
from typing import Annotated

import typer

from dvcflow.cli.common import JsonOption
from dvcflow.core.settings import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, resolve_server_config

app = typer.Typer(help="Start, stop and inspect dvcflow's local Prefect server.", no_args_is_help=True)

HostOption = Annotated[
    str | None,
    typer.Option(
        "--host", help=f"Interface to bind (default {DEFAULT_HOST}; or DVCFLOW_HOST).", show_default=False
    ),
]
PortOption = Annotated[
    int | None,
    typer.Option(
        "--port", help=f"Port to serve on (default {DEFAULT_PORT}; or DVCFLOW_PORT).", show_default=False
    ),
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Where pid, log and database live (default ~/.dvcflow; or DVCFLOW_HOME).",
        show_default=False,
    ),
]


def _config(
    host: str | None,
    port: int | None,
    home: Path | None,
    database_url: str | None = None,
    auth: str | None = None,
) -> ServerConfig:
    return resolve_server_config(host=host, port=port, home=home, database_url=database_url, auth=auth)


@app.command()
def start(
    host: HostOption = None,
    port: PortOption = None,
    home: HomeOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="e.g. postgresql+asyncpg://user:pass@host/db (default SQLite).",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            help="USER:PASS required by the API; mandatory on a non-loopback host.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the server to become healthy.")
    ] = 90.0,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay attached; Ctrl-C stops it.")] = False,
) -> None:
    """Start the local Prefect server in the background and wait until it is healthy."""
    from dvcflow.cli import render
    from dvcflow.cli.render.server import server_status
    from dvcflow.server import control

    config = _config(host, port, home, database_url=database_url, auth=auth)
    if foreground:
        render.info(f"Serving Prefect at {config.url} (Ctrl-C stops it)")
        control.run_foreground(config)
        return
    result = control.start(config, timeout=timeout)
    if result.already_running:
        render.out.print(f"Already running at {config.url} (pid {result.status.pid}).")
    else:
        render.out.print(f"Started Prefect server at {config.url} in {result.seconds:.1f} s.")
    server_status(result.status)


@app.command()
def stop(host: HostOption = None, port: PortOption = None, home: HomeOption = None) -> None:
    """Stop the server dvcflow started (by its recorded pid) and wait until it is gone."""
    from dvcflow.cli import render
    from dvcflow.services.local_server import stop_server

    pid = stop_server(_config(host, port, home), announce=render.info)
    render.out.print("No dvcflow server was running." if pid is None else f"Stopped server (pid {pid}).")


@app.command()
def status(
    host: HostOption = None, port: PortOption = None, home: HomeOption = None, json: JsonOption = False
) -> None:
    """Whether the server runs, where, which Prefect version, and its database."""
    from dvcflow.cli import render
    from dvcflow.cli.render.server import server_status
    from dvcflow.server import control

    current = control.status(_config(host, port, home))
    if json:
        render.as_json(current.as_dict())
    else:
        server_status(current)


@app.command()
def env(host: HostOption = None, port: PortOption = None, home: HomeOption = None) -> None:
    """Print `export` lines so `prefect` commands talk to the same server: eval "$(dvcflow server env)"."""
    from dvcflow.cli.render.server import exports

    exports(_config(host, port, home).client_environment())
