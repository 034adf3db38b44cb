"""The `dvcflow` command line: parse, call one library function, render. Nothing else lives here.

Modules that define commands do not use `from __future__ import annotations`: Typer reads every
command's signature to build `--help`, and string annotations would each be compiled and evaluated
there (~20 ms of a 0.2 s `dvcflow --help`; `tests/test_cli.py` keeps them out).
"""
