"""The three stage functions. Each reads files, writes files atomically, and returns a small summary.

They are the single implementation behind both `python -m mltoy.cli` (what `dvc.yaml` runs) and direct
in-process calls (what an orchestrator may do instead).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltoy._atomic import atomic_path
from mltoy.data import FEATURES, TARGET
from mltoy.params import Params

if TYPE_CHECKING:
    import pandas as pd


class StageError(RuntimeError):
    """A stage cannot run on its inputs (missing file, wrong columns, unreadable model)."""


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        raise StageError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as err:
        raise StageError(f"{what} is not a readable CSV: {path} ({err})") from None
    missing = [col for col in (*FEATURES, TARGET) if col not in frame.columns]
    if missing:
        raise StageError(f"{what} {path} lacks column(s): {', '.join(missing)}")
    if frame.empty:
        raise StageError(f"{what} {path} has no rows")
    return frame


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def stage_prepare(raw_csv: Path, train_csv: Path, test_csv: Path, params: Params) -> dict[str, int]:
    """Split the raw table into stratified train and test sets."""
    from sklearn.model_selection import train_test_split

    frame = _read_csv(Path(raw_csv), "raw data")
    try:
        train, test = train_test_split(
            frame,
            test_size=params.split.test_size,
            random_state=params.split.random_state,
            stratify=frame[TARGET],
        )
    except ValueError as err:  # e.g. a test set too small to hold every class
        raise StageError(
            f"cannot split {raw_csv} with split.test_size={params.split.test_size}: {err}"
        ) from None
    _write_csv(train, Path(train_csv))
    _write_csv(test, Path(test_csv))
    return {"train_rows": len(train), "test_rows": len(test)}


# The model's bytes (and so its md5 in dvc.lock) must not depend on the machine's BLAS kernel: lbfgs stops
# wherever its tolerance is met, and the path there differs by kernel (coefficients differed by ~1e-4 across
# OPENBLAS_CORETYPE values). Newton-Cholesky converges quadratically to the unique optimum (kernels then
# differ by ~1e-14), and rounding to DECIMALS digits maps those to the same floats.
SOLVER = "newton-cholesky"
TOLERANCE = 1e-12
DECIMALS = 8


def stage_train(train_csv: Path, model_path: Path, params: Params) -> dict[str, int]:
    """Fit a logistic regression on the training set and save it with joblib, byte-reproducibly."""
    frame = _read_csv(Path(train_csv), "training data")  # bad input fails before scikit-learn loads
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        C=params.train.C,
        max_iter=params.train.max_iter,
        random_state=params.train.random_state,
        solver=SOLVER,
        tol=TOLERANCE,
    )
    try:
        model.fit(frame[list(FEATURES)], frame[TARGET])
    except ValueError as err:  # e.g. a single class, or non-numeric features
        raise StageError(f"cannot train on {train_csv}: {err}") from None
    model.coef_ = np.round(model.coef_, DECIMALS)
    model.intercept_ = np.round(model.intercept_, DECIMALS)
    with atomic_path(Path(model_path)) as tmp:
        joblib.dump(model, tmp)
    return {"train_rows": len(frame)}


def _load_model(model_path: Path) -> Any:
    import joblib

    if not model_path.exists():
        raise StageError(f"model not found: {model_path}")
    try:
        model = joblib.load(model_path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, OSError, AttributeError) as err:
        raise StageError(f"model file is corrupted or not a joblib model: {model_path} ({err})") from None
    if not hasattr(model, "predict"):
        raise StageError(f"model file holds a {type(model).__name__}, not a model: {model_path}")
    return model


def stage_evaluate(test_csv: Path, model_path: Path, metrics_path: Path, params: Params) -> dict[str, float]:
    """Score the model on the test set; write `accuracy` and `f1_<average>` as JSON."""
    from sklearn.metrics import accuracy_score, f1_score

    frame = _read_csv(Path(test_csv), "test data")
    model = _load_model(Path(model_path))
    predicted = model.predict(frame[list(FEATURES)])
    average = params.evaluate.average
    metrics = {
        "accuracy": float(accuracy_score(frame[TARGET], predicted)),
        f"f1_{average}": float(f1_score(frame[TARGET], predicted, average=average)),
    }
    with atomic_path(Path(metrics_path)) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
