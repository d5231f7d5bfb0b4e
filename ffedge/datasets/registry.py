"""The registry of dataset kinds: each loader module registers the dataset names, or the path prefix, it loads.

- a named dataset (``mnist``): :func:`register_dataset` with ``load(name, directory, download) -> Dataset``,
  where ``directory`` is ``DATA_DIR/<name>`` (None for a dataset not stored there, e.g. the embedded one);
- a path kind (``folder:PATH``): :func:`register_path_kind` with ``load(path, image_size) -> Dataset``.

:func:`ffedge.datasets.load_dataset` dispatches through it, its error messages and the CLI help list it
(:func:`dataset_choices`). Names are listed in registration order, which is the import order of the loader
modules in ``ffedge/datasets/__init__.py``: a new dataset is a loader module that registers itself, imported there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from ffedge.datasets.base import Dataset

NamedLoader = Callable[[str, "Path | None", bool], Dataset]
PathLoader = Callable[[Path, "tuple[int, int] | None"], Dataset]


class NamedDataset(NamedTuple):
    """A registered dataset name: its loader, a note for help texts, and whether it lives in the data folder."""

    name: str
    load: NamedLoader
    note: str = ""
    stored: bool = True


class PathKind(NamedTuple):
    """A registered path prefix (``folder:``): its loader (which resizes to ``image_size`` itself) and a note."""

    prefix: str
    load: PathLoader
    note: str = ""


_NAMED: dict[str, NamedDataset] = {}
_PATHS: dict[str, PathKind] = {}


def register_dataset(name: str, load: NamedLoader, note: str = "", stored: bool = True) -> None:
    """Make ``load_dataset(name)`` call ``load`` (lowercase name with '-', unique; ``stored``: in ``DATA_DIR/<name>``)."""
    if not name or name != name.strip().lower() or "_" in name or ":" in name:
        raise ValueError(f"a dataset needs a lowercase name without '_' or ':', got {name!r}")
    if name in _NAMED:
        raise ValueError(f"dataset {name!r} is registered twice")
    _NAMED[name] = NamedDataset(name, load, note, stored)


def register_path_kind(prefix: str, load: PathLoader, note: str = "") -> None:
    """Make ``load_dataset(prefix + PATH)`` call ``load(Path(PATH), image_size)`` (prefix lowercase, ending in ':')."""
    if not prefix.endswith(":") or prefix != prefix.strip().lower() or len(prefix) < 2:
        raise ValueError(f"a dataset path prefix is lowercase and ends with ':', got {prefix!r}")
    if prefix in _PATHS:
        raise ValueError(f"dataset prefix {prefix!r} is registered twice")
    _PATHS[prefix] = PathKind(prefix, load, note)


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_NAMED)


def dataset_prefixes() -> tuple[str, ...]:
    """The registered path prefixes (``folder:``, ...), in registration order."""
    return tuple(_PATHS)


def named_dataset(name: str) -> NamedDataset | None:
    """The registered dataset ``name`` (normalized by the caller), or None."""
    return _NAMED.get(name)


def path_kind(spec: str) -> PathKind | None:
    """The registered path kind whose prefix ``spec`` starts with (any case), or None."""
    low = spec.lower()
    return next((k for p, k in _PATHS.items() if low.startswith(p)), None)


def dataset_choices(notes: bool = False) -> list[str]:
    """Every accepted spec as help texts and errors list them: the names, then ``PREFIX:PATH``; ``notes`` adds each note."""

    def shown(text: str, note: str) -> str:
        return f"{text} ({note})" if notes and note else text

    return [shown(d.name, d.note) for d in _NAMED.values()] + [
        shown(k.prefix + "PATH", k.note) for k in _PATHS.values()
    ]
