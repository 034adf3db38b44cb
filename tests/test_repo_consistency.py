"""The committed demo pipeline is consistent: dvc.lock matches the sources and params it records."""

from __future__ import annotations

import hashlib

import yaml

from tests.helpers import PROJECT


def md5(path: str) -> str:
    return hashlib.md5((PROJECT / path).read_bytes()).hexdigest()


def test_dvc_lock_records_the_current_sources_and_params() -> None:
    lock = yaml.safe_load((PROJECT / "dvc.lock").read_text())
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    assert set(lock["stages"]) == set(spec["stages"]) == {"prepare", "train", "evaluate"}
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage["deps"]:
            if dep["path"].startswith(("src/", "data/raw/")) and md5(dep["path"]) != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for section, values in stage.get("params", {}).get("params.yaml", {}).items():
            assert params[section] == values, f"{name}: params.yaml:{section} differs from dvc.lock"
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit dvc.lock): {stale}"
