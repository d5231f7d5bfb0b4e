"""Reading untrusted input files: regular files only, arrays bounded before they are allocated.

- :func:`open_regular` opens only regular files: a named pipe, socket, device or
  folder is refused with one line (opening a pipe for reading would wait forever).
- :func:`read_npy` / :class:`NpzArchive` read ``.npy`` and ``.npz`` without numpy's
  loader: the header is parsed first, and an array whose declared size exceeds
  :data:`MAX_ARRAY_BYTES` or the bytes actually present is refused before any
  memory is allocated. Object arrays are refused (nothing is ever unpickled).

Every malformed file raises :class:`~ffedge.errors.FFEdgeError`, never the
decoder's own exception.
"""

from __future__ import annotations

import lzma
import os
import stat
import struct
import sys
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ffedge.errors import FFEdgeError

MAX_ARRAY_BYTES = 4 * 1024**3
"""Largest array (decoded bytes) any input file may declare: 4 GiB."""

# What the stdlib and numpy decoders raise on malformed input (zipfile, gzip, tarfile, numpy's
# header parser, which tokenizes the header: TokenError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    SyntaxError,
    tokenize.TokenError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
)

_MAX_HEADER = 10_000  # numpy's own limit for .npy headers
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}


def printable(text: str, limit: int = 200) -> str:
    """The first line of a decoder's message, control characters escaped and cut to ``limit``.

    Such messages may quote bytes of the file they failed on.
    """
    lines = text.strip().splitlines()
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in lines[0]) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason(e: BaseException) -> str:
    """A decoder's exception as a short printable phrase (its type name when it has no message)."""
    return printable(str(e)) or type(e).__name__


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular(path: Path) -> os.stat_result:
    """``stat`` of ``path`` (links followed); FFEdgeError unless it is an existing regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FFEdgeError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise FFEdgeError(
            f"cannot read {path}: {reason(e) if not isinstance(e, OSError) else e.strerror or e}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise FFEdgeError(f"{path} is {_kind(st.st_mode)}, not a regular file: only regular files are read")
    return st


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for binary reading; anything else is refused before it is opened.

    The file is checked again after opening (non-blocking, so a pipe swapped in
    meanwhile cannot make the open wait), so the check cannot be raced.
    """
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise FFEdgeError(f"cannot read {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FFEdgeError(f"{path} is {_kind(mode)}, not a regular file: only regular files are read")
    return os.fdopen(fd, "rb")  # O_NONBLOCK does not affect reads of regular files


def read_upto(fp: BinaryIO, n: int, chunk: int = 1 << 24) -> bytearray:
    """Up to ``n`` bytes of ``fp`` (fewer only at its end), in chunks: memory grows with the bytes
    actually there, not with what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        block = fp.read(min(chunk, n - len(buf)))
        if not block:
            break
        buf += block
    return buf


def _header(fp: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, validated."""
    fmt = np.lib.format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the header is a Python literal: no "invalid escape" line on stderr
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
            else:
                raise FFEdgeError(
                    f"{where}: .npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)"
                )
    except DECODE_ERRORS as e:
        raise FFEdgeError(f"{where}: not a readable .npy array ({reason(e)})") from None
    if dtype.hasobject:
        raise FFEdgeError(f"{where}: object array (needs pickle, refused): store plain numeric or string arrays")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufUS" or dtype.itemsize == 0:
        raise FFEdgeError(f"{where}: unsupported array type {dtype}: store plain numbers (or strings for names)")
    if len(shape) > 32 or any(not isinstance(d, int) or d < 0 for d in shape):
        raise FFEdgeError(f"{where}: invalid array shape {shape!r} in the .npy header")
    return tuple(shape), bool(fortran), dtype


def read_npy(fp: BinaryIO, where: str, available: int) -> np.ndarray:
    """One .npy array from ``fp``, which holds ``available`` bytes from its current position.

    The declared size is checked against ``available`` and :data:`MAX_ARRAY_BYTES`
    before anything is allocated; a short read is a truncated file.
    """
    start = fp.tell()
    shape, fortran, dtype = _header(fp, where)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=object))
    if nbytes > MAX_ARRAY_BYTES:
        raise FFEdgeError(
            f"{where}: array of shape {list(shape)} ({nbytes:,} bytes) exceeds the {MAX_ARRAY_BYTES:,}-byte limit"
        )
    left = available - (fp.tell() - start)
    if nbytes > left:
        raise FFEdgeError(
            f"{where}: header declares {nbytes:,} bytes of data but only {max(left, 0):,} follow (truncated or corrupt)"
        )
    try:
        buf = read_upto(fp, nbytes)
    except DECODE_ERRORS as e:
        raise FFEdgeError(f"{where}: cannot read the array data ({reason(e)})") from None
    if len(buf) < nbytes:
        raise FFEdgeError(f"{where}: truncated: {len(buf):,} of {nbytes:,} bytes of array data")
    flat = np.frombuffer(buf, dtype=dtype)
    if dtype.kind == "U" and flat.size:
        codes = np.frombuffer(buf, dtype=np.dtype(np.uint32).newbyteorder(dtype.byteorder))
        if int(codes.max()) > sys.maxunicode:  # numpy would fail turning them into str (SystemError)
            raise FFEdgeError(f"{where}: string array holds invalid characters (code points above U+10FFFF)")
    return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)


def load_npy(path: Path) -> np.ndarray:
    """A standalone .npy file (regular files only), bounded and never unpickled."""
    with open_regular(path) as f:
        return read_npy(f, str(path), os.fstat(f.fileno()).st_size)


class NpzArchive:
    """The arrays of a .npz (a zip of .npy members), each read with :func:`read_npy` on demand."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self._file = open_regular(path)
        try:
            self._zip = zipfile.ZipFile(self._file)
            self._members = {i.filename[:-4]: i for i in self._zip.infolist() if i.filename.endswith(".npy")}
        except DECODE_ERRORS as e:
            self._file.seek(0)
            npy = self._file.read(6) == b"\x93NUMPY"
            self._file.close()
            what = "a single .npy array, not a zip of arrays" if npy else reason(e)
            raise FFEdgeError(f"cannot read {path} as a .npz file ({what})") from None

    @property
    def files(self) -> list[str]:
        """Array names (member names without ``.npy``)."""
        return list(self._members)

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def array(self, key: str) -> np.ndarray:
        """The array ``key``; its declared size must match the member's, and the member's CRC is checked."""
        info = self._members[key]
        where = f"{self.where}: array {key!r}"
        try:
            with self._zip.open(info) as m:
                arr = read_npy(m, where, info.file_size)
                if m.tell() != info.file_size:
                    raise FFEdgeError(
                        f"{where}: member holds {info.file_size:,} bytes, the .npy header accounts for {m.tell():,}"
                    )
                m.read(1)  # reaching the end verifies the CRC
        except DECODE_ERRORS as e:
            raise FFEdgeError(f"{where}: cannot read it ({reason(e)})") from None
        return arr

    def close(self) -> None:
        """Close the archive and its file."""
        try:
            self._zip.close()
        finally:
            self._file.close()

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
