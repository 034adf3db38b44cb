"""Option B's cache: one test per key input, a pickle round-trip, the output-integrity check, and the
stage paths the keys are built from. No Prefect API needed (results go to a folder in tmp)."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from dvcflow.errors import ConfigError
from dvcflow.flows.stages import (
    STAGES,
    StageCachePolicy,
    StageOutcome,
    build_stage_cache_policy,
    code_fingerprint,
    distrust_reason,
    file_md5,
    upstream_of,
)
from dvcflow.stage_paths import StagePaths, load_stage_paths
from mltoy.params import Params
from tests.helpers import PROJECT

PARAMS = Params.model_validate(
    {
        "split": {"test_size": 0.2, "random_state": 42},
        "train": {"C": 1.0, "max_iter": 200, "random_state": 42},
    }
)
PATHS = StagePaths(
    raw=Path("data/raw.csv"),
    train=Path("data/train.csv"),
    test=Path("data/test.csv"),
    model=Path("models/model.joblib"),
    metrics=Path("reports/metrics.json"),
)
STAGE = {stage.name: stage for stage in STAGES}


def _policy(**changes: Any) -> StageCachePolicy:
    base = StageCachePolicy(
        stage="train",
        inputs=(("data/train.csv", "0" * 32),),
        outputs=("models/model.joblib",),
        params_json='train:{"C":1.0}',
        code_hash="c0de",
        upstream_keys=(("prepare", "k1"),),
    )
    return dataclasses.replace(base, **changes)


def _with_params(**sections: dict[str, Any]) -> Params:
    return Params.model_validate({**PARAMS.model_dump(), **sections})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Input files of every stage, in place."""
    for key in ("raw", "train", "test", "model"):
        target = tmp_path / PATHS.get(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{key} v1\n")
    return tmp_path


def test_key_is_deterministic_and_ignores_task_arguments() -> None:
    policy = _policy()
    assert policy.key == _policy().key
    assert policy.compute_key(None, {"anything": 1}, {"flow": 2}) == policy.key


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"stage": "evaluate"}, id="stage"),
        pytest.param({"inputs": (("data/train.csv", "1" * 32),)}, id="input-content"),
        pytest.param({"inputs": (("data/train.csv", None),)}, id="input-missing"),
        pytest.param({"inputs": (("data/other.csv", "0" * 32),)}, id="input-path"),
        pytest.param({"outputs": ("models/other.joblib",)}, id="output-path"),
        pytest.param({"params_json": 'train:{"C":0.5}'}, id="params"),
        pytest.param({"code_hash": "c0de2"}, id="code"),
        pytest.param({"upstream_keys": (("prepare", "k2"),)}, id="upstream-key"),
    ],
)
def test_each_input_changes_the_key(change: dict[str, Any]) -> None:
    assert _policy(**change).key != _policy().key


def test_pickle_roundtrip_keeps_the_key() -> None:
    policy = _policy()
    restored = pickle.loads(pickle.dumps(policy))
    assert restored == policy
    assert restored.key == policy.key


def test_upstream_follows_the_files_each_stage_reads() -> None:
    assert [upstream_of(stage) for stage in STAGES] == [(), ("prepare",), ("prepare", "train")]


def test_built_key_follows_input_content(repo: Path) -> None:
    before = build_stage_cache_policy(STAGE["train"], repo, PATHS, PARAMS, {"prepare": "k"})
    assert before.inputs == (("data/train.csv", file_md5(repo / "data/train.csv")),)
    (repo / "data/train.csv").write_text("train v2\n")
    after = build_stage_cache_policy(STAGE["train"], repo, PATHS, PARAMS, {"prepare": "k"})
    assert after.key != before.key
    (repo / "data/train.csv").unlink()
    missing = build_stage_cache_policy(STAGE["train"], repo, PATHS, PARAMS, {"prepare": "k"})
    assert missing.inputs == (("data/train.csv", None),)


def test_a_params_section_only_changes_its_own_stage(repo: Path) -> None:
    changed = _with_params(train={"C": 0.5, "max_iter": 200, "random_state": 42})
    for name, should_change in (("prepare", False), ("train", True), ("evaluate", False)):
        old = build_stage_cache_policy(STAGE[name], repo, PATHS, PARAMS, {})
        new = build_stage_cache_policy(STAGE[name], repo, PATHS, changed, {})
        assert (old.key != new.key) is should_change, name


def test_upstream_key_changes_the_downstream_key(repo: Path) -> None:
    first = build_stage_cache_policy(STAGE["evaluate"], repo, PATHS, PARAMS, {"train": "a", "prepare": "p"})
    same = build_stage_cache_policy(STAGE["evaluate"], repo, PATHS, PARAMS, {"prepare": "p", "train": "a"})
    other = build_stage_cache_policy(STAGE["evaluate"], repo, PATHS, PARAMS, {"train": "b", "prepare": "p"})
    assert first.key == same.key
    assert first.key != other.key


def _load_module(folder: Path, source: str) -> ModuleType:
    """`source` as module `fp_stage` (one name: a function's module is part of its fingerprint)."""
    folder.mkdir()
    path = folder / "fp_stage.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("fp_stage", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE_SOURCE = """
    COLUMNS = ("a", "b")

    def _helper(x):
        return [c for c in COLUMNS] + [x]

    def unrelated():
        return {unrelated}

    def stage(x):
        return _helper(x)
"""


def test_code_fingerprint_follows_helpers_and_constants_but_not_unrelated_code(tmp_path: Path) -> None:
    def fingerprint(version: str, source: str) -> str:
        return code_fingerprint(_load_module(tmp_path / version, source).stage)

    base = fingerprint("fp_base", STAGE_SOURCE.replace("{unrelated}", "1"))
    assert fingerprint("fp_same", STAGE_SOURCE.replace("{unrelated}", "1")) == base
    assert fingerprint("fp_unrelated", STAGE_SOURCE.replace("{unrelated}", "2")) == base
    helper = STAGE_SOURCE.replace("+ [x]", "+ [x, x]").replace("{unrelated}", "1")
    assert fingerprint("fp_helper", helper) != base
    constant = STAGE_SOURCE.replace('("a", "b")', '("a", "c")').replace("{unrelated}", "1")
    assert fingerprint("fp_constant", constant) != base


def test_the_three_stage_functions_have_distinct_stable_fingerprints() -> None:
    prints = [code_fingerprint(stage.function) for stage in STAGES]
    assert len(set(prints)) == 3
    assert prints == [code_fingerprint(stage.function) for stage in STAGES]


def _outcome(repo: Path) -> StageOutcome:
    return StageOutcome("train", {"train_rows": 3}, (("models/model.joblib", file_md5(repo / PATHS.model)),))


def test_changed_outputs_spots_deleted_and_modified_files(repo: Path) -> None:
    outcome = _outcome(repo)
    assert outcome.changed_outputs(repo) == []
    (repo / PATHS.model).write_text("tampered\n")
    assert outcome.changed_outputs(repo) == ["models/model.joblib"]
    (repo / PATHS.model).unlink()
    assert outcome.changed_outputs(repo) == ["models/model.joblib"]


def test_distrust_reason_reads_the_stored_outcome(repo: Path, tmp_path: Path) -> None:
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path / "results")))
    assert distrust_reason(store, "nothing-here", repo) is None
    store.write(_outcome(repo), key="k-train")
    assert distrust_reason(store, "k-train", repo) is None
    (repo / PATHS.model).unlink()
    assert distrust_reason(store, "k-train", repo) == (
        "models/model.joblib changed or went missing since it was written"
    )
    store.write({"not": "an outcome"}, key="k-other")
    assert distrust_reason(store, "k-other", repo) == "its stored result is not a stage outcome"


def test_stage_paths_come_from_the_projects_dvc_yaml() -> None:
    assert load_stage_paths(PROJECT) == StagePaths(
        raw=Path("data/raw/iris.csv"),
        train=Path("data/processed/train.csv"),
        test=Path("data/processed/test.csv"),
        model=Path("models/model.joblib"),
        metrics=Path("reports/metrics.json"),
    )


@pytest.mark.parametrize(
    ("dvc_yaml", "message"),
    [
        pytest.param(None, "{f}: not found, so the stage paths are unknown", id="no-dvc-yaml"),
        pytest.param("stages: {}\n", "{f}: no `vars: - paths:` block naming the stage files", id="no-vars"),
        pytest.param(
            "vars:\n  - params.yaml\n  - paths: [a]\n",
            "{f}: `vars: - paths:` must be a mapping of names to files",
            id="not-a-mapping",
        ),
        pytest.param(
            "vars:\n  - paths:\n      raw: r\n      train: t\n      test: s\n      model: m\n",
            "{f}: `paths.metrics` is missing or not a file path",
            id="missing-key",
        ),
    ],
)
def test_stage_paths_errors_are_one_line(tmp_path: Path, dvc_yaml: str | None, message: str) -> None:
    if dvc_yaml is not None:
        (tmp_path / "dvc.yaml").write_text(dvc_yaml)
    with pytest.raises(ConfigError) as caught:
        load_stage_paths(tmp_path)
    assert caught.value.message == message.format(f=tmp_path / "dvc.yaml")
