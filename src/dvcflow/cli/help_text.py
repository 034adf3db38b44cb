"""Commands' help from their docstrings, as paragraphs a terminal wraps, not lines the source wrapped.

Typer joins the lines of a docstring's first paragraph but keeps every single newline of the others, so a
docstring hard-wrapped at the source's 110 columns broke a sentence mid-line in `--help` ("With
--per-stage, each" / "stage is its own task"), and Rich read `[tool.dvcflow.stages]` as a markup tag and
dropped it. `unwrap_commands` gives every command of the app the help its docstring means: each paragraph
one line (Rich then wraps it at the terminal's width), a blank line between paragraphs, brackets shown as
written. dvcflow's help uses no Rich markup of its own.
"""

from __future__ import annotations

import inspect
import re

import typer

_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s")  # a line that starts an item keeps its own line


def unwrap(doc: str) -> str:
    """`doc` with the single newlines inside each paragraph made spaces, and `[` escaped for Rich."""
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not _LIST_ITEM.match(line):
                lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs).replace("[", "\\[")


def unwrap_commands(app: typer.Typer) -> None:
    """Set each command's help (unless given explicitly) to its unwrapped docstring, in `app` and its
    groups."""
    for command in app.registered_commands:
        doc = inspect.getdoc(command.callback) if command.callback else None
        if command.help is None and doc:
            command.help = unwrap(doc)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            unwrap_commands(group.typer_instance)
