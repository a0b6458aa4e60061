"""Tokenizers: text <-> integer ids, from characters, bytes, words, or byte-level BPE.

A language model sees a sequence of integers. A tokenizer fixes the alphabet those integers
index and the map between text and ids. Four are offered, from the simplest to GPT-2's:

* :class:`CharTokenizer`: one id per distinct character of the training text (plus four
  special tokens). Exact for text over that alphabet; unseen characters become ``<unk>``.
* :class:`ByteTokenizer`: the 256 byte values of the UTF-8 encoding. Needs no training and
  round-trips every string, at the price of long sequences (Xue et al. 2022, "ByT5").
* :class:`WordTokenizer`: one id per word or punctuation mark seen often enough in training;
  everything else is ``<unk>``. Short sequences, huge vocabularies, lossy decoding.
* :class:`BPETokenizer`: byte-level byte-pair encoding (Gage 1994; Sennrich et al. 2016; Radford
  et al. 2019). Starts from the 256 bytes and learns merges of frequent adjacent pairs, so common
  words become single tokens while any string still round-trips exactly.

They share one interface (:class:`Tokenizer`): ``encode(text) -> np.ndarray[int64]``,
``decode(ids) -> str``, ``vocab_size``, ``special_tokens`` (token string -> id, only the special
tokens that tokenizer has), ``to_dict()`` / ``from_dict()`` (a JSON-ready dict carrying a
``"type"`` field, for embedding in a checkpoint's metadata) and ``save(path)``, which writes that
dict as JSON atomically. :func:`load_tokenizer` reads any of them back.

Bad input gets a clear error: non-``str`` text is a ``TypeError``; ids that are not integers, not
1-D, or outside ``[0, vocab_size)`` are refused by ``decode`` with the offending value and index;
training on empty text, or asking for a vocabulary too small to hold the base alphabet, is a
``ValueError`` naming the argument.

References:
    P. Gage, "A New Algorithm for Data Compression", C Users Journal 12(2), 1994.
    R. Sennrich, B. Haddow, A. Birch, "Neural Machine Translation of Rare Words with Subword
    Units", ACL 2016.
    A. Radford, J. Wu, R. Child, D. Luan, D. Amodei, I. Sutskever, "Language Models are
    Unsupervised Multitask Learners" (GPT-2), OpenAI 2019.
    L. Xue et al., "ByT5: Towards a Token-Free Future with Pre-trained Byte-to-Byte Models",
    TACL 2022.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
from collections import Counter, defaultdict

import numpy as np

from .._checks import index_array
from .._files import loads_json, read_bytes
from ..io import atomic_write

__all__ = ["Tokenizer", "CharTokenizer", "ByteTokenizer", "WordTokenizer", "BPETokenizer",
           "load_tokenizer", "build_tokenizer", "encode_lines", "TOKENIZERS", "GPT2_SPLIT_PATTERN"]

FORMAT = "scratchlm-tokenizer"
VERSION = 1

#: The four special tokens of the character and word tokenizers, in id order 0..3.
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
_SPECIALS = (PAD, UNK, BOS, EOS)

#: GPT-2's pre-tokenizer (Radford et al. 2019) written for Python's ``re``, which has no ``\p{L}``:
#: English contractions | optional space + letters | optional space + digits | optional space +
#: anything else that is not a space | whitespace not followed by a non-space (so the last space
#: of a run goes with the next word) | whitespace. ``[^\W\d_]`` is "a word character that is
#: neither a digit nor ``_``", i.e. a letter. Every character falls in one branch, so the pieces
#: always concatenate back to the input.
GPT2_SPLIT_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+"""
                      r"""|\s+(?!\S)|\s+""")

_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")

_REGISTRY: dict = {}

#: the largest tokenizer file :func:`load_tokenizer` (and GPT-2's ``vocab.json`` /
#: ``merges.txt`` reader) accepts: 64 MiB, several times the largest real vocabularies
#: (GPT-2's files are 1.5 MB together)
MAX_TOKENIZER_BYTES = 64 << 20
#: a BPE vocabulary is built from its merges, each token the concatenation of two earlier ones,
#: so 60 merges can describe a token of 2**60 bytes: all tokens together may have at most
#: ``MAX_VOCAB_BYTES`` bytes (64 MiB; GPT-2's 50k tokens take 0.4 MB), checked from the lengths
#: before any token is built
MAX_VOCAB_BYTES = 1 << 26


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def _check_text(text, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _check_training_text(text, name: str = "text") -> str:
    _check_text(text, name)
    if not text:
        raise ValueError(f"{name} must be a non-empty str to train on, got ''")
    return text


def _utf8(text: str, name: str = "text") -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate (which has no UTF-8 form) is a ``ValueError``."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} must be valid Unicode, got the lone surrogate U+{ord(text[exc.start]):04X} "
            f"at index {exc.start}, which has no UTF-8 encoding") from None


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _field(d: dict, key: str, kind, what: str):
    if key not in d:
        raise ValueError(f"tokenizer dict of type {_excerpt(d.get('type'))} is missing the field "
                         f"{key!r}")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"tokenizer field {key!r} must be {what}, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------------
# the common interface
# ------------------------------------------------------------------------------------------------
class Tokenizer:
    """Base class: text <-> 1-D int64 id arrays, plus JSON (de)serialisation.

    Subclasses set ``type_name`` (the ``"type"`` field of their JSON form) and implement
    ``encode``, ``_decode_ids``, ``vocab_size``, ``special_tokens``, ``_state`` (the
    type-specific part of ``to_dict``) and ``_from_state``.
    """

    type_name: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _REGISTRY[cls.type_name] = cls

    # -- to implement ------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D int64 array (empty for ``""``)."""
        raise NotImplementedError

    def _decode_ids(self, ids: list, skip_special_tokens: bool) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of ids: every id lies in ``[0, vocab_size)``."""
        raise NotImplementedError

    @property
    def special_tokens(self) -> dict:
        """Special token string -> id (a fresh dict; empty when the tokenizer has none)."""
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, d: dict) -> "Tokenizer":
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """Text of a 1-D sequence of ids (an integer ndarray, or a list/tuple of ints).

        Ids are validated first: a non-integer dtype is a ``TypeError``; a wrong rank or an id
        outside ``[0, vocab_size)`` is a ``ValueError`` naming the first offender. Special tokens
        decode to their own text unless ``skip_special_tokens`` drops them.
        """
        ids = index_array(ids, "ids", self.vocab_size, ndim=1, allow_empty=True)
        return self._decode_ids(ids.tolist(), _check_bool(skip_special_tokens,
                                                           "skip_special_tokens"))

    def to_dict(self) -> dict:
        """A JSON-ready dict (``"type"``, format tag and version, then the vocabulary)."""
        return {"format": FORMAT, "version": VERSION, "type": self.type_name, **self._state()}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        """Rebuild a tokenizer from :meth:`to_dict`'s output. Called on :class:`Tokenizer`
        itself it dispatches on ``d["type"]``; called on a subclass the type must match."""
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        kind = d.get("type")
        if not isinstance(kind, str) or kind not in _REGISTRY:
            raise ValueError(f"tokenizer dict must have a 'type' field, one of "
                             f"{sorted(_REGISTRY)}, got {_excerpt(kind)}")
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"tokenizer dict must have format {FORMAT!r}, got "
                             f"{_excerpt(d.get('format'))}")
        version = d.get("version", VERSION)
        if type(version) is not int or version != VERSION:
            raise ValueError(f"tokenizer dict has version {_excerpt(version)}; this scratchlm reads "
                             f"version {VERSION}")
        target = _REGISTRY[kind]
        if cls is not Tokenizer and target is not cls:
            raise ValueError(f"{cls.__name__}.from_dict needs type {cls.type_name!r}, "
                             f"got {kind!r} (use load_tokenizer / Tokenizer.from_dict to dispatch)")
        try:
            return target._from_state(d)
        except TypeError as exc:            # a field of the wrong type deep inside: still the data's fault
            raise ValueError(f"tokenizer dict of type {kind!r}: {exc}") from None

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically (temporary file in the same
        folder, then ``os.replace``): a crash mid-save leaves any previous file intact."""
        data = json.dumps(self.to_dict(), ensure_ascii=True).encode("ascii")
        atomic_write(path, lambda f: f.write(data))

    def __eq__(self, other):
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def load_tokenizer(path, *, max_bytes: int = MAX_TOKENIZER_BYTES) -> Tokenizer:
    """Read a tokenizer written by ``save`` (any kind; the JSON's ``"type"`` picks the class).

    The file is hostile until checked: a regular file of at most ``max_bytes`` bytes
    (:data:`MAX_TOKENIZER_BYTES`), UTF-8 JSON nested at most 64 deep whose top level is an
    object, every field of the right type. Every failure is a ``ValueError`` naming the file and
    the field (``FileNotFoundError`` when it is missing)."""
    raw = read_bytes(path, "tokenizer file", limit=max_bytes)
    path = os.fspath(path)
    d = loads_json(raw, f"tokenizer file {path}")
    try:
        return Tokenizer.from_dict(d)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"tokenizer file {path}: {exc}") from None


def _excerpt(value, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, so an error message stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _FourSpecials:
    """``<pad>`` ``<unk>`` ``<s>`` ``</s>`` as ids 0..3 (char and word tokenizers)."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    @property
    def special_tokens(self) -> dict:
        return {tok: i for i, tok in enumerate(_SPECIALS)}


# ------------------------------------------------------------------------------------------------
# characters
# ------------------------------------------------------------------------------------------------
class CharTokenizer(_FourSpecials, Tokenizer):
    """One id per character: ``<pad>`` ``<unk>`` ``<s>`` ``</s>`` (ids 0..3), then the alphabet.

    ``CharTokenizer.train(text)`` takes the alphabet to be every distinct character of ``text``
    sorted by code point, so ids are deterministic. Encoding maps each character to its id and
    any character outside the alphabet to ``<unk>``; decoding maps ids back, so text made only of
    alphabet characters round-trips exactly. Special ids decode to their names (``"<unk>"``, ...)
    unless ``skip_special_tokens=True``. Encoding never produces ``<pad>``, ``<s>`` or ``</s>``:
    the literal text ``"<s>"`` is three characters.

    Args:
        chars: the alphabet, an iterable of distinct single characters (any order; it is sorted).
    """

    type_name = "char"

    def __init__(self, chars):
        if isinstance(chars, str):
            chars = list(chars)
        else:
            chars = list(chars)
            for c in chars:
                if not isinstance(c, str) or len(c) != 1:
                    raise ValueError(f"chars must hold single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            dup = next(c for c, k in Counter(chars).items() if k > 1)
            raise ValueError(f"chars must be distinct, got {dup!r} more than once")
        self._chars = sorted(chars)
        self._codes = np.array([ord(c) for c in self._chars], dtype=np.int64)
        self._id_to_text = list(_SPECIALS) + self._chars

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """Alphabet = the distinct characters of ``text`` (non-empty ``str``)."""
        return cls(set(_check_training_text(text)))

    @property
    def chars(self) -> str:
        """The alphabet in id order (ids 4, 5, ...), as one string."""
        return "".join(self._chars)

    @property
    def vocab_size(self) -> int:
        return len(_SPECIALS) + len(self._chars)

    def encode(self, text: str) -> np.ndarray:
        _check_text(text)
        if not text or not self._chars:
            return np.full(len(text), self.unk_id, dtype=np.int64)
        # code points (surrogatepass keeps lone surrogates, which are characters like any other)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.searchsorted(self._codes, codes)
        np.minimum(pos, len(self._codes) - 1, out=pos)
        hit = self._codes[pos] == codes
        return np.where(hit, pos + len(_SPECIALS), self.unk_id).astype(np.int64)

    def _decode_ids(self, ids, skip_special_tokens):
        table = self._id_to_text
        if skip_special_tokens:
            return "".join([table[i] for i in ids if i >= len(_SPECIALS)])
        return "".join([table[i] for i in ids])

    def _state(self):
        return {"chars": self.chars}

    @classmethod
    def _from_state(cls, d):
        return cls(_field(d, "chars", str, "a str"))


# ------------------------------------------------------------------------------------------------
# bytes
# ------------------------------------------------------------------------------------------------
class ByteTokenizer(Tokenizer):
    """The 256 byte values of UTF-8: id ``b`` is the byte ``b``. No training, no special tokens.

    Every string that is valid Unicode round-trips exactly (a lone surrogate has no UTF-8
    encoding and is a ``ValueError``). Not every id sequence is valid UTF-8, though (a model can
    emit half a character): ``decode`` uses ``errors='replace'``, so each invalid byte sequence
    becomes U+FFFD and decoding never fails (Xue et al. 2022, "ByT5").
    """

    type_name = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def special_tokens(self) -> dict:
        return {}

    def encode(self, text: str) -> np.ndarray:
        data = _utf8(_check_text(text))
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def _decode_ids(self, ids, skip_special_tokens):
        return bytes(ids).decode("utf-8", errors="replace")

    def _state(self):
        return {}

    @classmethod
    def _from_state(cls, d):
        return cls()


# ------------------------------------------------------------------------------------------------
# words
# ------------------------------------------------------------------------------------------------
class WordTokenizer(_FourSpecials, Tokenizer):
    """One id per word or punctuation mark: ``<pad>`` ``<unk>`` ``<s>`` ``</s>`` (ids 0..3),
    then the vocabulary, most frequent first.

    Text is split with the regex ``\\w+|[^\\w\\s]`` (runs of word characters, and every other
    non-space character on its own), after lower-casing when ``lowercase=True``. Tokens not in the
    vocabulary encode to ``<unk>``.

    Decoding is **lossy**: it joins tokens with single spaces (``"Hi, you!"`` encodes and decodes
    to ``"Hi , you !"``), so the original spacing, and the case when ``lowercase=True``, are lost.

    Args:
        words: the vocabulary in id order (ids 4, 5, ...): distinct strings.
        lowercase: lower-case text before splitting it (as in training).
    """

    type_name = "word"

    def __init__(self, words, lowercase: bool = False):
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w:
                raise ValueError(f"words must hold non-empty strings, got {w!r}")
        if len(set(words)) != len(words):
            dup = next(w for w, k in Counter(words).items() if k > 1)
            raise ValueError(f"words must be distinct, got {dup!r} more than once")
        self._words = words
        self._lowercase = _check_bool(lowercase, "lowercase")
        self._id_to_text = list(_SPECIALS) + words
        self._index = {w: i + len(_SPECIALS) for i, w in enumerate(words)}

    @classmethod
    def train(cls, text: str, lowercase: bool = False, min_count: int = 1,
              max_vocab: int | None = None) -> "WordTokenizer":
        """Count the tokens of ``text``; keep those seen at least ``min_count`` times, ordered by
        count (descending) then alphabetically (by code point), so training is deterministic.
        ``max_vocab`` caps ``vocab_size``, the four special tokens included (so at most
        ``max_vocab - 4`` words are kept); the rest encode to ``<unk>``."""
        _check_training_text(text)
        lowercase = _check_bool(lowercase, "lowercase")
        min_count = _check_int(min_count, "min_count", 1)
        if max_vocab is not None:
            max_vocab = _check_int(max_vocab, "max_vocab", len(_SPECIALS))
        tokens = _WORD_PATTERN.findall(text.lower() if lowercase else text)
        if not tokens:
            raise ValueError("text must contain at least one word or punctuation mark to train "
                             "on, got only whitespace")
        counts = Counter(tokens)
        words = sorted((w for w, k in counts.items() if k >= min_count),
                       key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            words = words[:max_vocab - len(_SPECIALS)]
        return cls(words, lowercase=lowercase)

    @property
    def words(self) -> list:
        """The vocabulary in id order (ids 4, 5, ...)."""
        return list(self._words)

    @property
    def lowercase(self) -> bool:
        return self._lowercase

    @property
    def vocab_size(self) -> int:
        return len(_SPECIALS) + len(self._words)

    def tokenize(self, text: str) -> list:
        """The token strings ``encode`` looks up (after lower-casing if configured)."""
        _check_text(text)
        return _WORD_PATTERN.findall(text.lower() if self._lowercase else text)

    def encode(self, text: str) -> np.ndarray:
        get, unk = self._index.get, self.unk_id
        return np.array([get(t, unk) for t in self.tokenize(text)], dtype=np.int64)

    def _decode_ids(self, ids, skip_special_tokens):
        table = self._id_to_text
        if skip_special_tokens:
            return " ".join([table[i] for i in ids if i >= len(_SPECIALS)])
        return " ".join([table[i] for i in ids])

    def _state(self):
        return {"lowercase": self._lowercase, "words": list(self._words)}

    @classmethod
    def _from_state(cls, d):
        words = _field(d, "words", list, "a list of str")
        return cls(words, lowercase=_field(d, "lowercase", bool, "a bool"))


# ------------------------------------------------------------------------------------------------
# byte-level BPE
# ------------------------------------------------------------------------------------------------
def _count_pairs(word):
    return Counter(zip(word, word[1:]))


def _train_bpe(word_counts: dict, num_merges: int) -> list:
    """Learn up to ``num_merges`` merges from ``{pre-token bytes: count}``.

    Each distinct pre-token is stored once with its count. ``pair_counts[p]`` is the number of
    occurrences of the adjacent pair ``p`` weighted by word counts, and ``where[p]`` the set of
    words containing it. A merge rewrites only the words in ``where[p]``, and updates the counts
    of the pairs those words gain or lose. The best pair comes from a heap of
    ``(-count, bytes_a, bytes_b, a, b)``: highest count first, ties to the lexicographically
    smallest pair of byte strings (then of ids), so training is deterministic. Entries go stale
    when counts change; a popped entry whose count no longer matches is discarded (lazy
    invalidation), and every changed pair is pushed afresh.
    """
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    tok = [bytes([i]) for i in range(256)]
    pair_counts: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for i, w in enumerate(words):
        f = freqs[i]
        for p in zip(w, w[1:]):
            pair_counts[p] += f
            where[p].add(i)
    heap = [(-c, tok[a], tok[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list = []
    while heap and len(merges) < num_merges:
        negc, _, _, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_counts.get(pair, 0) != -negc:
            continue                                    # stale entry
        new = 256 + len(merges)
        merges.append(pair)
        tok.append(tok[a] + tok[b])
        changed = set()
        for i in where.pop(pair):
            w, f = words[i], freqs[i]
            merged, j, n = [], 0, len(w)
            while j < n:
                if w[j] == a and j + 1 < n and w[j + 1] == b:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            before, after = _count_pairs(w), _count_pairs(merged)
            for p, k in before.items():
                k2 = after.get(p, 0)
                if k2 != k:
                    pair_counts[p] += (k2 - k) * f
                    changed.add(p)
                    if k2 == 0 and p != pair:
                        where[p].discard(i)
            for p, k in after.items():
                if p not in before:
                    pair_counts[p] += k * f
                    where[p].add(i)
                    changed.add(p)
            words[i] = merged
        del pair_counts[pair]
        changed.discard(pair)
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, tok[p[0]], tok[p[1]], p[0], p[1]))
            else:
                del pair_counts[p]
                where.pop(p, None)
    return merges


class _PieceEncoder:
    """The encoding loop shared by the byte-level BPE tokenizers (ours and GPT-2's): split the text
    on the special tokens (when allowed), pre-tokenize each part with ``self._split``, and encode
    every distinct piece once (``self._piece_ids``, cached). Subclasses provide ``_split``,
    ``_special_split`` (a regex with one group, or None), ``_special_ids`` and ``_cache``."""

    _CACHE_MAX = 200_000
    #: whether the pieces are checked to cover the text (a pattern other than GPT-2's, e.g. one
    #: read from a file, may skip characters, which would vanish from the encoding unnoticed)
    _check_cover = False

    def _encode_piece(self, piece: str) -> list:
        cached = self._cache.get(piece)
        if cached is None:
            cached = self._piece_ids(piece)
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[piece] = cached
        return cached

    def _encode_plain(self, text: str, out: list) -> None:
        pieces = self._split.findall(text)
        if self._check_cover and sum(map(len, pieces)) != len(text):
            # matches never overlap and come in order: equal lengths mean nothing is skipped
            end = 0
            for m in self._split.finditer(text):
                if m.start() != end:
                    break
                end = m.end()
            raise ValueError(f"the pre-tokenizer pattern {_excerpt(self._split.pattern)} skips "
                             f"{_excerpt(text[end:end + 20])} at index {end} of the text; its "
                             f"matches must cover every character")
        for piece in pieces:
            out.extend(self._encode_piece(piece))

    def encode(self, text: str, *, allowed_special: bool = False) -> np.ndarray:
        """Token ids of ``text``: pre-tokenize, then apply the merges within each piece.

        With ``allowed_special=True``, occurrences of the special tokens' text become their ids
        (longest match first); by default they are ordinary text. A lone surrogate (no UTF-8
        form) is a ``ValueError``.
        """
        _check_text(text)
        allowed_special = _check_bool(allowed_special, "allowed_special")
        _utf8(text)
        out: list = []
        if allowed_special and self._special_split is not None:
            for k, part in enumerate(self._special_split.split(text)):
                if k % 2:
                    out.append(self._special_ids[part])
                elif part:
                    self._encode_plain(part, out)
        else:
            self._encode_plain(text, out)
        return np.array(out, dtype=np.int64)


class BPETokenizer(_PieceEncoder, Tokenizer):
    """Byte-level byte-pair encoding, trained from scratch (GPT-2's tokenizer scheme).

    The algorithm (Gage 1994; Sennrich et al. 2016): start from a base vocabulary, here the 256
    byte values (ids 0..255, as GPT-2 does; Radford et al. 2019), so every string is
    representable and nothing is ever unknown. Count every adjacent pair of tokens in the
    training text; replace the most frequent pair everywhere by a new token (id 256, 257, ...)
    and record the merge; repeat until ``vocab_size`` is reached. Encoding replays the merges in
    the order they were learnt (lowest rank first); decoding concatenates each token's bytes.

    Merges never cross pre-token boundaries: text is first split with a GPT-2-style regex
    (:data:`GPT2_SPLIT_PATTERN`: contractions, optional space + letters, optional space + digits,
    optional space + other symbols, whitespace runs), so "dog." and "dog!" share the token
    " dog". Training counts each distinct pre-token once with its frequency, keeps a
    pair -> words index so a merge touches only the words containing the pair, and picks the
    best pair from a max-heap with lazy invalidation. Ties go to the lexicographically smallest
    pair of byte strings, so training is deterministic.

    Special tokens (e.g. ``"<|endoftext|>"``) get the ids after the merges. ``encode`` emits them
    only with ``allowed_special=True``; by default a special token's text is encoded as plain
    text. Training text is split at special tokens, so no merge spans one.

    ``decode`` concatenates the bytes and decodes UTF-8 with ``errors='replace'``: the output of
    ``encode`` always round-trips exactly (any valid Unicode string), while an arbitrary id
    sequence that is not valid UTF-8 gets U+FFFD in place of each invalid byte sequence.

    Args:
        merges: the learnt merges in rank order, each a pair of ids ``(a, b)``; merge ``r``
            creates id ``256 + r`` and may only use ids below it.
        special_tokens: distinct non-empty strings, ids ``256 + len(merges) + k``.
        pattern: the pre-tokenizer regex (``re`` syntax); its matches must cover the text, as
            the default's do.
    """

    type_name = "bpe"

    def __init__(self, merges, special_tokens=(), pattern: str = GPT2_SPLIT_PATTERN):
        checked = []
        for r, m in enumerate(merges):
            try:
                a, b = m
            except (TypeError, ValueError):
                raise ValueError(f"merges[{r}] must be a pair of ids, got {m!r}") from None
            for x in (a, b):
                if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                    raise ValueError(f"merges[{r}] must hold ints, got {m!r}")
                if not 0 <= x < 256 + r:
                    raise ValueError(f"merges[{r}] may only use ids in [0, {256 + r}) (the bytes "
                                     f"and earlier merges), got {m!r}")
            checked.append((int(a), int(b)))
        self._specials = _check_special_tokens(special_tokens)
        self._pattern = pattern
        self._split = _compile_pattern(pattern)
        self._check_cover = pattern != GPT2_SPLIT_PATTERN
        _check_token_lengths(checked)
        self._merges = checked
        self._ranks = {m: r for r, m in enumerate(checked)}
        vocab = [bytes([i]) for i in range(256)]
        for a, b in checked:
            vocab.append(vocab[a] + vocab[b])
        self._n_merged = len(vocab)
        vocab.extend(s.encode("utf-8") for s in self._specials)
        self._vocab = vocab
        self._special_ids = {s: self._n_merged + k for k, s in enumerate(self._specials)}
        self._special_split = (re.compile("(" + "|".join(
            re.escape(s) for s in sorted(self._specials, key=len, reverse=True)) + ")")
            if self._specials else None)
        self._cache: dict = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(),
              pattern: str = GPT2_SPLIT_PATTERN) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Training stops early, with a smaller vocabulary, if every pre-token has become a single
        token before that (tiny corpora). Occurrences of the special tokens in ``text`` are cut
        out before counting.
        """
        _check_training_text(text)
        specials = _check_special_tokens(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        need = 256 + len(specials)
        if vocab_size < need:
            raise ValueError(f"vocab_size must be >= {need} (256 bytes + {len(specials)} special "
                             f"tokens), got {vocab_size}")
        split = _compile_pattern(pattern)
        _utf8(text)                                     # refuse lone surrogates up front
        if specials:
            cut = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len,
                                                                   reverse=True)))
            chunks = cut.split(text)
        else:
            chunks = [text]
        counts: Counter = Counter()
        for chunk in chunks:
            counts.update(split.findall(chunk))
        word_counts = {w.encode("utf-8"): c for w, c in counts.items()}
        merges = _train_bpe(word_counts, int(vocab_size) - need)
        return cls(merges, special_tokens=specials, pattern=pattern)

    # -- views -------------------------------------------------------------------------------
    @property
    def merges(self) -> list:
        """The merges in rank order: ``merges[r] = (a, b)`` created id ``256 + r``."""
        return list(self._merges)

    @property
    def vocab(self) -> dict:
        """id -> bytes for every id (special tokens as their UTF-8 text)."""
        return dict(enumerate(self._vocab))

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def special_tokens(self) -> dict:
        return dict(self._special_ids)

    @property
    def pattern(self) -> str:
        return self._pattern

    # -- encoding ----------------------------------------------------------------------------
    def _bpe_short(self, ids: list) -> list:
        """Apply merges by rank: repeatedly merge every occurrence of the lowest-rank pair.
        Quadratic in the length, the fastest for short pre-tokens."""
        ranks = self._ranks
        inf = math.inf
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, inf))
            r = ranks.get(best)
            if r is None:
                break
            a, b = best
            new = 256 + r
            out, j, n = [], 0, len(ids)
            while j < n:
                if ids[j] == a and j + 1 < n and ids[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            ids = out
        return ids

    def _bpe_long(self, ids: list) -> list:
        """Same result as :meth:`_bpe_short` in O(n log n): a doubly-linked list of tokens and a
        heap of ``(rank, position)`` for the candidate pairs, invalidated lazily. Equal ranks pop
        left to right, so overlapping occurrences ("aaa") merge exactly as a left-to-right scan
        does; a merge's new pairs always have a higher rank, so ranks are applied in order."""
        ranks = self._ranks
        n = len(ids)
        tokens = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            r = ranks.get((tokens[i], tokens[i + 1]))
            if r is not None:
                heap.append((r, i, tokens[i], tokens[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, a, b = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j >= n or tokens[i] != a or tokens[j] != b:
                continue                                # stale
            tokens[i] = 256 + r
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                rr = ranks.get((tokens[i], tokens[k]))
                if rr is not None:
                    heapq.heappush(heap, (rr, i, tokens[i], tokens[k]))
            p = prv[i]
            if p >= 0:
                rr = ranks.get((tokens[p], tokens[i]))
                if rr is not None:
                    heapq.heappush(heap, (rr, p, tokens[p], tokens[i]))
        return [t for t, ok in zip(tokens, alive) if ok]

    def _piece_ids(self, piece: str) -> list:
        """One pre-token -> its ids: its UTF-8 bytes, merged by rank."""
        ids = list(piece.encode("utf-8"))
        return self._bpe_short(ids) if len(ids) <= 32 else self._bpe_long(ids)

    def _decode_ids(self, ids, skip_special_tokens):
        vocab = self._vocab
        if skip_special_tokens:
            limit = self._n_merged
            data = b"".join([vocab[i] for i in ids if i < limit])
        else:
            data = b"".join([vocab[i] for i in ids])
        return data.decode("utf-8", errors="replace")

    # -- serialisation -----------------------------------------------------------------------
    def _state(self):
        return {"pattern": self._pattern, "special_tokens": list(self._specials),
                "merges": [list(m) for m in self._merges]}

    @classmethod
    def _from_state(cls, d):
        merges = _field(d, "merges", list, "a list of [id, id] pairs")
        specials = _field(d, "special_tokens", list, "a list of str")
        pattern = _field(d, "pattern", str, "a str")
        return cls(merges, special_tokens=specials, pattern=pattern)


def _compile_pattern(pattern):
    """The pre-tokenizer regex: a str that compiles, without capturing groups (``findall`` would
    return tuples of groups instead of the pieces)."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise ValueError(f"pattern {_excerpt(pattern)} is not a valid regular expression "
                         f"({exc})") from None
    if compiled.groups:
        raise ValueError(f"pattern {_excerpt(pattern)} has {compiled.groups} capturing group(s); "
                         f"a pre-tokenizer pattern may only use non-capturing groups (?:...)")
    return compiled


def _check_token_lengths(merges) -> None:
    """The byte lengths of the tokens the merges build, from the lengths alone: all together at
    most :data:`MAX_VOCAB_BYTES` (each merge could otherwise double a token's length)."""
    lengths = [1] * 256
    total = 256
    for r, (a, b) in enumerate(merges):
        n = lengths[a] + lengths[b]
        total += n
        if total > MAX_VOCAB_BYTES:
            raise ValueError(f"merges[0..{r}] build tokens of {total:,} bytes together (merges[{r}] "
                             f"alone {n:,}); a vocabulary may have at most {MAX_VOCAB_BYTES:,}")
        lengths.append(n)


def _check_special_tokens(special_tokens) -> tuple:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a sequence of str, got a single str "
                        f"{special_tokens!r} (wrap it in a list)")
    try:
        specials = tuple(special_tokens)
    except TypeError:
        raise TypeError(f"special_tokens must be a sequence of str, got "
                        f"{type(special_tokens).__name__}") from None
    for s in specials:
        if not isinstance(s, str):
            raise TypeError(f"special_tokens must hold str, got {type(s).__name__} {s!r}")
        if not s:
            raise ValueError("special_tokens must hold non-empty strings, got ''")
        _utf8(s, "special_tokens")
    if len(set(specials)) != len(specials):
        dup = next(s for s, k in Counter(specials).items() if k > 1)
        raise ValueError(f"special_tokens must be distinct, got {dup!r} more than once")
    return specials


#: the tokenizers ``build_tokenizer`` (and ``scratchlm train --tokenizer``) trains
TOKENIZERS = ("char", "byte", "word", "bpe")


def build_tokenizer(kind: str, text: str, vocab_size: int = 1000) -> Tokenizer:
    """A tokenizer of ``kind`` (one of :data:`TOKENIZERS`) trained on ``text``; ``vocab_size`` is
    BPE's."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {kind!r}")


def encode_lines(tokenizer: Tokenizer, text: str) -> list:
    """One int64 id array per non-blank line (the sentences of an n-gram model)."""
    from .corpus import lines
    return [tokenizer.encode(line) for line in lines(text)]
