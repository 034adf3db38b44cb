"""Where the Prefect API lives — the one home of that fact.

The local server's host, port, home and database resolve as flags > environment (`DVCFLOW_*`) >
`[tool.dvcflow]` in the nearest `pyproject.toml` > defaults. Every command turns the result into
environment variables *before* Prefect is imported, because Prefect reads its settings once, at import.
An explicit `PREFECT_API_URL` in the environment (a remote server, Prefect Cloud) wins and is used as is.

This module must stay cheap to import: `dvcflow --help` goes through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200

# Variables dvcflow reads; one name per setting.
ENV_HOST = "DVCFLOW_HOST"
ENV_PORT = "DVCFLOW_PORT"
ENV_HOME = "DVCFLOW_HOME"
ENV_DATABASE_URL = "DVCFLOW_DATABASE_URL"
ENV_AUTH = "DVCFLOW_AUTH"
ENV_EPHEMERAL = "DVCFLOW_EPHEMERAL"
ENV_WARM = "DVCFLOW_WARM"  # "0" turns the warm starter off (`dvcflow.cli.warm`)

# Quiet offline: Prefect's telemetry and DVC's analytics would otherwise log errors with no network.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}
# Prefect retries a dead connection 5 times with 2**n s back-off (about a minute per request); on a
# loopback server that has died, three tries say so in about 14 s.
LOCAL_CLIENT_DEFAULTS = {"PREFECT_CLIENT_MAX_RETRIES": "3"}


def _is_loopback(host: str) -> bool:
    import ipaddress  # here, not at the top: `dvcflow --help` goes through this module

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """Hide the password of a database URL (`postgresql+asyncpg://user:***@host/db`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class ServerConfig:
    """The local Prefect server dvcflow starts and every dvcflow client agrees with."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    home: Path = field(default_factory=lambda: Path.home() / ".dvcflow")
    database_url: str | None = None
    auth: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range (1-65535)")
        if not _is_loopback(self.host) and not self.auth:
            raise UsageError(f"refusing to serve on non-loopback host {self.host} without --auth USER:PASS")
        if self.auth is not None and ":" not in self.auth:
            raise UsageError("--auth must look like USER:PASS")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def database_location(self) -> str:
        """What `status` shows: the SQLite file, or the redacted database URL."""
        if self.database_url:
            return redact_url(self.database_url)
        return str(self.prefect_home / "prefect.db")

    def server_environment(self) -> dict[str, str]:
        """Variables for the server process."""
        env = {
            **QUIET_ENV,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_API_HOST": self.host,
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_API_URL": self.api_url,
        }
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        if self.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
        return env

    def client_environment(self) -> dict[str, str]:
        """Variables for a Prefect client that talks to this server."""
        env = {**QUIET_ENV, "PREFECT_HOME": str(self.prefect_home), "PREFECT_API_URL": self.api_url}
        if self.auth:
            env["PREFECT_API_AUTH_STRING"] = self.auth
        return env


def local_client_environment(config: ServerConfig) -> dict[str, str]:
    """Every `PREFECT_*` variable `dvcflow.api.connect` exports for dvcflow's local server when none is
    set. Here, not in `api`: the server layer launches the warm starter with exactly these, so that the
    Prefect it imports agrees with its clients'."""
    return {**config.client_environment(), **LOCAL_CLIENT_DEFAULTS}


# The level of Prefect's console log handler: CRITICAL where flow runs' logs go to the UI only (the sweep's
# trials, a served deployment's runs), as the terminal shows a summary of them instead.
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"

# The warm starter, run as `python -m` this (`dvcflow.cli.warm`): a name here, so that the server layer,
# which launches and stops it beside the server, names no module of the CLI above it.
WARM_STARTER_MODULE = "dvcflow.cli.warm"


def warm_enabled(environ: Mapping[str, str]) -> bool:
    """Whether the warm starter is on (`DVCFLOW_WARM`): read by the console script (serve a command?)
    and by the server layer (launch a starter?)."""
    return environ.get(ENV_WARM, "1").strip().lower() not in {"0", "false", "no", "off"}


def find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_table(start: Path) -> dict[str, Any]:
    """`[tool.dvcflow]` of the nearest `pyproject.toml` at or above `start` (empty when there is none)."""
    import tomllib

    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read [tool.dvcflow] ({err})") from None
    table = data.get("tool", {}).get("dvcflow", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.dvcflow] must be a table")
    return table


def _source(flag: object, env: Mapping[str, str], env_name: str, key: str) -> str:
    """Where a value came from, for error messages."""
    if flag is not None:
        return f"--{key}"
    return env_name if env.get(env_name) else f"[tool.dvcflow] {key}"


def _port(value: object, source: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{source}: port must be a number, got {value!r}") from None


def resolve_server_config(
    *,
    host: str | None = None,
    port: int | None = None,
    home: Path | None = None,
    database_url: str | None = None,
    auth: str | None = None,
    start: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Flags (the keyword arguments) > `DVCFLOW_*` > `[tool.dvcflow]` > defaults."""
    env = os.environ if environ is None else environ
    table = pyproject_table(start or Path.cwd())

    def pick(flag: Any, env_name: str, key: str) -> Any:
        if flag is not None:
            return flag
        if env.get(env_name):
            return env[env_name]
        return table.get(key)

    raw_port = pick(port, ENV_PORT, "port")
    raw_home = pick(home, ENV_HOME, "home")
    return ServerConfig(
        host=str(pick(host, ENV_HOST, "host") or DEFAULT_HOST),
        port=DEFAULT_PORT if raw_port is None else _port(raw_port, _source(port, env, ENV_PORT, "port")),
        home=Path(raw_home).expanduser() if raw_home else Path.home() / ".dvcflow",
        database_url=pick(database_url, ENV_DATABASE_URL, "database_url") or None,
        auth=pick(auth, ENV_AUTH, "auth") or None,
    )


class ApiMode(StrEnum):
    """Which Prefect API a run talks to."""

    EXTERNAL = "external"  # PREFECT_API_URL was set by the user: used as is
    LOCAL = "local"  # dvcflow's own background server, started on first use
    EPHEMERAL = "ephemeral"  # Prefect's temporary per-process server (opt-out)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def choose_api_mode(*, ephemeral: bool | None, environ: Mapping[str, str] | None = None) -> ApiMode:
    """`ephemeral`: True (the flag), False (never: e.g. reading history), None (DVCFLOW_EPHEMERAL decides)."""
    env = os.environ if environ is None else environ
    if env.get("PREFECT_API_URL"):
        if ephemeral:
            raise UsageError("--ephemeral contradicts PREFECT_API_URL set in the environment")
        return ApiMode.EXTERNAL
    if ephemeral or (ephemeral is None and _truthy(env.get(ENV_EPHEMERAL))):
        return ApiMode.EPHEMERAL
    return ApiMode.LOCAL


def ephemeral_environment(config: ServerConfig) -> dict[str, str]:
    return {
        **QUIET_ENV,
        "PREFECT_HOME": str(config.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        # Prefect's 20 s default is too tight for a fresh database on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }


def apply_environment(values: Mapping[str, str]) -> None:
    """Export settings for Prefect; must run before `import prefect`."""
    os.environ.update(values)
