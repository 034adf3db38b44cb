"""The program DVC commands run in: `python -m dvcflow.dvc.child ARGS` is `dvc ARGS`, started by
`dvcflow.dvc.commands`.

Why not `dvc` itself: this process first ties itself to dvcflow, so that a SIGKILLed dvcflow leaves no
`dvc repro` behind to race the next run (`dvcflow.proc.children.tie_to_parent`; a `preexec_fn` is not safe
in a process with threads, as Prefect's is). It also saves work DVC would do twice: it imports DVC with
the garbage collector paused, may do so ahead of time and wait for its go (`warm_up`), and after a
successful `repro` reads the metrics with the DVC it has imported, printing them on one marked line.
With dvcflow's warm starter up, the DVC part runs in a child forked from the starter, DVC imported
already (`_served`); this process then only forwards signals.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dvcflow.dvc.commands import METRICS_ENV, METRICS_MARK, READY_MARK, WAIT_ENV
from dvcflow.dvc.metrics_files import repo_metrics
from dvcflow.dvc.repository import PARENT_PID_ENV
from dvcflow.proc import children, zygote

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # what the warm starter fingerprints
WARM_ENTRY = "dvcflow.dvc.child"  # this program's name among the warm starter's entry points


def main(argv: list[str]) -> int:
    """`python -m dvcflow.dvc.child ARGS`: `dvc ARGS` in this process, dying with dvcflow.

    No garbage-collector passes while DVC is imported (~0.1 s); with `WAIT_ENV` it then waits for
    dvcflow's go (see `warm_up`), and with `METRICS_ENV` it reads the metrics once the command
    succeeded, its DVC already imported, and prints them on one marked line.
    """
    import gc

    if not children.tie_to_parent(int(os.environ.get(PARENT_PID_ENV, "0"))):
        return 143  # dvcflow died before it could be tied to it: don't run DVC for nobody
    os.environ.pop(PARENT_PID_ENV, None)  # not for the stage commands, nor these two
    served = _served(argv)
    if served is not None:
        zygote.exit_like(served)
    waits = os.environ.pop(WAIT_ENV, None) == "1"
    metrics = os.environ.pop(METRICS_ENV, None) == "1"
    gc.disable()
    import dvc.cli.parser  # every command's module
    import dvc.repo.reproduce  # noqa: F401 - imported here, under the paused collector
    from dvc.cli import main as dvc_main

    gc.freeze()
    gc.enable()
    if waits:
        print(READY_MARK, end="", flush=True)
        try:
            if not sys.stdin.readline():
                return 0  # never asked for
        except KeyboardInterrupt:
            return 130
        devnull = os.open(os.devnull, os.O_RDONLY)  # the stage commands read nothing, as before
        os.dup2(devnull, 0)
        os.close(devnull)
    code = int(dvc_main(argv) or 0)
    if code == 0 and metrics:
        _print_metrics()
    gc.freeze()  # nothing left for a collection at exit to scan
    return code


def _served(argv: list[str]) -> int | None:
    """With dvcflow's warm starter up (`dvcflow.cli.warm`), this command runs in a child forked from it,
    DVC imported already (~0.4 s of a no-op run-a), and this process only forwards signals (a SIGTERM
    from its tether included) and ends as that child does. None: it runs here (no starter, it declined,
    `DVCFLOW_WARM=0`, or this is that child)."""
    from dvcflow.core.settings import resolve_server_config, warm_enabled

    if zygote.forked_here() or not warm_enabled(os.environ):
        return None
    try:
        home = resolve_server_config().home
    except Exception:  # a bad [tool.dvcflow]: DVC does not care
        return None
    return zygote.serve(home, argv, PACKAGE, entry=WARM_ENTRY)


def _print_metrics() -> None:
    """Best effort: when DVC cannot read them here, the caller reads them itself and reports why."""
    import json

    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            files = repo_metrics(repo, Path.cwd())
        line = METRICS_MARK + json.dumps(files, default=str)
    except Exception:  # the caller falls back to its own read
        return
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
