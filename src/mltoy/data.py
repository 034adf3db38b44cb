"""The raw iris CSV, materialised from scikit-learn's bundled copy and checked against its `.dvc` file.

A fresh clone has `data/raw/iris.csv.dvc` but not the CSV (git ignores it, and there is no remote):
`python -m mltoy.data` writes it byte-for-byte the same every time, then verifies the md5 DVC recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml

from mltoy._atomic import atomic_path

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
TARGET = "species"


class DataError(RuntimeError):
    """Raw data is missing or does not match what DVC tracks."""


def iris_csv_text() -> str:
    """The iris table as CSV text, formatted deterministically (no pandas float repr involved)."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    lines = [",".join((*FEATURES, TARGET))]
    for row, label in zip(bunch.data, bunch.target, strict=True):
        values = ",".join(f"{value:.1f}" for value in row)
        lines.append(f"{values},{bunch.target_names[label]}")
    return "\n".join(lines) + "\n"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tracked_md5(dvc_file: Path) -> str:
    """The md5 a single-output `.dvc` file records."""
    try:
        meta = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except FileNotFoundError:
        raise DataError(f"{dvc_file}: not found") from None
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        raise DataError(f"{dvc_file}: not a valid .dvc file (no outs[0].md5)") from None


def materialize_iris(target: Path, dvc_file: Path | None = None) -> bool:
    """Write the raw CSV if missing; verify it against `dvc_file`. Returns True if it wrote the file."""
    wrote = False
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.write_text(iris_csv_text(), encoding="utf-8")
        wrote = True
    if dvc_file is not None:
        expected, actual = tracked_md5(dvc_file), file_md5(target)
        if expected != actual:
            raise DataError(f"{target}: md5 {actual} does not match {expected} recorded in {dvc_file}")
    return wrote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mltoy.data", description="Materialise and verify data/raw/iris.csv."
    )
    parser.add_argument("--out", type=Path, default=Path("data/raw/iris.csv"))
    parser.add_argument("--dvc-file", type=Path, default=None, help="default: OUT.dvc if present")
    args = parser.parse_args(argv)
    dvc_file = args.dvc_file or Path(f"{args.out}.dvc")
    try:
        wrote = materialize_iris(args.out, dvc_file if dvc_file.exists() else None)
    except DataError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    state = "written" if wrote else "present"
    checked = ", md5 matches its .dvc file" if dvc_file.exists() else ""
    print(f"{args.out}: {state}{checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
