"""What every file reader of the package does first: treat the file as hostile.

* :func:`regular_file` -- the path names a regular file (not a FIFO, a device, a directory, or a
  link to one), and its size, checked before anything is read: a reader then checks every size,
  count and offset the file declares against that size before allocating;
* :func:`open_regular` -- the file opened for reading, checked again on the descriptor (a FIFO
  swapped in between the check and the open cannot hang the reader), with its size;
* :func:`read_bytes` -- the whole file, at most ``limit`` bytes, refused before reading when
  larger;
* :func:`loads_json` -- JSON with its nesting depth bounded (checked before parsing, so deep
  nesting is a named error, never a ``RecursionError``), and the type of the top-level value
  checked.

Every failure is a ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file and
what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat

__all__ = ["regular_file", "read_bytes", "loads_json", "MAX_JSON_DEPTH"]

#: the deepest JSON nesting any file of the package needs is under 10; 64 leaves room
MAX_JSON_DEPTH = 64


def regular_file(path, what="file") -> tuple[str, int]:
    """``(path as str, size in bytes)`` of the regular file at ``path``; a missing path is a
    ``FileNotFoundError``, anything but a regular file (after following links) a ``ValueError``."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read this {what} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise ValueError(f"{path} is {kind}, not a regular {what}; refusing to read it")
    return path, st.st_size


@contextlib.contextmanager
def open_regular(path, what="file"):
    """``(binary file, size)`` of the regular file at ``path``. The check is made again on the
    opened descriptor (opened non-blocking, so a FIFO swapped in meanwhile cannot hang us)."""
    path, _ = regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read this {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular {what} (it changed while being opened); "
                             f"refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st.st_size


def read_bytes(path, what="file", limit=None) -> bytes:
    """The bytes of the regular file at ``path``; a file larger than ``limit`` bytes is refused
    before it is read."""
    path, size = regular_file(path, what)
    if limit is not None and size > limit:
        raise ValueError(f"{path} has {size:,} bytes, more than the {limit:,} a {what} may have")
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:                               # changed while we read it
        raise ValueError(f"{path} changed size while it was read ({size:,} -> {len(data):,} bytes)")
    return data


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _depth(text) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON ``text``, brackets inside strings ignored
    (the strings are cut out by one regular expression, then only brackets are visited)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_json(text, where, expect=dict, max_depth=MAX_JSON_DEPTH):
    """Parse JSON ``text`` (str or bytes) read from ``where`` (a file name, or a file and an
    element): nesting deeper than ``max_depth`` and a top-level value that is not an ``expect``
    are ``ValueError``s naming ``where``."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not UTF-8 JSON ({exc})") from None
    if _depth(text) > max_depth:
        raise ValueError(f"{where}: JSON nested deeper than {max_depth} levels; refusing to parse it")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:      # ValueError: also ints of > 4300 digits
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise ValueError(f"{where}: expected a JSON {names.replace('dict', 'object').replace('list', 'array')}, "
                         f"got {type(value).__name__.replace('dict', 'object').replace('list', 'array')}")
    return value
