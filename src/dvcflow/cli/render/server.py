"""The local server's status as a two-column table."""

from __future__ import annotations

import shlex

from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import out
from dvcflow.server.control import ServerStatus


def server_status(status: ServerStatus) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    state = Text("running", style="green") if status.running else Text("stopped", style="yellow")
    table.add_row("Server", state)
    table.add_row("URL", status.url)
    table.add_row("API", status.api_url)
    table.add_row("PID", str(status.pid) if status.pid else "-")
    table.add_row("Prefect", status.prefect_version or "-")
    table.add_row("Database", status.database)
    table.add_row("Log", str(status.log_file))
    if status.warm_starter is not None:
        pid, ready = status.warm_starter
        table.add_row("Warm starter", f"{'ready' if ready else 'starting'} (pid {pid})")
    out.print(table)


def exports(variables: dict[str, str]) -> None:
    """`export` lines for `eval "$(dvcflow server env)"`: plain text, quoted for the shell."""
    for key, value in variables.items():
        print(f"export {key}={shlex.quote(value)}")
