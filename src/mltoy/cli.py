"""`python -m mltoy.cli prepare|train|evaluate`: the commands `dvc.yaml` runs.

Errors are one line on stderr with exit code 1 (2 for bad usage, from argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mltoy.data import DataError
from mltoy.params import ParamsError, load_params
from mltoy.pipeline import StageError, stage_evaluate, stage_prepare, stage_train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mltoy.cli", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)

    prepare = sub.add_parser("prepare", help="split raw data into train and test CSVs")
    prepare.add_argument("--raw", type=Path, required=True)
    prepare.add_argument("--train", type=Path, required=True)
    prepare.add_argument("--test", type=Path, required=True)

    train = sub.add_parser("train", help="fit the model")
    train.add_argument("--train", type=Path, required=True)
    train.add_argument("--model", type=Path, required=True)

    evaluate = sub.add_parser("evaluate", help="score the model, write metrics JSON")
    evaluate.add_argument("--test", type=Path, required=True)
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--metrics", type=Path, required=True)

    for stage in (prepare, train, evaluate):
        stage.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        params = load_params(args.params)
        if args.stage == "prepare":
            result: dict[str, float] | dict[str, int] = stage_prepare(args.raw, args.train, args.test, params)
        elif args.stage == "train":
            result = stage_train(args.train, args.model, params)
        else:
            result = stage_evaluate(args.test, args.model, args.metrics, params)
    except (ParamsError, StageError, DataError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(f"{args.stage}: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
