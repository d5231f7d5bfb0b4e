"""Files of the standard datasets: where they come from, their checksums, fetching them.

``SOURCES`` is the single table of canonical files and their published md5s.
Tests (or a user with a private mirror) replace an entry to change URLs or sums.
Downloads go to a temp file, are verified, then renamed: a partial or corrupt
download never lands under its real name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffedge.errors import FFEdgeError
from ffedge.fsutil import atomic_path

TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteSource:
    """The files of one dataset: name -> md5, all under ``base_url``."""

    base_url: str
    files: dict[str, str]


SOURCES: dict[str, RemoteSource] = {
    "mnist": RemoteSource(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": RemoteSource(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83fd310",
        },
    ),
    "cifar10": RemoteSource(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
    ),
    "cifar100": RemoteSource(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"},
    ),
}


class _NetworkError(Exception):
    """Fetching failed for a network reason (offline, DNS, HTTP error, timeout)."""


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    import hashlib  # here, not at import: hashlib loads OpenSSL (~3.5 MB), needed only to check a download

    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(dataset: str, path: Path, expected_md5: str) -> None:
    """Raise FFEdgeError if ``path`` does not have the published md5."""
    got = md5_file(path)
    if got != expected_md5:
        raise FFEdgeError(
            f"{dataset}: {path} has md5 {got}, expected {expected_md5} "
            f"(corrupt or incomplete file?): delete it to download it again, or replace it with the original"
        )


def _progress():
    """A transient rich progress bar on stderr (silent when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def urlopen(url: str, timeout: float) -> Any:
    """urllib's ``urlopen``, imported on first use: ``urllib.request`` and ``http.client`` load ``ssl``,
    about 6 MB of resident memory that every ``ffedge`` command would carry (the CLI imports this module
    for ``--dataset`` help). Tests replace this function to serve files."""
    from urllib.request import urlopen as _urlopen

    return _urlopen(url, timeout=timeout)


def _read_url_into(url: str, tmp: Path, name: str) -> str:
    """Stream ``url`` into ``tmp`` and return its md5; network failures raise _NetworkError."""
    import hashlib
    import http.client
    from urllib.error import URLError

    h = hashlib.md5(usedforsecurity=False)
    try:
        with urlopen(url, timeout=TIMEOUT_S) as resp, open(tmp, "wb") as out, _progress() as bar:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            task = bar.add_task(f"downloading {name}", total=int(total) if total else None)
            while block := resp.read(_CHUNK):
                out.write(block)
                h.update(block)
                bar.advance(task, len(block))
    except (URLError, http.client.HTTPException, TimeoutError, ConnectionError, ValueError) as e:
        raise _NetworkError(" ".join(str(getattr(e, "reason", e)).split())) from e  # one line
    return h.hexdigest()


def download_file(dataset: str, url: str, dest: Path, expected_md5: str) -> None:
    """Download ``url`` to ``dest`` atomically, keeping it only if its md5 matches."""
    with atomic_path(dest) as tmp:
        got = _read_url_into(url, tmp, dest.name)
        if got != expected_md5:
            raise FFEdgeError(
                f"{dataset}: download of {url} has md5 {got}, expected {expected_md5}: "
                f"try again later, or put the original {dest.name} into {dest.parent}"
            )


def _where(dataset: str, directory: Path, names: list[str]) -> str:
    """The one-line fix for missing files: which files go into which folder."""
    return f"put {', '.join(names)} into {directory} (or point --data-dir / FFEDGE_DATA at a folder holding {dataset}/)"


def ensure_files(dataset: str, directory: Path, download: bool) -> dict[str, Path]:
    """Paths of all files of ``dataset`` in ``directory``, downloading missing ones if allowed.

    Every file, present or fetched, is checked against its published md5.
    """
    source = SOURCES[dataset]
    paths = {name: directory / name for name in source.files}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing and not download:
        raise FFEdgeError(
            f"{dataset}: missing {', '.join(missing)} and downloading is off: {_where(dataset, directory, missing)}"
        )
    if missing:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FFEdgeError(f"{dataset}: cannot create data directory {directory}: {e.strerror or e}") from e
    for i, name in enumerate(missing):
        try:
            download_file(dataset, source.base_url + name, paths[name], source.files[name])
        except _NetworkError as e:
            where = _where(dataset, directory, missing[i:])
            raise FFEdgeError(f"{dataset}: cannot download {source.base_url + name} (offline? {e}): {where}") from e
        except OSError as e:
            raise FFEdgeError(f"{dataset}: cannot write {paths[name]}: {e.strerror or e}") from e
        print(f"{dataset}: downloaded {name} into {directory}", file=sys.stderr)
    for name, p in paths.items():
        if name not in missing:  # fresh downloads were verified before the rename
            verify_file(dataset, p, source.files[name])
    return paths
