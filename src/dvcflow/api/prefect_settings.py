"""Prefect's settings in a process that did not import Prefect itself: a child of the warm starter
(`dvcflow.cli.warm`). Standard library only at import (the console script's path).

Prefect builds its settings once, when it is imported: from the `PREFECT_*` variables, the profiles
file, and the `.env`, `prefect.toml` and `pyproject.toml` of the working directory; then it configures
its logging from them. A process without the starter imports Prefect after `dvcflow.api.connect` has
exported the run's settings, so that is the moment whose settings count. The starter imported Prefect
in its own home with the environment `dvcflow server start` gave it, so a child that has become its
client's process (`adopted`) brings Prefect up to date at that same moment (`sync_prefect_settings`):
when anything those settings are built from differs from what the starter built them from
(`settings_inputs`), it rebuilds them as the import would have (the settings, then the logging at their
levels); otherwise it keeps the starter's (~0.07 s saved). What cannot be brought up to date in a child
is declined before the fork (`declined`, called by the starter; docs/server.md lists each case).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

# What Prefect's settings read from the working directory besides the environment (prefect/settings/base.py).
PREFECT_FILES = (".env", "prefect.toml", "pyproject.toml")
PLUGIN_VARIABLES = ("PREFECT_PLUGINS_ENABLED", "PREFECT_EXPERIMENTS_PLUGINS_ENABLED")

# Set in a warm starter's child (`adopted`): what the settings Prefect holds now were built from.
_built_from: dict[str, Any] | None = None
_noticed = False


def prefect_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables Prefect's settings read (pydantic-settings matches their names in any case)."""
    return {key: value for key, value in environ.items() if key.upper().startswith("PREFECT_")}


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    """`environ[name]` as Prefect's settings see it: the name in any case (the last one wins)."""
    found = None
    for key, value in environ.items():
        if key.upper() == name:
            found = value
    return found


def prefect_files(cwd: str) -> list[str]:
    """The files in `cwd` that Prefect's settings would read (a `.env` naming a PREFECT_ variable, a
    prefect.toml, a pyproject.toml with [tool.prefect])."""
    import tomllib

    found = []
    for name in PREFECT_FILES:
        try:
            with open(os.path.join(cwd, name), "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        if name == "prefect.toml" or (name == ".env" and b"prefect_" in text.lower()):
            found.append(name)
        elif name == "pyproject.toml" and b"prefect" in text:
            try:
                tool = tomllib.loads(text.decode()).get("tool", {})
            except ValueError:
                tool = {"prefect": None}  # Prefect fails on it: a rebuild lets it say so, as it would
            if "prefect" in tool:
                found.append(name)
    return found


def _prefect_home(environ: Mapping[str, str]) -> str:
    return _variable(environ, "PREFECT_HOME") or os.path.join(os.path.expanduser("~"), ".prefect")


def _profiles_path(environ: Mapping[str, str]) -> str:
    """The profiles file Prefect reads (unless a settings file in the working directory names another:
    then those files differ anyway)."""
    home = _prefect_home(environ)
    return _variable(environ, "PREFECT_PROFILES_PATH") or os.path.join(home, "profiles.toml")


def _stat(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def settings_inputs(environ: Mapping[str, str], cwd: str) -> dict[str, Any]:
    """What Prefect's settings and logging are built from in a process with this environment and
    working directory (~0.1 ms): equal inputs, equal settings. The files by identity, size and mtime."""
    files = prefect_files(cwd)
    logging_file = _variable(environ, "PREFECT_LOGGING_SETTINGS_PATH") or os.path.join(
        _prefect_home(environ), "logging.yml"
    )
    return {
        "environment": sorted(prefect_environment(environ).items()),
        "files": [[os.path.join(cwd, name), _stat(os.path.join(cwd, name))] for name in files],
        "profiles": [_profiles_path(environ), _stat(_profiles_path(environ))],
        "logging": [logging_file, _stat(logging_file)],
    }


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on", "t", "y"}


def declined(environ: Mapping[str, str], cwd: str, starter_environ: Mapping[str, str]) -> str | None:
    """Why a warm starter's child could not run a command with this environment and working directory
    as its own process would (None: it can). Called in the starter, before the fork (~0.2 ms)."""
    if environ.get("SSL_CERT_FILE") != starter_environ.get("SSL_CERT_FILE"):
        return (
            "SSL_CERT_FILE differs from the starter's: Prefect takes its default for "
            "PREFECT_API_SSL_CERT_FILE from it when it is imported"
        )
    sources = [name for name in PLUGIN_VARIABLES if _truthy(_variable(environ, name))]
    candidates = [os.path.join(cwd, name) for name in prefect_files(cwd)]
    candidates += [_profiles_path(environ), _profiles_path(starter_environ)]
    for path in dict.fromkeys(candidates):
        try:
            with open(path, "rb") as handle:
                if b"plugins" in handle.read().lower():
                    sources.append(path)
        except OSError:
            continue
    if sources:
        return (
            f"Prefect's plugins may be enabled ({', '.join(sources)}): their start-up hooks run when "
            "Prefect is imported, before anything else is"
        )
    return None


def adopted(starter_inputs: Mapping[str, Any]) -> None:
    """Called in a warm starter's child once it has taken over its client's environment, working
    directory and stderr: note what the settings Prefect holds were built from (for
    `sync_prefect_settings`), and point Prefect's log handlers at this stderr."""
    global _built_from
    _built_from = dict(starter_inputs)
    _rebuild_prefect_logging()


def sync_prefect_settings() -> None:
    """Called once a command has exported its Prefect settings (`dvcflow.api.connect`): the moment a
    process without the starter would import Prefect. In a warm starter's child whose settings inputs
    differ from those the settings Prefect holds were built from (the user's PREFECT_HOME, profile,
    logging level, API, `--ephemeral`, a prefect.toml ...), rebuild them as the import would have."""
    global _built_from
    if _built_from is None:  # not a starter's child: Prefect reads its settings when imported
        return
    now = settings_inputs(os.environ, os.getcwd())
    if now != _built_from:
        _rebuild_prefect_settings()
        _built_from = now
    _first_import_notice()


def _rebuild_prefect_settings() -> None:
    """What `import prefect` does with its settings: build them (`prefect.context`), then configure its
    logging from them, not incrementally (`prefect.logging.configuration.setup_logging`)."""
    import logging

    import prefect.context
    from prefect.logging import configuration
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    _forget_handlers(PREFECT_LOGGING_EXTRA_LOGGERS.value())  # the extra loggers of the old settings
    try:  # files read within the last minute are cached by path and mtime: a cwd-relative path is ambiguous
        from prefect.settings import sources

        sources._file_cache.clear()
    except (ImportError, AttributeError):
        pass
    prefect.context.refresh_global_settings_context()
    configuration.PROCESS_LOGGING_CONFIG.clear()
    configuration.setup_logging(incremental=False)
    logging.getLogger("prefect.profiles").debug(
        f"Using profile {prefect.context.get_settings_context().profile.name!r}"
    )


def _forget_handlers(extra_loggers: Sequence[str]) -> None:
    """Take the `prefect.extra` handlers Prefect copied onto the extra loggers off them again."""
    import logging

    handlers = logging.getLogger("prefect.extra").handlers
    for name in extra_loggers:
        for handler in handlers:
            logging.getLogger(name).removeHandler(handler)


def _rebuild_prefect_logging() -> None:
    """Prefect configured its handlers at import, for the starter's log file: configure them afresh for
    this stderr (a terminal's colours), from the configuration Prefect built then, at the starter's
    levels (building it again costs ~0.05 s: `sync_prefect_settings` does when the settings differ)."""
    import copy
    import logging.config

    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    _forget_handlers(PREFECT_LOGGING_EXTRA_LOGGERS.value())
    logging.config.dictConfig({**copy.deepcopy(PROCESS_LOGGING_CONFIG), "incremental": False})
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():  # as Prefect's `setup_logging` does
        for handler in logging.getLogger("prefect.extra").handlers:
            logging.getLogger(name).addHandler(handler)


def _first_import_notice() -> None:
    """What `import prefect` does on a terminal: its first-run telemetry notice (once per Prefect home);
    the starter imported Prefect with no terminal."""
    global _noticed
    if _noticed:
        return
    _noticed = True
    try:
        from prefect._internal import analytics

        analytics._telemetry_initialized = False
        analytics.initialize_analytics()
    except Exception:  # a private API: without it, the notice is all that is missing
        return
