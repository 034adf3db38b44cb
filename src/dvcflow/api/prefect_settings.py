"""Prefect's settings in a process that did not import Prefect itself: a child of the warm starter
(`dvcflow.cli.warm`). Prefect reads its settings once, at import, and configures its logging then; the
starter imported it with its own environment and log file, so a child that has become its client's
process brings both up to date here. Standard library only at import (the console script's path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Set in a warm starter's child (`adopted`): the PREFECT_* variables the starter imported Prefect with.
_imported_prefect_env: dict[str, str] | None = None
_noticed = False


def prefect_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key.startswith("PREFECT_")}


def adopted(imported_with: Mapping[str, str]) -> None:
    """Called in a warm starter's child once it has taken over its client's environment and stderr:
    remember what Prefect was imported with (for `sync_prefect_settings`) and rebuild its logging."""
    global _imported_prefect_env
    _imported_prefect_env = dict(imported_with)
    _rebuild_prefect_logging()


def sync_prefect_settings() -> None:
    """Called once a command has exported its Prefect settings (`dvcflow.api.connect`). A process
    imports Prefect after that; a warm child had Prefect imported by the starter, so when the final
    `PREFECT_*` variables differ from those (`--ephemeral`, another port), Prefect's root settings are
    rebuilt from the environment, as its import would have built them."""
    global _imported_prefect_env
    if _imported_prefect_env is None:
        return
    now = prefect_environment(os.environ)
    if now != _imported_prefect_env:
        import prefect.context

        prefect.context.refresh_global_settings_context()
        _imported_prefect_env = now
    _first_import_notice()


def _rebuild_prefect_logging() -> None:
    """Prefect configured its handlers at import, for the starter's log file: configure them afresh for
    this stderr (a terminal's colours), from the configuration Prefect built then (the command's logging
    settings are the starter's: `dvcflow.cli.warm` refuses others); building it again costs ~0.1 s."""
    import copy
    import logging.config

    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    extra = logging.getLogger("prefect.extra").handlers
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():
        for handler in extra:
            logging.getLogger(name).removeHandler(handler)
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
