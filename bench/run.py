"""`make bench`: every row of the performance table, in one run, written with the date into
docs/benchmarks.md (between the `bench:begin`/`bench:end` markers) with a profile of a no-op run-a.

    .venv/bin/python bench/run.py            # ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # fewer rounds (or BENCH_QUICK=1), ~5 minutes

Each benchmark runs as its own process and writes its samples to bench/results/ (git-ignored); this
script reads them back. Timings are asserted here (the targets), never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results"
DOC = PROJECT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"


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


def _newest(prefix: str, sleep: float | None = None) -> dict[str, Any]:
    """The newest result of a benchmark (of the per-stage one: with that branch sleep)."""
    for path in sorted(RESULTS.glob(f"{prefix}-*.json"), reverse=True):
        data: dict[str, Any] = json.loads(path.read_text())
        if sleep is None or data.get("branch_sleep_s") == sleep:
            return data
    raise SystemExit(f"no {prefix} results in {RESULTS}")


def _server_cpu(overhead: dict[str, Any], label: str) -> str:
    """The server process's CPU time to healthy (load disturbs it far less than the wall clock)."""
    cpu = overhead.get("server_cpu_s", {}).get(label)
    return f"server CPU {cpu:.2f} s" if cpu is not None else ""


def _verdict(value: float, target: float, unit: str = "") -> str:
    return f"{value:.2f}{unit} — {'met' if value <= target else 'missed'}"


def _section(
    overhead: dict[str, Any],
    wide2: dict[str, Any],
    wide10: dict[str, Any],
    sweep: dict[str, Any],
    quick: bool,
    run_b: dict[str, Any] | None = None,
) -> str:
    m = overhead["medians_s"]
    load = overhead["machine"]["load_before"][0]
    versions = ", ".join(f"{k} {v}" for k, v in overhead["versions"].items())

    def wide(data: dict[str, Any]) -> tuple[float, float, float]:
        med = data["medians_s"]
        per_stage, repro = med["wide: dvcflow run-a --per-stage --jobs 4"], med["wide: dvc repro"]
        return per_stage, repro, per_stage / repro

    w2, w10 = wide(wide2), wide(wide10)
    trials, queue = sweep["median_s"]["dvcflow sweep"], sweep["median_s"]["dvc exp queue"]
    rows = [
        (
            "no-op `dvcflow run-a`, server up ÷ no-op `dvc repro`",
            f"{m['dvcflow run-a']:.2f} s ÷ {m['dvc repro']:.2f} s",
            _verdict(m["dvcflow run-a"] / m["dvc repro"], 2.5),
            "≤ 2.5",
        ),
        (
            "wide pipeline, 4 branches x 2 s: `run-a --per-stage --jobs 4` ÷ `dvc repro`",
            f"{w2[0]:.2f} s ÷ {w2[1]:.2f} s",
            _verdict(w2[2], 0.45),
            "≤ 0.45",
        ),
        (
            "the same with 10 s branches",
            f"{w10[0]:.2f} s ÷ {w10[1]:.2f} s",
            _verdict(w10[2], 0.32),
            "≤ 0.32",
        ),
        (
            "four demo trials: `dvcflow sweep -j 2` ÷ `dvc exp run --queue` + `--run-all -j 2`",
            f"{trials:.2f} s ÷ {queue:.2f} s",
            _verdict(trials / queue, 0.8),
            "≤ 0.8",
        ),
        (
            "`dvcflow server start` on an existing database",
            _server_cpu(overhead, "server start, existing database"),
            _verdict(m["server start, existing database"], 4.0, " s"),
            "≤ 4 s",
        ),
        (
            "`dvcflow server start`, first ever after `make setup` (a template copy)",
            _server_cpu(overhead, "server start, first ever after make setup (template copy)"),
            _verdict(m["server start, first ever after make setup (template copy)"], 8.0, " s"),
            "≤ 8 s",
        ),
        (
            "`dvcflow server start`, first ever with no template at all (Prefect's migrations)",
            _server_cpu(overhead, "server start, first ever, no template at all (migrations)"),
            _verdict(m["server start, first ever, no template at all (migrations)"], 8.0, " s"),
            "≤ 8 s",
        ),
        (
            "`make setup`'s template preparation (once per user and Prefect version)",
            "",
            f"{m['make setup: prepare the template database (once per Prefect version)']:.2f} s",
            "",
        ),
        (
            "`dvcflow --help` ÷ `dvc --help`",
            f"{m['dvcflow --help']:.2f} s ÷ {m['dvc --help']:.2f} s",
            _verdict(m["dvcflow --help"] / m["dvc --help"], 1.0),
            "≤ 1.0",
        ),
    ]
    if run_b is not None:
        runs = run_b["median_s"]
        rows.insert(
            3,
            (
                "chain of 50 stages, no change: `dvcflow run-b` ÷ `dvcflow run-a`",
                f"{runs['dvcflow run-b']:.2f} s ÷ {runs['dvcflow run-a']:.2f} s",
                _verdict(run_b["run_b_over_run_a"], 1.0),
                "≤ 1.0",
            ),
        )
    off, help_warm = (
        m.get("dvcflow run-a, warm starter off"),
        m.get("dvcflow --help, server up (warm starter)"),
    )
    if off is not None:  # results from before the warm starter lack them
        warm_rows = [
            (
                "no-op `dvcflow run-a`, warm starter off (`DVCFLOW_WARM=0`) ÷ no-op `dvc repro`",
                f"{off:.2f} s ÷ {m['dvc repro']:.2f} s",
                f"{off / m['dvc repro']:.2f}",
                "",
            ),
        ]
        if help_warm is not None:
            warm_rows.append(
                (
                    "`dvcflow --help`, server up (warm starter) ÷ `dvc --help`",
                    f"{help_warm:.2f} s ÷ {m['dvc --help']:.2f} s",
                    f"{help_warm / m['dvc --help']:.2f}",
                    "",
                )
            )
        rows[1:1] = warm_rows
    lines = [
        BEGIN,
        f"## Fixed costs and parallel stages (`make bench{' --quick' if quick else ''}`, "
        f"{overhead['when'].replace('T', ' ')[:16]} UTC)",
        "",
        f"{overhead['machine']['cpus']} CPUs, load average {load:.1f} at the start, {versions}; medians of "
        f"{overhead['repeat']} interleaved rounds (wide 2 s: {wide2['repeat']}, "
        f"wide 10 s: {wide10['repeat']}, sweep: {sweep['repeat']}). Other work on the machine slows every "
        "command of a round alike, "
        "so the ratios are the figures to compare; absolute seconds (the server rows) are only meaningful "
        "on an idle machine.",
        "",
        "| what | measured | ratio or time | target |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {what} | {measured} | {ratio} | {target} |" for what, measured, ratio, target in rows),
        "",
        "### Where a no-op `dvcflow run-a` spends its time",
        "",
        "Sampled every 2 ms by `bench/profile_run_a.py` (median seconds per slice; a lazy import inside the",
        "flow counts as an import), in one process: what a run costs with the warm starter off; served by",
        "it, the imports are already done in the forked child:",
        "",
        _profile_table(overhead["run_a_profile_s"]),
        END,
    ]
    return "\n".join(lines)


def _profile_table(slices: dict[str, float]) -> str:
    total = slices["total (wall clock)"]
    lines = ["| slice | seconds | share |", "| --- | ---: | ---: |"]
    for label, seconds in sorted(slices.items(), key=lambda item: -item[1]):
        if label != "total (wall clock)" and seconds >= 0.005:
            lines.append(f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    lines.append(f"| **total (wall clock)** | **{total:.2f}** | 100 % |")
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


SEARCH_BEGIN = "<!-- bench-search:begin (written by `make bench`) -->"
SEARCH_END = "<!-- bench-search:end -->"


def _search_section(render_only: bool, quick: bool, write: bool) -> None:
    """`dvcflow sweep --search` on Branin (bench/bench_search.py): its rows under markers of their own."""
    from bench.bench_search import rows

    if render_only:
        result = _newest("search")
    else:
        result = _bench("bench_search.py", "search", ["--repeat", "2" if quick else "3"])
    section = "\n".join(
        [
            SEARCH_BEGIN,
            f"## `dvcflow sweep --search` on Branin (`bench/bench_search.py`, {result['when'][:8]})",
            "",
            "| what | measured | ratio: median (lowest-highest) | rounds | target |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows(result),
            SEARCH_END,
        ]
    )
    print(section)
    if write:
        text = DOC.read_text(encoding="utf-8")
        if SEARCH_BEGIN in text and SEARCH_END in text:
            head, rest = text.split(SEARCH_BEGIN, 1)
            text = head + section + rest.split(SEARCH_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOC.write_text(text, encoding="utf-8")


RESOURCES_BEGIN = "<!-- bench-resources:begin (written by `make bench`) -->"
RESOURCES_END = "<!-- bench-resources:end -->"


def _resources_section(render_only: bool, quick: bool, write: bool) -> None:
    """Resource-aware scheduling (bench/bench_resources.py): its rows under markers of their own."""
    from bench.bench_resources import rows

    if render_only:
        result = _newest("resources")
    else:
        result = _bench("bench_resources.py", "resources", ["--repeat", "2" if quick else "5"])
    section = "\n".join(
        [
            RESOURCES_BEGIN,
            f"## Stages that need a GPU (`bench/bench_resources.py`, {result['when'][:8]})",
            "",
            "| what | measured | ratio: median (lowest-highest) | rounds | target |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows(result),
            RESOURCES_END,
        ]
    )
    print(section)
    if write:
        text = DOC.read_text(encoding="utf-8")
        if RESOURCES_BEGIN in text and RESOURCES_END in text:
            head, rest = text.split(RESOURCES_BEGIN, 1)
            text = head + section + rest.split(RESOURCES_END, 1)[1]
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
    if options.render_only:
        overhead, wide2, wide10 = _newest("overhead"), _newest("per_stage", 2.0), _newest("per_stage", 10.0)
        write_doc(_section(overhead, wide2, wide10, _newest("sweep"), quick=False, run_b=_newest("run_b")))
        return 0
    overhead = _bench("bench_overhead.py", "overhead", ["--repeat", "2" if quick else "5"])
    wide2 = _bench("bench_per_stage.py", "per_stage", ["--repeat", "1" if quick else "3", "--sleep", "2"])
    wide10 = _bench("bench_per_stage.py", "per_stage", ["--repeat", "1", "--sleep", "10"])
    sweep = _bench("bench_sweep.py", "sweep", ["--repeat", "2" if quick else "3"])
    run_b = _bench("bench_run_b.py", "run_b", ["--repeat", "2" if quick else "3"])
    if not quick:
        _bench("bench_watchdog.py", "watchdog", ["--repeat", "10", "--kills", "2"])
    section = _section(overhead, wide2, wide10, sweep, quick, run_b)
    print(section)
    if not options.no_doc:
        write_doc(section)
        print(f"wrote {DOC.relative_to(PROJECT)}")
    _search_section(options.render_only, quick, write=not options.no_doc)
    _resources_section(options.render_only, quick, write=not options.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
