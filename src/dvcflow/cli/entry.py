"""The `dvcflow` console script (and `python -m dvcflow`).

With dvcflow's local server up, its warm starter (`dvcflow.cli.warm`) runs the command in a child of a
process that has already imported Prefect; this process only forwards signals and exits as the child
did. Otherwise (no starter, `DVCFLOW_WARM=0`, or it declines) the command runs here, as below. Standard
library only until then.

Importing Typer and Rich and parsing arguments only create objects that live until exit, so no
garbage-collector pass is worth its time before a command starts its work: the collector stays
paused until the root callback (`app.root`) freezes what exists and turns it back on. `--help`
therefore never collects (it answers faster than `dvc --help`).
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    gc.disable()
    from dvcflow.cli import warm
    from dvcflow.proc import zygote

    code = warm.serve_here(sys.argv[1:])
    if code is not None:
        zygote.exit_like(code)
    from dvcflow.cli.app import main as run

    run()
