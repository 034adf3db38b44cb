"""Decide which Prefect API a command uses and prepare the environment for it, before Prefect is imported.

`connect` is the one way in, for every command that talks to Prefect (runs, deployments, notifications,
the histories): Prefect reads its settings once, at import, so whatever chooses the API must run first and
export them; doing it in one place keeps the choice (`PREFECT_API_URL`, `--ephemeral`, or dvcflow's local
server as the repository's settings describe it, started on first use) the same everywhere.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.api import prefect_settings
from dvcflow.core.errors import ApiUnreachableError
from dvcflow.core.settings import (
    LOCAL_CLIENT_DEFAULTS,
    QUIET_ENV,
    ApiMode,
    ServerConfig,
    apply_environment,
    choose_api_mode,
    ephemeral_environment,
    resolve_server_config,
)
from dvcflow.server import control

REACH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ApiConnection:
    mode: ApiMode
    api_url: str | None
    description: str

    @property
    def links_survive(self) -> bool:
        """A temporary server's run links are dead as soon as the process exits."""
        return self.mode is not ApiMode.EPHEMERAL


def _check_reachable(api_url: str) -> None:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=REACH_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered (401, 404 ...): reachable, let Prefect report the rest
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ApiUnreachableError(
            f"the Prefect API at {api_url} is unreachable ({reason})",
            hint="start it, fix PREFECT_API_URL, or unset it to use dvcflow's local server",
        ) from None


def connect(
    root: Path,
    *,
    ephemeral: bool | None = None,
    announce: Callable[[str], None] = lambda _line: None,
) -> ApiConnection:
    """Choose the Prefect API for the repository at `root` (its server settings), export the client
    settings for it and start dvcflow's local server on first use. `announce` hears that the server was
    started, then which API is used. `ephemeral`: True (the flag), False (never: what must outlive this
    process, a deployment, a history), None (`DVCFLOW_EPHEMERAL` decides)."""
    connection = _connect(resolve_server_config(start=root), ephemeral=ephemeral, on_server_start=announce)
    prefect_settings.sync_prefect_settings()  # in a warm starter's child, Prefect is imported already
    announce(connection.description)
    return connection


def _connect(
    config: ServerConfig,
    *,
    ephemeral: bool | None,
    on_server_start: Callable[[str], None] | None,
) -> ApiConnection:
    mode = choose_api_mode(ephemeral=ephemeral)
    if mode is ApiMode.EXTERNAL:
        api_url = os.environ["PREFECT_API_URL"]
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        _check_reachable(api_url)
        return ApiConnection(mode, api_url, f"Prefect API: {api_url} (from PREFECT_API_URL)")
    if mode is ApiMode.EPHEMERAL:
        config.prefect_home.mkdir(parents=True, exist_ok=True)
        apply_environment(ephemeral_environment(config))
        _tether_temporary_server()
        return ApiConnection(mode, None, "Prefect API: a temporary server for this run only (--ephemeral)")
    if control.recorded_pid(config) is None or not control.health(config.url):
        result = control.start(config)
        if on_server_start is not None and not result.already_running:
            on_server_start(
                f"Started dvcflow's local Prefect server at {config.url} in {result.seconds:.1f} s; "
                "it keeps run history between runs (stop it with `dvcflow server stop`)"
            )
    apply_environment(config.client_environment())
    for key, value in LOCAL_CLIENT_DEFAULTS.items():  # an explicit setting wins
        os.environ.setdefault(key, value)
    return ApiConnection(mode, config.api_url, f"Prefect API: {config.api_url} (dvcflow local server)")


class _TetheredSubprocess:
    """The `subprocess` module as Prefect's server module sees it, but `Popen` starts the command through
    dvcflow's tether shim (Linux), so that the command dies with this process."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, args: list[str], **kwargs: Any) -> Any:  # the name Prefect calls
        from dvcflow.proc import tether

        return self._real.Popen(tether.shim_command(list(args)), **kwargs)


def _tether_temporary_server() -> None:
    """Prefect runs `--ephemeral`'s temporary server as a plain child that only an exit hook stops: a
    SIGKILLed dvcflow (the OOM killer, `kill -9`) left it serving forever, holding the caller's stdout
    open. Its module's one `subprocess.Popen` (the uvicorn command) now goes through the tether shim.
    Imported here, after `apply_environment`: Prefect reads its settings once, at import."""
    if not sys.platform.startswith("linux"):
        return
    import prefect.server.api.server as prefect_server

    real = getattr(prefect_server, "subprocess")  # noqa: B009 - the module's import, not an export
    if not isinstance(real, _TetheredSubprocess):
        setattr(prefect_server, "subprocess", _TetheredSubprocess(real))  # noqa: B010
