"""The committed demo pipeline is consistent: dvc.lock matches the sources and params it records."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from tests.conftest import Processes
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


# An OpenBLAS kernel any x86-64 CPU runs, summing in another order than the default ones (lbfgs moved
# coefficients by 1e-4 under it).
OTHER_KERNEL = "Nehalem"


def test_the_trained_model_is_byte_identical_under_another_blas_kernel(
    tmp_path: Path, processes: Processes
) -> None:
    """A fresh clone's `make run` leaves `git status` clean on any CPU: the model's md5 in dvc.lock is what
    `train` writes whichever BLAS kernel runs it."""
    lock = yaml.safe_load((PROJECT / "dvc.lock").read_text())
    recorded = {out["path"]: out["md5"] for out in lock["stages"]["train"]["outs"]}["models/model.joblib"]
    env = {**os.environ, "OPENBLAS_CORETYPE": OTHER_KERNEL, "OPENBLAS_NUM_THREADS": "1"}
    script = (
        "import sys; from pathlib import Path; from mltoy.params import load_params;"
        "from mltoy.pipeline import stage_prepare, stage_train;"
        "out = Path(sys.argv[1]); params = load_params(Path('params.yaml'));"
        "stage_prepare(Path('data/raw/iris.csv'), out / 'train.csv', out / 'test.csv', params);"
        "stage_train(out / 'train.csv', out / 'model.joblib', params)"
    )
    trained = processes.python("-c", script, str(tmp_path), cwd=PROJECT, env=env)  # a real training: seconds
    assert trained.returncode == 0, trained.stderr
    assert hashlib.md5((tmp_path / "model.joblib").read_bytes()).hexdigest() == recorded
