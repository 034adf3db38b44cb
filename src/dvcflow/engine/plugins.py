"""In-process stage functions: how a repository tells dvcflow to call Python instead of a stage's `cmd`.

A repository declares them in its `pyproject.toml`:

    [tool.dvcflow.stages]
    train = "mltoy.cli:main"

Under `run-b`, stage `train` then runs as `mltoy.cli.main(argv)` in dvcflow's process, where `argv` is
what `sys.argv[1:]` would be for the stage's command (`python -m mltoy.cli train --model m.joblib` →
`["train", "--model", "m.joblib"]`), in the stage's wdir. A non-zero return or an exception fails the
stage. Everything else is as for the command: outputs removed first, recorded through DVC afterwards.
Only one-line commands of the form `python -m MODULE ...` or `python SCRIPT.py ...` can be replaced.

The function is loaded by its import string when the stage runs: dvcflow imports no project code itself.
"""

from __future__ import annotations

import importlib
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError

PYPROJECT = "pyproject.toml"
SHELL_OPERATORS = ("|", "&", ";", ">", "<", "`", "$(")


@dataclass(frozen=True)
class StageFunction:
    """A stage name's in-process twin: `module:function`, called with the command's arguments."""

    stage: str
    target: str

    def load(self) -> Callable[[list[str]], Any]:
        module_name, _, attribute = self.target.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ConfigError(
                f"stage {self.stage!r}: cannot load {self.target!r} ({err})",
                hint=f"fix [tool.dvcflow.stages] in {PYPROJECT}",
            ) from None
        if not callable(function):
            raise ConfigError(f"stage {self.stage!r}: {self.target!r} is not callable")
        return function


def load_registry(root: Path) -> Mapping[str, StageFunction]:
    """`[tool.dvcflow.stages]` of `<root>/pyproject.toml`: stage name → its function (may be empty)."""
    path = root / PYPROJECT
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None
    table = data.get("tool", {}).get("dvcflow", {}).get("stages", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.dvcflow.stages] must map stage names to 'module:function'")
    registry: dict[str, StageFunction] = {}
    for stage, target in table.items():
        module, _, function = str(target).partition(":")
        if not isinstance(target, str) or not module or not function:
            raise ConfigError(
                f"{path}: [tool.dvcflow.stages] {stage} = {target!r}: expected 'module:function'"
            )
        registry[stage] = StageFunction(stage, target)
    return registry


def command_arguments(stage: str, commands: tuple[str, ...]) -> list[str]:
    """What `sys.argv[1:]` would be for the stage's one command; `ConfigError` if it cannot be replaced."""
    if len(commands) != 1 or any(operator in commands[0] for operator in SHELL_OPERATORS):
        raise ConfigError(
            f"stage {stage!r}: only a one-line `python -m MODULE ...` or `python SCRIPT.py ...` command "
            "can run as an in-process function",
            hint=f"remove {stage} from [tool.dvcflow.stages] to run its command instead",
        )
    tokens = shlex.split(commands[0])
    if len(tokens) >= 3 and tokens[1] == "-m":
        return tokens[3:]
    if len(tokens) >= 2 and tokens[1].endswith(".py"):
        return tokens[2:]
    raise ConfigError(
        f"stage {stage!r}: its command {commands[0]!r} is neither `python -m MODULE ...` "
        "nor `python SCRIPT.py ...`"
    )
