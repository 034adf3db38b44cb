"""mltoy on its own: params validation, stages, atomic writes, and no orchestrator imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mltoy.data import DataError, materialize_iris, tracked_md5
from mltoy.params import ParamsError, load_params
from mltoy.pipeline import StageError, stage_evaluate, stage_prepare, stage_train
from tests.conftest import Processes
from tests.helpers import PROJECT

GOOD = {
    "split": {"test_size": 0.2, "random_state": 42},
    "train": {"C": 1.0, "max_iter": 200, "random_state": 42},
}


def write_params(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "params.yaml: file is empty"),
        ("split: [unclosed", "params.yaml: not valid YAML at line 1"),
        ("- a list", "params.yaml: expected a mapping at the top level, got list"),
        ({"train": GOOD["train"]}, "params.yaml: missing key 'split'"),
        ({**GOOD, "split": {"random_state": 1}}, "params.yaml: missing key 'split.test_size'"),
        (
            {**GOOD, "split": {"test_size": 1.5, "random_state": 1}},
            "params.yaml: split.test_size: input should be less than 1 (got 1.5)",
        ),
        (
            {**GOOD, "split": {"test_size": "big", "random_state": 1}},
            "params.yaml: split.test_size: input should be a valid number (got 'big')",
        ),
        (
            {**GOOD, "train": {**GOOD["train"], "max_iter": True}},
            "params.yaml: train.max_iter: input should be a valid integer (got True)",
        ),
        ({**GOOD, "trian": {}}, "params.yaml: unknown key 'trian'"),
    ],
    ids=[
        "empty",
        "bad-yaml",
        "not-mapping",
        "missing-section",
        "missing-key",
        "out-of-range",
        "wrong-type",
        "bool-for-int",
        "typo-section",
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, data: object, message: str) -> None:
    path = write_params(tmp_path / "params.yaml", data)
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert str(caught.value) == message.replace("params.yaml", str(path))


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_project_params_are_valid() -> None:
    params = load_params(PROJECT / "params.yaml")
    assert 0 < params.split.test_size < 1


def test_stages_end_to_end_and_deterministic(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path / "params.yaml", GOOD))
    raw = tmp_path / "raw.csv"
    assert materialize_iris(raw) is True
    outputs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        counts = stage_prepare(raw, folder / "train.csv", folder / "test.csv", params)
        assert counts == {"train_rows": 120, "test_rows": 30}
        stage_train(folder / "train.csv", folder / "model.joblib", params)
        metrics = stage_evaluate(folder / "test.csv", folder / "model.joblib", folder / "m.json", params)
        assert json.loads((folder / "m.json").read_text()) == metrics
        assert 0.8 < metrics["accuracy"] <= 1.0
        outputs.append(((folder / "train.csv").read_bytes(), metrics))
    assert outputs[0] == outputs[1]
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupted_model_is_a_clear_error_and_leaves_metrics_alone(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path / "params.yaml", GOOD))
    raw = tmp_path / "raw.csv"
    materialize_iris(raw)
    stage_prepare(raw, tmp_path / "train.csv", tmp_path / "test.csv", params)
    (tmp_path / "model.joblib").write_bytes(b"not a model at all")
    (tmp_path / "m.json").write_text('{"accuracy": 0.5}')
    with pytest.raises(StageError, match="model file is corrupted or not a joblib model"):
        stage_evaluate(tmp_path / "test.csv", tmp_path / "model.joblib", tmp_path / "m.json", params)
    assert (tmp_path / "m.json").read_text() == '{"accuracy": 0.5}'


def test_raw_data_matches_the_dvc_file(tmp_path: Path) -> None:
    raw = tmp_path / "iris.csv"
    materialize_iris(raw, PROJECT / "data/raw/iris.csv.dvc")
    raw.write_text(raw.read_text() + "1,2,3,4,setosa\n")
    with pytest.raises(DataError, match="does not match"):
        materialize_iris(raw, PROJECT / "data/raw/iris.csv.dvc")
    assert len(tracked_md5(PROJECT / "data/raw/iris.csv.dvc")) == 32


def test_cli_error_is_one_line(tmp_path: Path, processes: Processes) -> None:
    result = processes.python(
        "-m",
        "mltoy.cli",
        "train",
        "--train",
        str(tmp_path / "none.csv"),
        "--model",
        str(tmp_path / "m.joblib"),
        "--params",
        str(PROJECT / "params.yaml"),
    )
    assert result.returncode == 1
    assert result.stderr == f"Error: training data not found: {tmp_path / 'none.csv'}\n"


def test_mltoy_imports_neither_prefect_nor_dvc(processes: Processes) -> None:
    code = (
        "import sys, mltoy.cli, mltoy.pipeline, mltoy.data, mltoy.params;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'dvc', 'dvcflow')))"
    )
    result = processes.python("-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_dvcflow_help_imports_no_heavy_library(processes: Processes) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from dvcflow.cli.app import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'dvc', 'sklearn', 'pandas'}))"
    )
    result = processes.python("-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
