r"""Text corpora: a built-in English corpus that needs no download, careful file loading, and a
deterministic train/validation split.

* :func:`builtin_corpus` -- the help text CPython ships in ``pydoc_data.topics`` (about 460 kB of
  English prose and code: the language reference topics that ``help('if')`` prints). Every
  CPython installation has it, so examples and tests run offline.
* :func:`load_corpus` -- a UTF-8 text file, refusing missing, empty, binary, non-UTF-8 and
  non-regular files (FIFOs, devices, directories) and files over :data:`MAX_CORPUS_BYTES`, with
  errors that say which and where.
* :func:`split_corpus` -- train/validation split at a line boundary; the validation part is the
  tail, so ``train + val == text`` and no line is cut in two.
* :func:`lines` -- the non-blank lines (the "sentences" the n-gram models count).

All text is returned with ``'\n'`` line endings (``'\r\n'`` and lone ``'\r'`` become ``'\n'``).
"""

from __future__ import annotations

import bisect
import functools
import os

import numpy as np

from .._files import read_bytes

__all__ = ["builtin_corpus", "load_corpus", "read_corpus", "split_corpus", "lines", "MAX_CORPUS_BYTES"]


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> str:
    r"""The English help text shipped with CPython (``pydoc_data.topics.topics``), as one string.

    The topics are joined in sorted-key order, each stripped of surrounding blank lines and
    separated by one blank line (``'\n\n'``), with ``'\n'`` line endings and a final newline.
    The result depends only on the Python version (the topic texts change between releases),
    never on the machine or the run, and is cached after the first call.

    >>> text = builtin_corpus()
    >>> len(text) > 100_000
    True
    """
    from pydoc_data.topics import topics

    parts = [_normalise_newlines(topics[key]).strip("\n") for key in sorted(topics)]
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


#: the largest corpus file :func:`load_corpus` reads by default: 1 GiB (the text is held in memory
#: as one ``str``, 1 to 4 bytes a character, and tokenized from there); ``max_bytes=`` changes it
MAX_CORPUS_BYTES = 1 << 30


def load_corpus(path, *, max_bytes: int = MAX_CORPUS_BYTES) -> str:
    r"""Read a UTF-8 text file and return its text with ``'\n'`` line endings.

    A leading UTF-8 byte-order mark is dropped. The file is hostile until checked: it must be a
    regular file (a FIFO, a device, a directory or a link to one is refused before anything is
    read) of at most ``max_bytes`` bytes (:data:`MAX_CORPUS_BYTES`, 1 GiB, by default; refused
    from its size, before reading). Errors, each naming the path:

    * ``TypeError`` -- ``path`` is not a ``str`` / ``os.PathLike``;
    * ``FileNotFoundError`` -- no such file;
    * ``ValueError`` -- not a regular file (a directory, a FIFO, a device); larger than
      ``max_bytes``; empty or whitespace-only; contains NUL bytes ("looks binary", with the
      offset of the first NUL); or not valid UTF-8 (with the byte offset of the first invalid
      byte, e.g. a Latin-1 ``'é'`` = ``0xe9``).
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    try:
        raw = read_bytes(path, "corpus file", limit=max_bytes)
    except FileNotFoundError:
        raise FileNotFoundError(2, f"corpus file {path!r} does not exist", path) from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"corpus file {path!r} looks binary: it contains a NUL byte at byte "
                         f"offset {nul}; expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 1]
        raise ValueError(f"corpus file {path!r} is not valid UTF-8: invalid byte 0x{bad.hex()} "
                         f"at byte offset {exc.start} ({exc.reason}); re-encode it as UTF-8"
                         ) from None
    size = len(raw)
    del raw
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ValueError(f"corpus file {path!r} is empty or contains only whitespace "
                         f"({size} bytes)")
    return _normalise_newlines(text)


def read_corpus(path=None) -> tuple[str, str]:
    """The text and its name: the file at ``path`` (:func:`load_corpus`), or the built-in corpus
    when ``path`` is None."""
    if path is None:
        return builtin_corpus(), "built-in (pydoc_data.topics)"
    import os
    return load_corpus(path), os.fspath(path)


def _text(text, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def split_corpus(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    r"""Split ``text`` into ``(train_text, val_text)`` at the line boundary nearest the point
    :math:`\lfloor (1 - f)\,N \rceil` characters in (:math:`f` = ``val_fraction``,
    :math:`N` = ``len(text)``). The validation part is the tail.

    Deterministic (no randomness: the tail of a document is a fair held-out set for language
    modelling and avoids leaking shuffled neighbouring lines). ``train_text + val_text == text``
    exactly, the cut falls just after a ``'\n'``, and both parts contain at least one non-blank
    line; the boundary is the one nearest the target among those that allow this (ties go to the
    earlier boundary).

    Raises ``ValueError`` when ``val_fraction`` is not in the open interval (0, 1) or when the
    text has too few non-blank lines to give each part one.
    """
    text = _text(text)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.integer,
                                                                        np.floating)):
        raise TypeError(f"val_fraction must be a number, got {type(val_fraction).__name__}")
    f = float(val_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"val_fraction must be in the open interval (0, 1), got {f}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("text must contain at least two non-blank lines to split, got an "
                         "empty or whitespace-only text")
    first = len(text) - len(text.lstrip())          # index of the first non-whitespace char
    last = len(text.rstrip()) - 1                    # index of the last non-whitespace char
    # cut positions p (just after a '\n') with text[:p] and text[p:] both non-blank:
    # first < p <= last
    cuts = []
    i = text.find("\n", first, last)
    while i >= 0:
        cuts.append(i + 1)
        i = text.find("\n", i + 1, last)
    if not cuts:
        raise ValueError("text must contain at least two non-blank lines to split into train "
                         f"and validation parts, got {len(lines(text))} non-blank line(s)")
    target = (1.0 - f) * len(text)
    k = bisect.bisect_left(cuts, target)
    candidates = [cuts[j] for j in (k - 1, k) if 0 <= j < len(cuts)]
    p = min(candidates, key=lambda c: (abs(c - target), c))
    return text[:p], text[p:]


def lines(text: str) -> list[str]:
    r"""The non-blank lines of ``text``, each stripped of surrounding whitespace, in order.

    Lines are split with :meth:`str.splitlines` (so ``'\n'``, ``'\r\n'`` and ``'\r'`` all end
    a line); whitespace-only lines are dropped. These are the "sentences" the n-gram models
    train on (each gets its own begin/end markers there).
    """
    text = _text(text)
    return [s for s in (line.strip() for line in text.splitlines()) if s]
