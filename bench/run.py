"""`make bench`: every row of the performance table, in one run, written with the date into
docs/benchmarks.md (between the `bench:begin`/`bench:end` markers), with the profiles of a no-op run-a.

    .venv/bin/python bench/run.py            # ~25 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # fewer rounds (or BENCH_QUICK=1): no row claims a target

Each benchmark runs as its own process and writes its samples to bench/results/ (git-ignored); this
script reads them back. A row says "met" or "missed" only from at least `MIN_ROUNDS_FOR_A_CLAIM`
interleaved rounds whose order was rotated; it shows the median, the spread (lowest-highest) and the
number of rounds. A ratio is taken round by round (a command against its baseline of the same round,
under the same load), then its median. Timings are judged here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from bench.profile_run_a import TOTAL  # noqa: E402
from bench.timing import MIN_ROUNDS_FOR_A_CLAIM, paired_ratios  # noqa: E402

RESULTS = HERE / "results"
DOC = PROJECT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"
ROUNDS, QUICK_ROUNDS = 5, 2


def _bench(script: str, prefix: str, args: list[str]) -> dict[str, Any]:
    """Run one benchmark; its newest result file written since it started."""
    began = time.time()
    print(f"== {script} {' '.join(args)}", flush=True)
    code = subprocess.run([sys.executable, str(HERE / script), *args]).returncode
    written = [p for p in RESULTS.glob(f"{prefix}-*.json") if p.stat().st_mtime >= began - 1]
    if code != 0 or not written:
        raise SystemExit(f"{script} failed (exit {code})")
    data: dict[str, Any] = json.loads(max(written, key=lambda p: p.stat().st_mtime).read_text())
    return data


def _newest(prefix: str) -> dict[str, Any]:
    """The newest result of a benchmark whose files begin with `prefix`."""
    paths = sorted(RESULTS.glob(f"{prefix}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not paths:
        raise SystemExit(f"no {prefix} results in {RESULTS}")
    data: dict[str, Any] = json.loads(paths[0].read_text())
    return data


def _wide_prefix(kind: str, seconds: float) -> str:
    return f"per_stage-{kind}-{seconds:g}s"


def _claim(values: list[float], target: float | None, unit: str = "") -> str:
    """`median (lowest-highest)`, and whether it meets `target` when the rounds are enough to say."""
    median = statistics.median(values)
    text = f"{median:.2f}{unit} ({min(values):.2f}-{max(values):.2f})"
    if target is None:
        return text
    if len(values) < MIN_ROUNDS_FOR_A_CLAIM:
        return f"{text} — indicative"
    return f"{text} — {'met' if median <= target else 'missed'}"


def _row(
    what: str, measured: str, values: list[float], target: float | None, unit: str = "", note: str = ""
) -> str:
    goal = "" if target is None else f"≤ {target:g}{unit}"
    return f"| {what} | {measured} | {_claim(values, target, unit)} | {len(values)} | {goal}{note} |"


def _pair(samples: dict[str, list[float]], a: str, b: str) -> tuple[str, list[float]]:
    """Medians `a s ÷ b s`, and the round-by-round ratios a ÷ b."""
    measured = f"{statistics.median(samples[a]):.2f} s ÷ {statistics.median(samples[b]):.2f} s"
    return measured, paired_ratios(samples[a], samples[b])


def _section(results: dict[str, dict[str, Any]], quick: bool) -> str:
    overhead = results["overhead"]
    m = overhead["samples_s"]
    load = overhead["machine"]["load_before"][0]
    cpus = overhead["machine"]["cpus"]
    versions = ", ".join(f"{k} {v}" for k, v in overhead["versions"].items())
    user = "dvcflow run-a, user's PREFECT_HOME and PREFECT_LOGGING_LEVEL"
    rows = [
        _row(
            "no-op `dvcflow run-a`, served by the warm starter ÷ no-op `dvc repro`",
            *_pair(m, "dvcflow run-a", "dvc repro"),
            1.3,
        ),
        _row(
            "the same, with the user's own `PREFECT_HOME` and `PREFECT_LOGGING_LEVEL=WARNING` (served)",
            *_pair(m, user, "dvc repro"),
            1.3,
        ),
        _row(
            "the same, warm starter off (`DVCFLOW_WARM=0`)",
            *_pair(m, "dvcflow run-a, warm starter off", "dvc repro"),
            2.5,
        ),
        _row(
            "`dvcflow --help`, server up (warm starter) ÷ `dvc --help`",
            *_pair(m, "dvcflow --help, server up (warm starter)", "dvc --help, server up"),
            None,
        ),
        _row("`dvcflow --help` ÷ `dvc --help`", *_pair(m, "dvcflow --help", "dvc --help"), 1.0),
    ]
    for key, what, target in (
        ("wide2", "wide pipeline, 4 branches sleeping 2 s: `run-a --per-stage --jobs 4` ÷ `dvc repro`", 0.30),
        ("wide10", "the same with 10 s branches", 0.32),
        ("cpu2", "4 branches each burning 2 s of CPU, the same", None),
    ):
        data = results[key]
        note = ""
        if key == "cpu2":
            note = f"ideal {data['ideal_ratio']:.2f} on {data['machine']['cpus']} cores"
        measured, ratios = _pair(
            data["samples_s"], "wide: dvcflow run-a --per-stage --jobs 4", "wide: dvc repro"
        )
        rows.append(_row(what, measured, ratios, target, note=note))
    run_b = results["run_b"]["samples_s"]
    rows.append(
        _row(
            "chain of 50 stages, no change: `dvcflow run-b` ÷ `dvcflow run-a`",
            *_pair(run_b, "dvcflow run-b", "dvcflow run-a"),
            1.0,
        )
    )
    sweep = results["sweep"]["samples_s"]
    rows.append(
        _row(
            "four demo trials: `dvcflow sweep -j 2` ÷ `dvc exp run --queue` + `--run-all -j 2`",
            *_pair(sweep, "dvcflow sweep", "dvc exp queue"),
            0.8,
        )
    )
    cpu = overhead.get("server_cpu_s", {})
    for label, what, target in (
        ("server start, existing database", "`dvcflow server start` on an existing database", 4.0),
        (
            "server start, first ever after make setup (template copy)",
            "`dvcflow server start`, first ever after `make setup` (a template copy)",
            8.0,
        ),
        (
            "server start, first ever, no template at all (migrations)",
            "`dvcflow server start`, first ever with no template at all (Prefect's migrations)",
            8.0,
        ),
        (
            "make setup: prepare the template database (once per Prefect version)",
            "`make setup`'s template preparation (once per user and Prefect version)",
            None,
        ),
    ):
        measured = f"server CPU {cpu[label]:.2f} s" if label in cpu else ""
        rows.append(_row(what, measured, m[label], target, unit=" s"))
    profiles = overhead["run_a_profiles_s"]
    lines = [
        BEGIN,
        f"## Fixed costs and parallel stages (`make bench{' --quick' if quick else ''}`, "
        f"{overhead['when'].replace('T', ' ')[:16]} UTC)",
        "",
        f"{cpus} CPUs, load average {load:.1f} at the start, {versions}. Every row pairs a command with its "
        "baseline in each round, the rounds interleaved and their order rotated (each command first in "
        "turn); a ratio is the median of the round-by-round ratios, shown with the lowest and highest. "
        f"A row claims its target (met or missed) from {MIN_ROUNDS_FOR_A_CLAIM} rounds or more; fewer "
        "(`--quick`) are only indicative. Other work on the machine slows every command of a round alike, "
        "so the ratios are the figures to compare; absolute seconds (the server rows) are only meaningful "
        "on an idle machine.",
        "",
        "| what | medians | ratio or time: median (lowest-highest) | rounds | target |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "### Where a no-op `dvcflow run-a` spends its time",
        "",
        "Sampled every 2 ms by `bench/profile_run_a.py` (median seconds per slice over "
        f"{overhead.get('profile_rounds', 3)} runs; a lazy import counts as an import). In its own "
        "process, the interpreter's start-up and exit are measured from outside; served by the warm "
        "starter, the client's start-up and hand-over (until the forked child begins the command) and "
        "the client's exit after its child's are:",
        "",
        _profile_table(profiles),
        END,
    ]
    return "\n".join(lines)


def _profile_table(profiles: dict[str, dict[str, float]]) -> str:
    names = list(profiles)
    labels = sorted(
        {label for slices in profiles.values() for label in slices if label != TOTAL},
        key=lambda label: -max(slices.get(label, 0.0) for slices in profiles.values()),
    )
    lines = [f"| slice | {' | '.join(names)} |", "| --- |" + " ---: |" * len(names)]
    for label in labels:
        if max(slices.get(label, 0.0) for slices in profiles.values()) < 0.005:
            continue
        cells = [f"{profiles[name].get(label, 0.0):.2f}" for name in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append(f"| **{TOTAL}** | {' | '.join(f'**{profiles[name][TOTAL]:.2f}**' for name in names)} |")
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:  # first time: after the introduction, before the first section
        head, sep, rest = text.partition("\n## ")
        text = head.rstrip("\n") + "\n\n" + section + "\n" + (sep + rest if sep else "")
    DOC.write_text(text, encoding="utf-8")


# Benchmarks whose rows stand under markers of their own: (result prefix, script, heading, full rounds).
OWN_SECTIONS = (
    ("search", "bench_search.py", "`dvcflow sweep --search` on Branin", 3),
    ("resources", "bench_resources.py", "Stages that need a GPU", 5),
    ("dask_clones", "bench_dask_clones.py", "Stages in clones on Dask workers", 5),
)
QUICK_ARGS = {"search": ["--prune-rounds", "2", "--e2e-seeds", "2"]}  # besides `--repeat 2`


def _own_section(
    prefix: str, script: str, heading: str, rounds: int, *, render_only: bool, quick: bool, write: bool
) -> None:
    """One benchmark's rows under `<!-- bench-PREFIX:begin -->` markers, rewritten in place (appended the
    first time); its `rows(result)` formats them."""
    import importlib

    rows = importlib.import_module(f"bench.{script.removesuffix('.py')}").rows
    begin = f"<!-- bench-{prefix.replace('_', '-')}:begin (written by `make bench`) -->"
    end = f"<!-- bench-{prefix.replace('_', '-')}:end -->"
    if render_only:
        result = _newest(prefix)
    else:
        args = ["--repeat", "2", *QUICK_ARGS.get(prefix, [])] if quick else ["--repeat", str(rounds)]
        result = _bench(script, prefix, args)
    section = "\n".join(
        [
            begin,
            f"## {heading} (`bench/{script}`, {result['when'].replace('-', '')[:8]})",
            "",
            "| what | measured | ratio: median (lowest-highest) | rounds | target |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows(result),
            end,
        ]
    )
    print(section)
    if write:
        text = DOC.read_text(encoding="utf-8")
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOC.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (also BENCH_QUICK=1)")
    parser.add_argument("--no-doc", action="store_true", help="print, but do not rewrite docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true", help="rewrite the doc from the newest results")
    options = parser.parse_args()
    quick = options.quick or os.environ.get("BENCH_QUICK") == "1"
    rounds = str(QUICK_ROUNDS if quick else ROUNDS)
    benches = {  # key: (script, result prefix, arguments)
        "overhead": ("bench_overhead.py", "overhead", ["--repeat", rounds]),
        "wide2": ("bench_per_stage.py", _wide_prefix("sleep", 2), ["--repeat", rounds, "--sleep", "2"]),
        "wide10": (
            "bench_per_stage.py",
            _wide_prefix("sleep", 10),
            ["--repeat", rounds, "--sleep", "10", "--no-plain", "--no-chain"],
        ),
        "cpu2": (
            "bench_per_stage.py",
            _wide_prefix("cpu", 2),
            ["--repeat", rounds, "--sleep", "2", "--cpu", "--no-plain", "--no-chain"],
        ),
        "run_b": ("bench_run_b.py", "run_b", ["--repeat", rounds]),
        "sweep": ("bench_sweep.py", "sweep", ["--repeat", rounds]),
    }
    if options.render_only:
        results = {key: _newest(prefix) for key, (_, prefix, _) in benches.items()}
    else:
        results = {key: _bench(script, prefix, args) for key, (script, prefix, args) in benches.items()}
        if not quick:
            _bench("bench_watchdog.py", "watchdog", ["--repeat", "10", "--kills", "2"])
    section = _section(results, quick)
    print(section)
    if not options.no_doc:
        write_doc(section)
        print(f"wrote {DOC.relative_to(PROJECT)}")
    for prefix, script, heading, full_rounds in OWN_SECTIONS:
        _own_section(
            prefix,
            script,
            heading,
            full_rounds,
            render_only=options.render_only,
            quick=quick,
            write=not options.no_doc,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
