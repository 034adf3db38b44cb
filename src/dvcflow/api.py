"""Decide which Prefect API a run uses and prepare the environment for it, before Prefect is imported."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from dvcflow import server, warm
from dvcflow.errors import ApiUnreachableError
from dvcflow.settings import (
    QUIET_ENV,
    ApiMode,
    ServerConfig,
    apply_environment,
    choose_api_mode,
    ephemeral_environment,
)

REACH_TIMEOUT_S = 5.0
# Prefect retries a dead connection 5 times with 2**n s back-off (about a minute per request); on a
# loopback server that has died, three tries say so in about 14 s.
LOCAL_CLIENT_DEFAULTS = {"PREFECT_CLIENT_MAX_RETRIES": "3"}


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
    config: ServerConfig,
    *,
    ephemeral: bool | None = None,
    on_server_start: Callable[[str], None] | None = None,
) -> ApiConnection:
    """Export the client settings for this run; start the local server on first use."""
    connection = _connect(config, ephemeral=ephemeral, on_server_start=on_server_start)
    warm.sync_prefect_settings()  # in a warm starter's child, Prefect is imported already
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
        return ApiConnection(mode, None, "Prefect API: a temporary server for this run only (--ephemeral)")
    if server.recorded_pid(config) is None or not server.health(config.url):
        result = server.start(config)
        if on_server_start is not None and not result.already_running:
            on_server_start(
                f"Started dvcflow's local Prefect server at {config.url} in {result.seconds:.1f} s; "
                "it keeps run history between runs (stop it with `dvcflow server stop`)"
            )
    apply_environment(config.client_environment())
    for key, value in LOCAL_CLIENT_DEFAULTS.items():  # an explicit setting wins
        os.environ.setdefault(key, value)
    return ApiConnection(mode, config.api_url, f"Prefect API: {config.api_url} (dvcflow local server)")


def local_client_environment(config: ServerConfig) -> dict[str, str]:
    """Every `PREFECT_*` variable `connect` exports for dvcflow's local server when none is set (what
    the warm starter imports Prefect with, `dvcflow.warm`)."""
    return {**config.client_environment(), **LOCAL_CLIENT_DEFAULTS}
