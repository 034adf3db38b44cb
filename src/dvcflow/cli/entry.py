"""The `dvcflow` console script (and `python -m dvcflow`).

Importing Typer and Rich and parsing arguments only create objects that live until exit, so no
garbage-collector pass is worth its time before a command starts its work: the collector stays
paused until the root callback (`app.root`) freezes what exists and turns it back on. `--help`
therefore never collects (it answers faster than `dvc --help`).
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()
    from dvcflow.cli.app import main as run

    run()
