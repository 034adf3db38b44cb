"""dvcflow: Prefect on top of DVC — run history, retries, a UI and parallel stages for a DVC pipeline.

The public Python API is what `__all__` names (docs/python-api.md):

    from dvcflow import Pipeline

    result = Pipeline("path/to/repo").run(per_stage=True)
    print(result.stages["train"].state, result.metrics)

Each name is imported on first use (module `__getattr__`), so `import dvcflow` — and with it the `dvcflow`
command's `--help` — stays as cheap as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DvcflowError", "Pipeline", "PipelineRunError", "Plan", "RunResult", "StageRun", "__version__"]

if TYPE_CHECKING:
    from dvcflow.core.errors import DvcflowError
    from dvcflow.core.graph import Plan
    from dvcflow.core.results import PipelineRunError, RunResult, StageRun
    from dvcflow.services.pipeline import Pipeline

_HOMES = {
    "DvcflowError": "dvcflow.core.errors",
    "Pipeline": "dvcflow.services.pipeline",
    "PipelineRunError": "dvcflow.core.results",
    "Plan": "dvcflow.core.graph",
    "RunResult": "dvcflow.core.results",
    "StageRun": "dvcflow.core.results",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dvcflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
