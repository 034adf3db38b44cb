"""Where the pipeline's files live — read from the `vars: - paths:` block of `dvc.yaml`, their one home.

`dvc repro` interpolates the same block into the stage commands, so Option A and Option B cannot disagree
about which file is the model. Cheap to import: PyYAML only, no DVC, no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dvcflow.errors import ConfigError

DVC_YAML = "dvc.yaml"


@dataclass(frozen=True)
class StagePaths:
    """The stage files, relative to the repository root, as `dvc.yaml` writes them."""

    raw: Path
    train: Path
    test: Path
    model: Path
    metrics: Path

    def get(self, key: str) -> Path:
        """The path named `key` (`"model"` → `models/model.joblib`)."""
        if key not in self.names():
            raise KeyError(key)
        value: Path = getattr(self, key)
        return value

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))


def _paths_block(spec: Any, source: Path) -> dict[str, Any]:
    entries = spec.get("vars") if isinstance(spec, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and "paths" in entry:
            block = entry["paths"]
            if not isinstance(block, dict):
                raise ConfigError(f"{source}: `vars: - paths:` must be a mapping of names to files")
            return block
    raise ConfigError(
        f"{source}: no `vars: - paths:` block naming the stage files",
        hint=f"declare {', '.join(StagePaths.names())} under `vars: - paths:` in {DVC_YAML}",
    )


def load_stage_paths(repo_root: Path) -> StagePaths:
    """Read the stage paths from `<repo_root>/dvc.yaml`; any gap is a one-line `ConfigError`."""
    import yaml

    source = repo_root / DVC_YAML
    try:
        spec = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: not found, so the stage paths are unknown") from None
    except OSError as err:
        raise ConfigError(f"{source}: cannot read ({err.strerror})") from None
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    block = _paths_block(spec, source)
    values: dict[str, Path] = {}
    for key in StagePaths.names():
        value = block.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{source}: `paths.{key}` is missing or not a file path")
        values[key] = Path(value)
    return StagePaths(**values)
