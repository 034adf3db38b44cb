"""`dvcflow --help` without Rich's Markdown parser and traceback renderer.

Typer formats help (and usage errors) in `typer.rich_utils`, which imports `rich.markdown` (markdown-it,
~35 ms) and `rich.traceback` (Pygments' syntax support, ~15 ms) when it is imported: a third of what
`--help` costs. dvcflow uses neither: its help is Rich markup, not Markdown (`rich_markup_mode`), and
Typer's pretty exceptions are off. While `typer.rich_utils` is imported, `Markdown` and `Traceback`
resolve to stand-ins that import the real class on first use, so the output is the same and a
command that does render Markdown or a traceback still gets the real thing.
"""

import importlib
import importlib.machinery
import sys
import types
from typing import Any

TARGET = "typer.rich_utils"
DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class _Deferred(type):
    """A class standing in for `module.name`: calling it or reading an attribute imports the real one."""

    def _real(cls) -> Any:
        return getattr(importlib.import_module(cls.__module__), cls.__name__)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls._real(), name)


def _stand_in(module: str, name: str) -> types.ModuleType:
    placeholder = types.ModuleType(module)
    setattr(placeholder, name, _Deferred(name, (), {"__module__": module}))
    return placeholder


class _Finder:
    """Finds `typer.rich_utils` as usual, then executes it with the stand-ins in `sys.modules`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _Loader(spec.loader.name, spec.loader.path)
        return spec


class _Loader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module: types.ModuleType) -> None:
        placed = {name: _stand_in(name, attr) for name, attr in DEFERRED.items() if name not in sys.modules}
        sys.modules.update(placed)
        try:
            super().exec_module(module)
        finally:
            for name, placeholder in placed.items():
                if sys.modules.get(name) is placeholder:
                    del sys.modules[name]


def install() -> None:
    """Before Typer imports `typer.rich_utils` (idempotent)."""
    if TARGET not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
