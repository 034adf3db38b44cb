"""dvcflow's warm starter: the generic fork server (`dvcflow.proc.zygote`) wired for dvcflow. It has
imported Typer, Prefect and its flow and task engines, DVC's repository code and dvcflow's flows, and
forks one child per command: half of a no-op `dvcflow run-a` was importing Prefect.

What only dvcflow knows lives here, above every layer the commands use: what to import (`PRELOAD`), which
commands to serve, when Prefect's settings would make a served command differ from one run in its own
process, and how a command runs (the Typer app).

- `dvcflow server start` launches it next to the server (`dvcflow.server.control`, which names this
  module, `python -m dvcflow.cli.warm HOME SERVER_PID`, as a string: the server layer imports no `cli`),
  and `server stop` stops it; it exits by itself when the server process ends.
- The console script (`dvcflow.cli.entry`) first tries it (`serve_here`, standard library only until
  a starter takes the command). Besides the zygote's own checks (same interpreter, start-up options,
  `sys.path`, installed packages and dvcflow source files), a command is served whatever its Prefect
  settings (`PREFECT_*` variables, profiles, a prefect.toml ...): the child rebuilds them as Prefect's
  import would have, once the command has exported its own (`dvcflow.api.prefect_settings`). Declined
  are only the settings a child cannot bring up to date (`prefect_settings.declined`: Prefect's plugins,
  another SSL_CERT_FILE) and, with a terminal, `--push`/`--pull` (password prompts need /dev/tty); the
  list, with the reasons, is in docs/server.md. `DVCFLOW_WARM=0` turns it off (for a command, or for the
  starter when given to `server start`).
- `server` commands are never served: they do not import Prefect, and `server stop` stops the starter.
- A run's DVC process (`python -m dvcflow.dvc.child`) asks for the entry point `DVC_CHILD`: its `dvc
  repro` then runs in a child forked from here, DVC imported (`_run_dvc_child`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dvcflow.api import prefect_settings
from dvcflow.core.settings import WARM_STARTER_MODULE, warm_enabled
from dvcflow.proc import zygote

MODULE = WARM_STARTER_MODULE  # `python -m` this module (its name kept in `dvcflow.core.settings`)
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dvcflow's code, fingerprinted
UNSERVED = frozenset({"server"})
# Options whose commands may ask for a password on the terminal (dvc push/pull over SSH/HTTP, git
# credentials): a served child has no controlling terminal, so with a terminal these run the usual way.
# (DVC then runs in a background process group of that terminal, so a prompt still stops it: a known
# gap, docs/failure-modes.md.)
PROMPTING_OPTIONS = frozenset({"--push", "--pull"})

# What a forked child would otherwise import itself; DVC because run-a's pre-flight opens the repository
# in process. Not scikit-learn/pandas: their thread pools would start threads, and a process with
# threads cannot fork safely.
PRELOAD = (
    "dvcflow.cli.app",
    "dvcflow.services.pipeline",
    "dvcflow.flows.repro",
    "dvcflow.flows.per_stage",
    "dvcflow.flows.cached_dag",
    "dvcflow.flows.sweep",
    "dvcflow.services.sweep",
    "dvcflow.services.history",
    "dvcflow.services.deploy",
    "dvc.repo",
    "dvc.repo.reproduce",
    "dvc.stage",
    # What a no-op run-a imported after the fork (~0.25 s), seen with an import hook:
    "dvc.lock",
    "dvc.repo.datasets",
    "dvc.scm",
    "scmrepo.git",
    "networkx",
    "ruamel.yaml",
    "flufl.lock",
    "psutil",
    "anyio._backends._asyncio",
    "prefect.utilities.visualization",
    "dvcflow.core.identity",
    # What the DVC child (`dvcflow.dvc.child`, `DVC_CHILD`) imports: a `dvc repro` forked from here
    # skips ~0.4 s of DVC's import.
    "dvc.cli",
    "dvc.cli.parser",
    "dvcflow.dvc.child",
    # What a no-op run-a and its DVC child still imported after the fork (~0.1 s; bench/profile_run_a.py
    # lists them), but for Rich's emoji table and Typer's private modules:
    "dvc.repo.index",
    "dvc.repo.metrics.show",
    "dvc.repo.params",
    "dvc.repo.plots",
    "dvc.repo.artifacts",
    "dvc.repo.stage",
    "dvc.repo.graph",
    "dvc.repo.trie",
    "dvc.repo.brancher",
    "dvc.repo.open_repo",
    "dvc.rwlock",
    "dvc.cachemgr",
    "dvc.data_cloud",
    "dvc.dirs",
    "dvc.utils.strictyaml",
    "dvc_data.fs",
    "dvc_data.hashfile.db.local",
    "dvc_render.vega",
    "dvc_render.html",
    "dvc_render.image",
    "dvc_render.plotly",
    "configobj",
    "dulwich.ignore",
    "dulwich.worktree",
    "platformdirs",
    "flatten_dict",
    "pyparsing",
    "pygit2",
    "scmrepo.git.backend.pygit2",
    "fsspec.implementations.memory",
    "tarfile",
    "dvcflow.api.crash",
    "dvcflow.api.watchdog",
    "dvcflow.proc.liveness",
)
DVC_CHILD = "dvcflow.dvc.child"  # the entry point `python -m dvcflow.dvc.child` asks for (its WARM_ENTRY)


# ---------------------------------------------------------------------------------------------- client


def _may_prompt(argv: Sequence[str]) -> bool:
    """Whether the command may want a terminal a served child would not have."""
    return any(arg.partition("=")[0] in PROMPTING_OPTIONS for arg in argv) and os.isatty(0)


def serve_here(argv: Sequence[str]) -> int | None:
    """Run this command in a child of the warm starter and return its exit code (negative: the signal
    that ended it); None when no starter takes it, and the command must run in this process."""
    if not warm_enabled(os.environ) or (argv and argv[0] in UNSERVED) or _may_prompt(argv):
        return None
    try:
        from dvcflow.core.errors import ExitCode
        from dvcflow.core.settings import resolve_server_config

        home = resolve_server_config().home
    except Exception:  # a bad [tool.dvcflow], an unreadable cwd ...: the usual path reports it
        return None
    return zygote.serve(home, argv, PACKAGE, unknown=ExitCode.UNKNOWN)


# ---------------------------------------------------------------------------------------------- starter


class _Policy:
    """The hooks that depend on what the starter imported Prefect with (its environment and home)."""

    def __init__(self, environ: Mapping[str, str], cwd: str) -> None:
        self.environ = dict(environ)
        self.inputs = prefect_settings.settings_inputs(environ, cwd)

    def refuse(self, request: Mapping[str, Any]) -> str | None:
        """Only what a child cannot bring up to date (`prefect_settings.declined`): other Prefect settings
        are rebuilt in the child (`prefect_settings.sync_prefect_settings`)."""
        return prefect_settings.declined(request.get("env") or {}, str(request.get("cwd", "")), self.environ)

    def after_adopt(self, request: Mapping[str, Any]) -> None:
        if request.get("entry") is None:  # a dvcflow command (the DVC child imports no Prefect)
            prefect_settings.adopted(self.inputs)


def _preload() -> None:
    """Import what commands need (the zygote pauses the garbage collector meanwhile and freezes after)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from dvcflow.api.execution import import_engine

    import_engine()
    # The render consoles detect colours and width for the terminal they are made on: a child makes its own.
    for name in [
        name for name in sys.modules if name == "dvcflow.cli.render" or name.startswith("dvcflow.cli.render.")
    ]:
        del sys.modules[name]
    if "dvcflow" in sys.modules and hasattr(sys.modules["dvcflow"], "render"):
        delattr(sys.modules["dvcflow"], "render")


def _run(argv: list[str], main_package: str | None) -> int:
    """The Typer app, named as the client's console script or `python -m dvcflow` would name it."""
    import gc

    gc.disable()  # as `entry.main`: the root callback freezes and re-enables the collector
    import click.utils

    from dvcflow.cli.app import app

    main = type("Main", (), {"__package__": main_package})
    prog_name = click.utils._detect_program_name(argv[0], _main=main)  # type: ignore[arg-type]
    app(args=argv[1:], prog_name=prog_name)
    return 0


def _run_dvc_child(argv: list[str]) -> int:
    """`python -m dvcflow.dvc.child ARGS` (`dvc ARGS` for a command of dvcflow), forked from here, its
    DVC imported: as that program, tied to this starter instead of to dvcflow (the client, tied to
    dvcflow, forwards the signals it gets; if it is killed, the starter kills this child's group)."""
    import logging

    from dvcflow.dvc import child
    from dvcflow.dvc.repository import PARENT_PID_ENV

    logging.root.handlers.clear()  # Prefect's, for the starter's stderr: a fresh process has none
    os.environ[PARENT_PID_ENV] = str(os.getppid())
    return child.main(argv[1:])


def main(argv: Sequence[str]) -> int:
    """`python -m dvcflow.cli.warm HOME SERVER_PID` (launched by `dvcflow.server.control`)."""
    home, server_pid = Path(argv[0]), int(argv[1])
    # The environment `launch` gave it and its working directory, before the imports: what Prefect's
    # settings are built from here.
    policy = _Policy(os.environ, os.getcwd())
    hooks = zygote.StarterHooks(
        module=MODULE,
        package=PACKAGE,
        preload=_preload,
        run=_run,
        refuse=policy.refuse,
        after_adopt=policy.after_adopt,
        entries={DVC_CHILD: _run_dvc_child},
    )
    zygote.serve_forever(home, server_pid, hooks)


if __name__ == "__main__":
    # Through the imported module, not this `__main__` copy: the one the commands' code imports.
    from dvcflow.cli import warm as _module

    sys.exit(_module.main(sys.argv[1:]))
