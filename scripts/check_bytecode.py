"""Check that `make setup` left compiled bytecode for what dvcflow imports (run by `make check-bytecode`).

Imports the heavy packages and fails, naming a few, if any imported module from site-packages has no
current `.pyc`: with PYTHONDONTWRITEBYTECODE=1 (set on many machines) Python would otherwise compile
them from source in every process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
from pathlib import Path

HEAVY = (
    "typer",
    "rich",
    "prefect",
    "prefect.server.api.server",
    "dvc.repo",
    "pandas",
    "sklearn.linear_model",
)


def stale_modules() -> tuple[int, list[str]]:
    """(modules checked, those whose .pyc is missing or older than the source) among site-packages'."""
    for name in HEAVY:
        importlib.import_module(name)
    site = Path(sysconfig.get_path("purelib")).resolve()
    checked, stale = 0, []
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if not source or not source.endswith(".py") or not Path(source).resolve().is_relative_to(site):
            continue
        checked += 1
        pyc = Path(importlib.util.cache_from_source(source))  # what a plain import reads
        if not pyc.is_file() or pyc.stat().st_mtime < Path(source).stat().st_mtime:
            stale.append(name)
    return checked, sorted(stale)


def main() -> int:
    checked, stale = stale_modules()
    if stale:
        examples = ", ".join(stale[:5])
        print(f"{len(stale)} of {checked} imported modules have no current bytecode, e.g. {examples}")
        return 1
    print(f"bytecode: all {checked} imported site-packages modules are compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
