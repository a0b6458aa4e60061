"""GPT-2's own tokenizer, read from a Hugging Face ``vocab.json`` + ``merges.txt`` (no download).

:class:`GPT2Tokenizer` reproduces the byte-level BPE of Radford et al. (2019) as shipped with the
GPT-2 checkpoints (and any tokenizer saved in that format, e.g. by the ``tokenizers`` library's
``ByteLevelBPETokenizer``), so ids from a pretrained checkpoint mean what they meant in training:

1. **Bytes as characters** (:func:`bytes_to_unicode`). BPE files are text, so each of the 256
   byte values is written as one printable character: the 188 bytes that are printable in
   Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves, and the other 68
   (control bytes, space, ``0x7F``..``0xA0``, ``0xAD``) become ``chr(256 + n)`` in byte order: the
   space is ``"Ġ"`` (U+0120), the newline ``"Ċ"`` (U+010A). Every token in ``vocab.json`` and
   ``merges.txt`` is a string over this alphabet.
2. **Pre-tokenization** with GPT-2's regex (contractions, optional space + letters, optional
   space + digits, optional space + other symbols, whitespace runs). Merges never cross these
   pieces. See :data:`~scratchlm.data.tokenizers.GPT2_SPLIT_PATTERN` and the caveat below.
3. **Rank-ordered merging** inside each piece: start from the piece's UTF-8 bytes (as the vocab
   ids of their byte characters) and repeatedly merge the adjacent pair whose merge has the
   lowest rank (its line number in ``merges.txt``), leftmost first among equals, until no pair
   has a merge. Results are cached per piece.
4. **Decoding** joins the tokens' bytes and decodes UTF-8 with ``errors='replace'``, as Hugging
   Face does: ``decode(encode(s)) == s`` for every string, while an arbitrary id sequence that
   cuts a character in half gets U+FFFD.

The regex caveat. GPT-2's pattern is
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``, and Python's
``re`` has no ``\\p{..}`` classes. :data:`GPT2_SPLIT_PATTERN` writes "letter" as ``[^\\W\\d_]`` (a
word character that is neither a digit nor ``_``), "number" as ``\\d`` and "other" as
``[^\\s\\w]|_``. That is exact for ASCII, Latin, Greek, Cyrillic, CJK, Arabic, emoji and every
other letter (``L*``), decimal digit (``Nd``), mark, punctuation and symbol, but not for:

* **non-decimal numbers** (categories ``Nl`` and ``No``: ``²``, ``³``, ``¹``, ``½``, ``Ⅻ``,
  ``①``, ...). ``re``'s ``\\d`` is ``Nd`` only while ``\\w`` takes every ``str.isalnum()``
  character, so these count as letters here and as numbers in GPT-2: ``"x²"`` is one piece
  here and two there, ``"2²"`` the reverse;
* **U+001C..U+001F** (the ASCII information separators), which ``str.isspace()`` (``re``'s
  ``\\s``) calls whitespace and Unicode's ``White_Space`` (the reference's ``\\s``) does not;
* **code points unassigned in this Python's Unicode database** but assigned in the newer tables
  of the reference implementation (Oniguruma in ``tokenizers``); they count as "other" here.

Only the splitting differs for those characters, never the byte content, so every string still
round-trips exactly; ids differ from Hugging Face's only for text containing them. An exhaustive
check of every code point against ``tokenizers``' ByteLevel pre-tokenizer found no other
differences.

Special tokens. ``<|endoftext|>``, when ``vocab.json`` has it, is the one special token (GPT-2's
end-of-text, ``eos_token_id``). As in :class:`~scratchlm.data.tokenizers.BPETokenizer`,
``encode`` turns its literal text into its id only with ``allowed_special=True``; by default the
text is encoded as ordinary characters. (Hugging Face's ``tokenizer.encode`` behaves like
``allowed_special=True``; its ``split_special_tokens=True`` like the default here.)

References:
    A. Radford, J. Wu, R. Child, D. Luan, D. Amodei, I. Sutskever, "Language Models are
    Unsupervised Multitask Learners" (GPT-2), OpenAI 2019; its ``encoder.py``.
    R. Sennrich, B. Haddow, A. Birch, "Neural Machine Translation of Rare Words with Subword
    Units", ACL 2016.
"""

from __future__ import annotations

import heapq
import os
import re

import numpy as np

from .._files import loads_json, read_bytes, regular_file
from .tokenizers import (GPT2_SPLIT_PATTERN, MAX_TOKENIZER_BYTES, Tokenizer, _excerpt,
                         _PieceEncoder, _field, _utf8)

__all__ = ["GPT2Tokenizer", "bytes_to_unicode"]

#: GPT-2's end-of-text token: the special token when ``vocab.json`` contains it.
ENDOFTEXT = "<|endoftext|>"

_VOCAB_FILE, _MERGES_FILE = "vocab.json", "merges.txt"


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> character table (a fresh ``{int: str}`` dict of 256 entries).

    Bytes printable in Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``: 188 of them) map to
    the character of the same code point; the remaining 68, in increasing order, map to
    ``chr(256)``, ``chr(257)``, ... So no token is ever written with whitespace or control
    characters, and the map is a bijection onto 256 printable characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return dict(sorted(table.items()))


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


# ------------------------------------------------------------------------------------------------
# reading the files
# ------------------------------------------------------------------------------------------------
def _check_path(path, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike path, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str path, got bytes {path!r}")
    return path


def _read_text(path: str, name: str) -> str:
    """The UTF-8 text of the regular file ``path`` (at most :data:`MAX_TOKENIZER_BYTES`)."""
    try:
        raw = read_bytes(path, name, limit=MAX_TOKENIZER_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file {path!r}") from None
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} {path!r} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} "
                         f"at byte offset {exc.start})") from None


def _read_vocab(path: str) -> dict:
    text = _read_text(path, "vocab_file")
    vocab = loads_json(text, f"vocab_file {path!r}", expect=None)
    return _check_vocab(vocab, f"vocab_file {path!r}")


def _read_merges(path: str) -> list:
    lines = _read_text(path, "merges_file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()                                     # the file's final newline
    merges = []
    for k, line in enumerate(lines):
        line = line[:-1] if line.endswith("\r") else line
        if k == 0 and line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"merges_file {path!r} line {k + 1} must be two tokens separated by "
                             f"one space, e.g. 'Ġ t', got {_excerpt(line)}")
        merges.append((parts[0], parts[1]))
    return merges


def _check_vocab(vocab, what: str) -> dict:
    """``vocab`` must map str -> int with the ids exactly ``0..len-1`` (each once)."""
    if not isinstance(vocab, dict):
        raise ValueError(f"{what} must be a JSON object mapping token str -> int id, got "
                         f"{type(vocab).__name__}")
    if not vocab:
        raise ValueError(f"{what} must not be empty")
    owner = [None] * len(vocab)
    for tok, i in vocab.items():
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"{what} must map non-empty token strings to ids, got the key "
                             f"{_excerpt(tok)}")
        _utf8(tok, f"{what} token")
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"{what} must map tokens to int ids, got {_excerpt(tok)}: "
                             f"{_excerpt(i)} ({type(i).__name__})")
        if not 0 <= i < len(vocab):
            raise ValueError(f"{what} ids must be 0..{len(vocab) - 1} (one per token, no gaps), "
                             f"got {_excerpt(tok)}: {_excerpt(i)}")
        if owner[i] is not None:
            raise ValueError(f"{what} gives the id {i} to both {_excerpt(owner[i])} and "
                             f"{_excerpt(tok)}")
        owner[i] = tok
    return {tok: int(i) for tok, i in vocab.items()}


def _check_merges(merges, vocab: dict, what: str = "merges") -> list:
    checked = []
    for r, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
        else:
            try:
                parts = list(m)
            except TypeError:
                parts = [m]
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(f"{what}[{r}] must be a pair of token strings (or 'a b'), got "
                             f"{_excerpt(m)}")
        a, b = parts
        for tok in (a, b, a + b):
            if tok not in vocab:
                raise ValueError(f"{what}[{r}] = {_excerpt(a)} {_excerpt(b)} uses the token "
                                 f"{_excerpt(tok)}, which is not in the vocabulary")
        checked.append((a, b))
    return checked


# ------------------------------------------------------------------------------------------------
# byte-level BPE, shared with HFTokenizer (hf_tokenizer.py)
# ------------------------------------------------------------------------------------------------
def _merge_map(vocab: dict, merges: list) -> dict:
    """Pair of ids -> ``(rank, id of the merged token)``; a repeated pair keeps its last rank, as
    Hugging Face's loaders do. ``merges`` must have passed :func:`_check_merges`."""
    return {(vocab[a], vocab[b]): (r, vocab[a + b]) for r, (a, b) in enumerate(merges)}


def _token_bytes(tok: str) -> bytes:
    """The bytes a token decodes to: its characters through GPT-2's byte alphabet, or, for a
    token with a character outside that alphabet, its own UTF-8 text (what Hugging Face's
    ByteLevel decoder does)."""
    if all(c in _CHAR_TO_BYTE for c in tok):
        return bytes(_CHAR_TO_BYTE[c] for c in tok)
    return tok.encode("utf-8")


def _missing_byte(b: int, piece: str) -> ValueError:
    return ValueError(f"text needs the byte 0x{b:02X} (written {_BYTE_TO_CHAR[b]!r} in GPT-2's "
                      f"byte alphabet), which this vocabulary lacks (in the piece {piece!r})")


def _bpe_merge(ids: list, merge_map: dict) -> list:
    """Rank-ordered merging of one piece (Hugging Face ``tokenizers``' ``Word::merge_all``).

    A doubly-linked list of symbols and a heap of ``(rank, position, new id)`` candidates:
    the lowest rank pops first, the leftmost among equal ranks (so "aaa" merges as
    "aa" + "a"). An entry is stale, and skipped, once its position has been merged away or
    the pair there no longer merges into the same token. Each merge pushes the two pairs it
    creates with its neighbours. O(n log n) in the piece's length.
    """
    n = len(ids)
    tokens = list(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for i in range(n - 1):
        m = merge_map.get((tokens[i], tokens[i + 1]))
        if m is not None:
            heap.append((m[0], i, m[1]))
    heapq.heapify(heap)
    while heap:
        _, i, new = heapq.heappop(heap)
        if not alive[i]:
            continue
        j = nxt[i]
        if j >= n:
            continue
        m = merge_map.get((tokens[i], tokens[j]))
        if m is None or m[1] != new:
            continue                                # stale
        tokens[i] = new
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
        p = prv[i]
        if p >= 0:
            m = merge_map.get((tokens[p], new))
            if m is not None:
                heapq.heappush(heap, (m[0], p, m[1]))
        if k < n:
            m = merge_map.get((new, tokens[k]))
            if m is not None:
                heapq.heappush(heap, (m[0], i, m[1]))
    return [t for t, ok in zip(tokens, alive) if ok]


# ------------------------------------------------------------------------------------------------
# the tokenizer
# ------------------------------------------------------------------------------------------------
class GPT2Tokenizer(_PieceEncoder, Tokenizer):
    """GPT-2's byte-level BPE tokenizer, from Hugging Face-format ``vocab.json`` + ``merges.txt``.

    ``GPT2Tokenizer.from_pretrained(folder)`` reads ``folder/vocab.json`` and
    ``folder/merges.txt``; ``GPT2Tokenizer(vocab_file, merges_file)`` names the two files; and
    :meth:`from_vocab_and_merges` takes them already in memory. See the module docstring for the
    algorithm, and for the handful of characters (``²``, ``½``, ``Ⅻ``, U+001C..U+001F, ...) on
    which Python's ``re`` splits text differently from GPT-2's regex.

    ``vocab.json`` is a JSON object ``{token: id}`` whose ids are exactly ``0..len-1``.
    ``merges.txt`` holds one merge ``"a b"`` per line in rank order, after an optional
    ``#version`` header line; both tokens and their concatenation must be in the vocabulary.
    A vocabulary that lacks some of the 256 byte characters can be loaded, but text needing a
    missing byte is a ``ValueError`` at ``encode`` (Hugging Face would silently drop it).

    ``to_dict`` embeds the whole vocabulary and merge list, so a checkpoint can carry the
    tokenizer and :func:`~scratchlm.data.tokenizers.load_tokenizer` rebuilds it.

    Args:
        vocab_file: path of ``vocab.json``.
        merges_file: path of ``merges.txt``.
    """

    type_name = "gpt2"

    def __init__(self, vocab_file, merges_file):
        vocab_file = _check_path(vocab_file, "vocab_file")
        merges_file = _check_path(merges_file, "merges_file")
        vocab = _read_vocab(vocab_file)
        self._setup(vocab, _check_merges(_read_merges(merges_file), vocab,
                                         f"merges_file {merges_file!r} merge"))

    @classmethod
    def from_pretrained(cls, path) -> "GPT2Tokenizer":
        """Load ``path/vocab.json`` and ``path/merges.txt`` (a local folder; nothing is
        downloaded)."""
        path = _check_path(path, "path")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"path must be a folder holding {_VOCAB_FILE} and "
                                    f"{_MERGES_FILE}, got {path!r}, which is not a directory")
        files = [os.path.join(path, name) for name in (_VOCAB_FILE, _MERGES_FILE)]
        for f in files:
            try:
                regular_file(f, os.path.basename(f))
            except FileNotFoundError:
                raise FileNotFoundError(f"path {path!r} has no {os.path.basename(f)} (a GPT-2 "
                                        f"tokenizer folder needs {_VOCAB_FILE} and {_MERGES_FILE})"
                                        ) from None
        return cls(*files)

    @classmethod
    def from_vocab_and_merges(cls, vocab: dict, merges) -> "GPT2Tokenizer":
        """Build from ``vocab`` (token str -> id, ids ``0..len-1``) and ``merges`` (in rank
        order, each a pair ``(a, b)`` of token strings or the string ``"a b"``)."""
        vocab = _check_vocab(vocab, "vocab")
        try:
            merges = list(merges)
        except TypeError:
            raise TypeError(f"merges must be a sequence of token pairs, got "
                            f"{type(merges).__name__}") from None
        obj = cls.__new__(cls)
        obj._setup(vocab, _check_merges(merges, vocab))
        return obj

    def _setup(self, vocab: dict, merges: list) -> None:
        self._vocab = vocab
        self._merges = merges
        self._id_to_token = [""] * len(vocab)
        for tok, i in vocab.items():
            self._id_to_token[i] = tok
        self._merge_map = _merge_map(vocab, merges)
        # byte value -> id of its character (-1 when the vocabulary lacks it)
        self._byte_ids = [vocab.get(_BYTE_TO_CHAR[b], -1) for b in range(256)]
        self._id_bytes = [_token_bytes(tok) for tok in self._id_to_token]      # id -> bytes
        self._eos = vocab.get(ENDOFTEXT)
        self._split = re.compile(GPT2_SPLIT_PATTERN)
        self._special_split = (re.compile("(" + re.escape(ENDOFTEXT) + ")")
                               if self._eos is not None else None)
        self._special_ids = {} if self._eos is None else {ENDOFTEXT: self._eos}
        self._cache: dict = {}

    # -- views -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def special_tokens(self) -> dict:
        return {} if self._eos is None else {ENDOFTEXT: self._eos}

    @property
    def eos_token_id(self):
        """Id of ``<|endoftext|>``, or ``None`` when the vocabulary lacks it."""
        return self._eos

    @property
    def vocab(self) -> dict:
        """Token string (byte-level alphabet) -> id (a fresh dict)."""
        return dict(self._vocab)

    @property
    def merges(self) -> list:
        """The merges in rank order, as ``(a, b)`` token-string pairs."""
        return list(self._merges)

    def id_to_token(self, i: int) -> str:
        """The token string of id ``i`` (in the byte-level alphabet, e.g. ``"Ġthe"``)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"i must be an int, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"i must be in [0, {self.vocab_size}), got {i}")
        return self._id_to_token[i]

    # -- encoding ----------------------------------------------------------------------------
    def _piece_ids(self, piece: str) -> list:
        """One pre-token -> its ids: its bytes in GPT-2's alphabet, merged by rank."""
        data = piece.encode("utf-8")
        ids = [self._byte_ids[b] for b in data]
        if -1 in ids:
            raise _missing_byte(data[ids.index(-1)], piece)
        return _bpe_merge(ids, self._merge_map) if len(ids) > 1 else ids

    def _decode_ids(self, ids, skip_special_tokens):
        table = self._id_bytes
        if skip_special_tokens and self._eos is not None:
            eos = self._eos
            data = b"".join([table[i] for i in ids if i != eos])
        else:
            data = b"".join([table[i] for i in ids])
        return data.decode("utf-8", errors="replace")

    # -- serialisation -----------------------------------------------------------------------
    def _state(self):
        return {"vocab": list(self._id_to_token), "merges": [list(m) for m in self._merges]}

    @classmethod
    def _from_state(cls, d):
        tokens = _field(d, "vocab", list, "a list of token strings in id order")
        merges = _field(d, "merges", list, "a list of [token, token] pairs")
        vocab = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise ValueError(f"tokenizer field 'vocab' must hold str, got "
                                 f"{type(tok).__name__} at index {i}")
            if tok in vocab:
                raise ValueError(f"tokenizer field 'vocab' holds {_excerpt(tok)} twice (ids "
                                 f"{vocab[tok]} and {i})")
            vocab[tok] = i
        return cls.from_vocab_and_merges(vocab, merges)
