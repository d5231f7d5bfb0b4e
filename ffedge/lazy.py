"""Package attributes imported on first use, so a package's light modules stay light.

``ffedge.runtime`` re-exports the names of its onnxruntime-backed ``session`` module, and
``ffedge.finetuning`` those of its ``loop`` module, without importing them (and onnxruntime)
when only a numpy-only sibling module is wanted.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_names(
    package: dict[str, Any], source: str, names: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``names`` come from module ``source`` on first use.

    ``package`` is the package's ``globals()``: a name, once imported, is cached there.
    """
    wanted = frozenset(names)
    pkg_name = package["__name__"]

    def getattr_(name: str) -> Any:
        if name in wanted:
            value = getattr(importlib.import_module(source), name)
            package[name] = value
            return value
        raise AttributeError(f"module {pkg_name!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*package, *package.get("__all__", ()), *wanted})

    return getattr_, dir_
