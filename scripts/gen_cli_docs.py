"""Write docs/cli.md from the Typer app itself, so the reference cannot drift from the code.

    .venv/bin/python scripts/gen_cli_docs.py           # rewrite docs/cli.md (what `make docs` runs)
    .venv/bin/python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is stale

`tests/test_docs.py` runs the check as part of `make test`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TARGET = PROJECT / "docs" / "cli.md"
HEADER = (
    "<!-- Generated from the Typer app by scripts/gen_cli_docs.py: run `make docs`, never edit by hand. -->"
    "\n\n"
)


def render() -> str:
    """The whole page, as Typer's own `typer ... utils docs` would write it, plus our header."""
    os.environ.setdefault("COLUMNS", "100")
    import typer
    from typer.cli import get_docs_for_click

    from dvcflow.cli.app import EPILOG, app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="dvcflow")
    text = get_docs_for_click(obj=command, ctx=ctx, name="dvcflow", title="`dvcflow` command reference")
    text = text.replace(EPILOG, f"```text\n{EPILOG}\n```")  # keep the table's columns in Markdown
    return HEADER + text.rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if docs/cli.md is stale; write nothing")
    options = parser.parse_args()
    text = render()
    if options.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(PROJECT)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
