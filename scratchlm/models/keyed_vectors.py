r"""``KeyedVectors``: word vectors by key, with gensim 4's names and semantics -- similarity,
nearest neighbours, analogies (3CosAdd and 3CosMul), evaluation on the two standard file formats,
and the word2vec.c text and binary files.

Whatever made the vectors (word2vec, GloVe, a language model's embedding table), the object holds

* ``index_to_key`` -- the keys (words) in the caller's order, typically most frequent first (the
  ``restrict_vocab`` arguments keep the first so many);
* ``key_to_index`` -- the inverse dict;
* ``vectors`` -- a read-only ``(V, D)`` float32 or float64 array, row ``i`` the vector of key ``i``
  (assign a new array to change it: the cached unit vectors then follow);
* ``counts`` -- optional word frequencies ``(V,)``, kept in memory only (the formats hold none).

**Similarity.** Everything is cosine similarity: :math:`\cos(a, b) = \hat a \cdot \hat b` with
:math:`\hat v = v / \lVert v\rVert_2`. A zero vector has no direction; its unit vector is taken to
be the zero vector, so its cosine with anything is 0 (never NaN). Norms are computed in float64
with each row scaled by its largest entry first, so no finite vector overflows or underflows.

**Nearest neighbours and analogies.** :meth:`~KeyedVectors.most_similar` is word2vec.c's
``distance``/``word-analogy`` and gensim's ``most_similar``, *3CosAdd* (Mikolov et al., 2013c):

.. math:: q = \frac{\sum_i w_i \hat v_i}{\sum_i |w_i|},\qquad
          \mathrm{score}(x) = \cos(x, q),

weights :math:`w_i = +1` for the positive keys and :math:`-1` for the negative ones; the input
keys are never returned. ``a : b :: c : ?`` is ``most_similar(positive=[b, c], negative=[a])``.
:meth:`~KeyedVectors.most_similar_cosmul` is *3CosMul* (Levy & Goldberg, 2014, eq. 4, with their
footnote's shift of the cosine to [0, 1] and gensim's epsilon):

.. math:: \mathrm{score}(x) = \frac{\prod_{p} s(x, p)}{\prod_{n} s(x, n) + 10^{-6}},\qquad
          s(x, y) = \frac{1 + \cos(x, y)}{2}.

**Evaluation** on files the user brings: :meth:`~KeyedVectors.evaluate_word_pairs` (WordSim-353,
SimLex-999: Spearman's and Pearson's correlation of the model's cosine with the human scores,
out-of-vocabulary pairs counted) and :meth:`~KeyedVectors.evaluate_word_analogies` (Google's
``questions-words.txt``: accuracy per section; every question of a file is answered in batched
matrix products).

**Files.** :meth:`~KeyedVectors.save_word2vec_format` and
:meth:`~KeyedVectors.load_word2vec_format` read and write the word2vec.c formats, which gensim's
``KeyedVectors.load_word2vec_format`` / ``save_word2vec_format`` read and write too:

* a header line ``"V D\n"`` (ASCII decimal);
* text: one line per key, ``key v1 v2 ... vD\n``, the values in decimal;
* binary: per key, its UTF-8 bytes, a space, then ``D`` little-endian float32 (``4 D`` bytes);
  we write a ``\n`` after each vector, as word2vec.c does (gensim writes none; both read both).

Keys are therefore non-empty strings without whitespace (the formats end a key at a space and a
row at a newline). The reader treats the file as hostile: see
:meth:`~KeyedVectors.load_word2vec_format`.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

import numpy as np

from .._checks import choice, float_array, integer, make_rng, positive_int, resolve_dtype
from .._files import read_bytes

__all__ = ["KeyedVectors", "WordPairsResult", "MAX_VECTORS_BYTES", "MAX_EVALUATION_BYTES",
           "MAX_KEY_BYTES"]

#: the largest vectors file :meth:`KeyedVectors.load_word2vec_format` reads by default, 8 GiB
#: (Google News' 3 M x 300 binary file is 3.4 GiB); ``max_bytes=`` changes it. The file is read in
#: chunks, and what is allocated is checked against the file's size first: at most 2 bytes of
#: float32 per byte of file (4 for float64), plus the keys (a Python str and a dict entry each,
#: about 150 bytes a key, as any vocabulary in Python costs).
MAX_VECTORS_BYTES = 1 << 33
#: the largest evaluation file (word pairs, analogies) read by default, 64 MiB (Google's
#: ``questions-words.txt`` is 0.6 MB); ``max_bytes=`` changes it
MAX_EVALUATION_BYTES = 64 << 20
#: the longest key, in UTF-8 bytes: what lets the binary reader bound the file's size from its
#: header (word2vec.c itself stops at 100 bytes)
MAX_KEY_BYTES = 4096

_MAX_HEADER_BYTES = 64            # "V D\n": two numbers of at most 12 digits, with room to spare
_MAX_HEADER_DIGITS = 12
_CHUNK = 1 << 20                  # bytes read at a time
_GEMM_BYTES = 64 << 20            # a batch of analogy scores: at most this many bytes at a time
_COSMUL_EPS = 1e-6                # gensim's, keeps the 3CosMul quotient finite
_WS = re.compile(r"\s")           # Unicode whitespace: what str.isspace() calls whitespace
# a text row's values: decimal numbers only (float() would also take "1_0", "nan", "infinity")
_NOT_NUMBER = re.compile(rb"[^0-9eE+\-.\s]")


class WordPairsResult(NamedTuple):
    """What :meth:`KeyedVectors.evaluate_word_pairs` returns.

    ``spearman`` and ``pearson``: the correlations of the model's cosine similarities with the
    human scores over the scored pairs (NaN when either side is constant: undefined); ``pairs``:
    how many pairs were scored; ``oov``: how many pairs had a word outside the (restricted)
    vocabulary; ``oov_ratio``: gensim's percentage, ``100 * oov / (pairs + oov)`` (with
    ``dummy4unknown``, whose ``pairs`` include the OOV ones: ``100 * oov / pairs``)."""
    spearman: float
    pearson: float
    pairs: int
    oov: int
    oov_ratio: float


def _excerpt(value, limit=60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def _key_problem(key) -> str | None:
    """Why ``key`` cannot be a key of the word2vec formats, or None."""
    if not isinstance(key, str):
        return f"must be a str, got {type(key).__name__}"
    if not key:
        return "must not be empty"
    m = _WS.search(key)
    if m:
        return (f"must not contain whitespace (the word2vec formats end a key at a space and a "
                f"row at a newline), got {_excerpt(key)} with {m.group()!r} at character "
                f"{m.start()}")
    try:
        n = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"must be encodable as UTF-8, got {_excerpt(key)} ({exc.reason})"
    if n > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes in UTF-8, got {n} bytes ({_excerpt(key)})"
    return None


def _check_keys(keys) -> list:
    """``keys`` as a list of distinct valid keys; the checks run in C where they can (a word2vec
    vocabulary may hold millions of keys), and the first offender is named."""
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
        raise TypeError(f"keys must be a list of str, got {type(keys).__name__}")
    keys = list(keys)
    if not keys:
        raise ValueError("keys must not be empty (a KeyedVectors holds at least one vector)")
    if not all(isinstance(k, str) for k in keys):
        i = next(i for i, k in enumerate(keys) if not isinstance(k, str))
        raise TypeError(f"keys[{i}] must be a str, got {type(keys[i]).__name__}")
    keys = [k if type(k) is str else str(k) for k in keys]          # np.str_ -> str
    joined = "".join(keys)
    suspect = (min(map(len, keys)) == 0 or _WS.search(joined) is not None
               or 4 * max(map(len, keys)) > MAX_KEY_BYTES)
    if not suspect:
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            suspect = True
    if suspect:
        for i, k in enumerate(keys):
            problem = _key_problem(k)
            if problem:
                raise ValueError(f"keys[{i}] {problem}")
    index = {k: i for i, k in enumerate(keys)}
    if len(index) != len(keys):
        seen = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise ValueError(f"keys must be distinct: {_excerpt(k)} is keys[{seen[k]}] and "
                                 f"keys[{i}]")
            seen[k] = i
    return keys


def _frozen(a) -> np.ndarray:
    a.setflags(write=False)
    return a


def _check_vectors(vectors, n_keys, name="vectors") -> np.ndarray:
    """A read-only C-contiguous copy of ``vectors`` ``(n_keys, D)``, float32 or float64, finite."""
    if not isinstance(vectors, np.ndarray):
        raise TypeError(f"{name} must be a 2-D float32 or float64 numpy array, got "
                        f"{type(vectors).__name__}")
    float_array(vectors, name, ndim=2, finite=False)
    if vectors.shape[0] != n_keys:
        raise ValueError(f"{name} must have one row per key: {n_keys} keys, got shape "
                         f"{vectors.shape}")
    _check_finite_rows(vectors, name)
    return _frozen(np.array(vectors, order="C", copy=True))


def _check_finite_rows(vectors, name, keys=None) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        j = int(np.flatnonzero(~np.isfinite(vectors[i]))[0])
        who = f"row {i}" if keys is None else f"row {i} (key {_excerpt(keys[i])})"
        raise ValueError(f"{name} must be finite: {who} holds {vectors[i, j]} at column {j}")


def _check_counts(counts, n_keys) -> np.ndarray:
    if isinstance(counts, (list, tuple)):
        counts = np.asarray(counts)
        if counts.size == 0:
            counts = counts.astype(np.int64)
    if not isinstance(counts, np.ndarray) or counts.dtype.kind not in "iu":
        what = counts.dtype if isinstance(counts, np.ndarray) else type(counts).__name__
        raise TypeError(f"counts must be an integer array with one count per key, got {what}")
    if counts.shape != (n_keys,):
        raise ValueError(f"counts must have shape ({n_keys},) (one per key), got {counts.shape}")
    if counts.dtype.kind == "u" and counts.size and counts.max() > np.iinfo(np.int64).max:
        raise ValueError(f"counts must be below 2**63, got {int(counts.max())}")
    if counts.dtype.kind == "i" and counts.size and counts.min() < 0:
        i = int(np.argmin(counts))
        raise ValueError(f"counts must be >= 0, got {int(counts[i])} at index {i}")
    return _frozen(counts.astype(np.int64, copy=True))


def _optional_limit(value, name) -> int | None:
    return None if value is None else positive_int(value, name)


def _unit_rows(vectors) -> np.ndarray:
    """Each row divided by its Euclidean norm (zero rows stay zero), in the rows' dtype. Computed
    in float64 on blocks of rows, each row first scaled by its largest |entry| (so no finite row
    overflows or underflows on the way)."""
    out = np.empty_like(vectors)
    step = max(1, (16 << 20) // (8 * max(1, vectors.shape[1])))
    for s in range(0, vectors.shape[0], step):
        block = vectors[s:s + step].astype(np.float64)
        scale = np.abs(block).max(axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        block /= scale
        norm = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        norm[norm == 0] = 1.0
        out[s:s + step] = block / norm
    return out


# ------------------------------------------------------------------------------------------------
# the object
# ------------------------------------------------------------------------------------------------
class KeyedVectors:
    r"""``KeyedVectors(keys, vectors, counts=None)``: one vector per key (gensim 4's names).

    Args:
        keys: distinct non-empty ``str`` without whitespace (the word2vec formats end a key at a
            space and a row at a newline), at most :data:`MAX_KEY_BYTES` bytes of UTF-8 each, in
            the caller's order (most frequent first makes ``restrict_vocab`` meaningful).
        vectors: ``(V, D)`` float32 or float64, finite, ``V == len(keys) >= 1``. It is copied
            and the copy is read-only: assign a new array to ``kv.vectors`` to change the vectors
            (the cached unit vectors are then recomputed). The dtype is kept: float32 in,
            float32 everywhere.
        counts: optional ``(V,)`` non-negative integer word frequencies, kept in memory as
            int64 (the word2vec formats do not store them).

    Lookups: ``len(kv)``, ``key in kv``, ``kv[key]`` (a read-only row; ``kv[[k1, k2]]`` stacks
    rows), :meth:`get_index`, :meth:`get_vector`. An unknown key is a ``KeyError`` naming it.
    """

    def __init__(self, keys, vectors, counts=None):
        keys = _check_keys(keys)
        vectors = _check_vectors(vectors, len(keys))
        counts = None if counts is None else _check_counts(counts, len(keys))
        self._set(keys, vectors, counts)

    @classmethod
    def _adopt(cls, keys, vectors, key_to_index) -> "KeyedVectors":
        """An instance around what the loader has already checked and owns."""
        kv = cls.__new__(cls)
        kv._set(keys, _frozen(vectors), None, key_to_index)
        return kv

    def _set(self, keys, vectors, counts, key_to_index=None):
        self.index_to_key = keys
        self.key_to_index = key_to_index or {k: i for i, k in enumerate(keys)}
        self._vectors = vectors
        self.counts = counts
        self._normed = None

    # -- the arrays ---------------------------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        """``(V, D)``, read-only; assign a new ``(V, D')`` float array to replace it."""
        return self._vectors

    @vectors.setter
    def vectors(self, value):
        self._vectors = _check_vectors(value, len(self.index_to_key))
        self._normed = None

    @property
    def vector_size(self) -> int:
        """D, the number of dimensions."""
        return int(self._vectors.shape[1])

    def get_normed_vectors(self) -> np.ndarray:
        r"""Every row divided by its Euclidean norm, :math:`\hat v = v / \lVert v\rVert_2`, as a
        read-only ``(V, D)`` array of the vectors' dtype; a zero row stays zero. Computed once
        and cached until ``vectors`` is assigned."""
        if self._normed is None:
            self._normed = _frozen(_unit_rows(self._vectors))
        return self._normed

    # -- lookups ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index_to_key)

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in self.key_to_index

    def __getitem__(self, key_or_keys) -> np.ndarray:
        """The vector of a key (read-only, ``(D,)``), or of each key of a list (``(n, D)``)."""
        if isinstance(key_or_keys, (str, int, np.integer)):
            return self.get_vector(key_or_keys)
        return np.vstack([self.get_vector(k) for k in key_or_keys])

    def get_index(self, key, default=None) -> int:
        """The row of ``key``. As gensim: an int in ``[0, V)`` is its own index; an unknown key
        returns ``default`` when one is given, else raises ``KeyError`` naming the key."""
        i = self.key_to_index.get(key, -1) if isinstance(key, str) else -1
        if i >= 0:
            return i
        if (isinstance(key, (int, np.integer)) and not isinstance(key, bool)
                and 0 <= key < len(self.index_to_key)):
            return int(key)
        if default is not None:
            return default
        raise KeyError(f"key {_excerpt(key)} is not in the vocabulary ({len(self)} keys)")

    def get_vector(self, key, norm=False) -> np.ndarray:
        """The ``(D,)`` vector of ``key`` (read-only), or its unit vector with ``norm=True`` (zero
        for a zero vector)."""
        i = self.get_index(key)
        return (self.get_normed_vectors() if norm else self._vectors)[i]

    def __repr__(self) -> str:
        counts = "" if self.counts is None else ", with counts"
        return (f"KeyedVectors({len(self)} keys, vector_size={self.vector_size}, "
                f"{self._vectors.dtype}{counts})")

    # -- similarity ---------------------------------------------------------------------------
    def similarity(self, w1, w2) -> float:
        r"""Cosine similarity :math:`\hat v_1 \cdot \hat v_2` of two keys (0 when either vector
        is zero)."""
        normed = self.get_normed_vectors()
        return float(np.dot(normed[self.get_index(w1)], normed[self.get_index(w2)]))

    def _terms(self, items, sign, name, weighted):
        """``[(unit vector, weight, index or None)]`` of ``positive`` / ``negative`` items: keys,
        1-D arrays of size D, and (``weighted``) ``(key or array, weight)`` pairs."""
        if items is None:
            return []
        if isinstance(items, (str, np.ndarray)):
            items = [items]
        out = []
        normed = self.get_normed_vectors()
        for item in items:
            weight = float(sign)
            if weighted and isinstance(item, tuple):
                if len(item) != 2:
                    raise ValueError(f"{name}: a weighted item is a (key, weight) pair, got "
                                     f"{_excerpt(item)}")
                item, weight = item
                if (isinstance(weight, bool)
                        or not isinstance(weight, (int, float, np.integer, np.floating))
                        or not math.isfinite(weight)):
                    raise ValueError(f"{name}: the weight of {_excerpt(item)} must be a finite "
                                     f"number, got {_excerpt(weight)}")
                weight = float(weight)
            if isinstance(item, np.ndarray):
                v = float_array(item, name, ndim=1)
                if v.shape[0] != self.vector_size:
                    raise ValueError(f"{name}: a vector must have {self.vector_size} entries "
                                     f"(vector_size), got shape {v.shape}")
                out.append((_unit_rows(v[None].astype(np.float64))[0], weight, None))
            elif isinstance(item, str):
                i = self.get_index(item)
                out.append((normed[i].astype(np.float64), weight, i))
            else:
                raise TypeError(f"{name} must hold keys (str) or 1-D arrays, got "
                                f"{type(item).__name__}")
        return out

    def _restricted(self, restrict_vocab) -> int:
        r = _optional_limit(restrict_vocab, "restrict_vocab")
        return len(self) if r is None else min(r, len(self))

    def _top(self, scores, exclude, topn):
        """``[(key, score)]`` of the ``topn`` best rows of ``scores``, rows in ``exclude`` left
        out; ties keep vocabulary order."""
        keep = np.ones(scores.shape[0], bool)
        keep[[i for i in exclude if i < scores.shape[0]]] = False
        rows = np.flatnonzero(keep)
        k = min(topn, rows.size)
        if k == 0:
            return []
        s = scores[rows]
        if k < rows.size:                                   # the k best, then sorted
            part = np.argpartition(-s, k - 1)[:k]
            cut = s[part].min()
            part = np.flatnonzero(s >= cut)                  # ties at the cut: all, in order
        else:
            part = np.arange(rows.size)
        part = part[np.argsort(-s[part], kind="stable")][:k]
        return [(self.index_to_key[int(rows[j])], float(s[j])) for j in part]

    @staticmethod
    def _topn(topn):
        if topn is None:
            return None
        return integer(topn, "topn")

    def most_similar(self, positive=None, negative=None, topn=10, restrict_vocab=None):
        r"""The ``topn`` keys nearest to the weighted mean of the unit vectors of ``positive``
        (weight +1) and ``negative`` (weight -1), by cosine: 3CosAdd,

        .. math:: q = \frac{\sum_i w_i \hat v_i}{\sum_i |w_i|},\qquad \mathrm{score}(x) =
                  \cos(x, q),

        over the first ``restrict_vocab`` keys (all by default); the input keys are left out.

        Args:
            positive, negative: a key, or a list of keys; as gensim, a list may also hold 1-D
                arrays of size D (taken as directions: normalised like a key's vector, which
                gensim does not do) and ``(key, weight)`` pairs.
            topn: how many; ``None`` returns the scores of all ``restrict_vocab`` keys as an
                array (input keys included), as gensim; below 1, ``[]``.

        Returns ``[(key, cosine)]``, best first (ties in vocabulary order). A query whose mean is
        the zero vector scores 0 everywhere. ``a : b :: c : ?`` is
        ``most_similar(positive=[b, c], negative=[a])``.
        """
        topn = self._topn(topn)
        if topn is not None and topn < 1:
            return []
        terms = (self._terms(positive, +1, "positive", True)
                 + self._terms(negative, -1, "negative", True))
        if not terms:
            raise ValueError("most_similar needs at least one positive or negative key")
        R = self._restricted(restrict_vocab)
        total = sum(abs(w) for _, w, _ in terms)
        mean = sum(w * u for u, w, _ in terms) / (total if total > 0 else 1.0)
        q = _unit_rows(mean[None])[0].astype(self._vectors.dtype)
        scores = self.get_normed_vectors()[:R] @ q
        if topn is None:
            return scores
        return self._top(scores, {i for _, _, i in terms if i is not None}, topn)

    def most_similar_cosmul(self, positive=None, negative=None, topn=10, restrict_vocab=None):
        r"""3CosMul (Levy & Goldberg, 2014): the ``topn`` keys maximising

        .. math:: \frac{\prod_{p} s(x, p)}{\prod_{n} s(x, n) + 10^{-6}},\qquad
                  s(x, y) = \frac{1 + \cos(x, y)}{2} \in [0, 1],

        over the first ``restrict_vocab`` keys (gensim 4.4 accepts the argument but searches
        every key), input keys left out. ``positive`` (at least one) and ``negative``: a key or
        a list of keys or 1-D arrays (directions, normalised). With one positive key it ranks
        as :meth:`most_similar`. ``topn=None`` returns every score, as gensim.
        """
        topn = self._topn(topn)
        if topn is not None and topn < 1:
            return []
        pos = self._terms(positive, +1, "positive", False)
        neg = self._terms(negative, -1, "negative", False)
        if not pos:
            raise ValueError("most_similar_cosmul needs at least one positive key")
        R = self._restricted(restrict_vocab)
        normed = self.get_normed_vectors()[:R]
        dtype = self._vectors.dtype

        def shifted(terms):
            out = np.ones(R, dtype)
            for u, _, _ in terms:
                out *= (1 + normed @ u.astype(dtype)) / 2
            return out

        scores = shifted(pos) / ((shifted(neg) if neg else 1) + dtype.type(_COSMUL_EPS))
        if topn is None:
            return scores
        return self._top(scores, {i for _, _, i in pos + neg if i is not None}, topn)

    # -- evaluation -----------------------------------------------------------------------------
    def _ok_vocab(self, restrict_vocab, case_insensitive):
        """gensim's restricted vocabulary: the first ``restrict_vocab`` keys (upper-cased with
        ``case_insensitive``, the first spelling of each winning) -> their row."""
        R = self._restricted(restrict_vocab)
        ok = {}
        for i, k in enumerate(self.index_to_key[:R]):
            ok.setdefault(k.upper() if case_insensitive else k, i)
        return R, ok

    def evaluate_word_pairs(self, path, delimiter="\t", restrict_vocab=300000,
                            case_insensitive=True, dummy4unknown=False, *,
                            max_bytes=MAX_EVALUATION_BYTES) -> WordPairsResult:
        r"""Correlation of the model's cosine similarities with human scores (WordSim-353,
        SimLex-999), as gensim's ``evaluate_word_pairs``.

        The file: UTF-8 lines ``word1<delimiter>word2<delimiter>score``. Blank lines and lines
        starting with ``#`` are skipped; so is a header, the first other line when its score is
        not a number (``Word 1,Word 2,Human (mean)``). The three fields are stripped of
        surrounding whitespace. Any other line that is not two words and a finite number is a
        ``ValueError`` naming the file and the line (gensim skips such lines silently). With
        ``case_insensitive`` (default) words and keys are compared upper-cased, a key's first
        spelling in vocabulary order standing for all.

        A pair with a word outside the first ``restrict_vocab`` keys is counted in ``oov`` and
        left out -- or, with ``dummy4unknown``, scored with similarity 0 (gensim's option).

        Spearman's :math:`\rho` is Pearson's :math:`r` of the average ranks (tied values share
        the mean of their ranks), :math:`r = \sum (x-\bar x)(y-\bar y) /
        \sqrt{\sum (x-\bar x)^2 \sum (y-\bar y)^2}`, both in float64 (no scipy). Fewer than two
        scored pairs is a ``ValueError``; a constant side gives NaN (undefined).

        Returns a :class:`WordPairsResult` ``(spearman, pearson, pairs, oov, oov_ratio)``.
        """
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError(f"delimiter must be a non-empty str, got {_excerpt(delimiter)}")
        lines, path = _text_lines(path, "word-pairs file", max_bytes)
        R, ok = self._ok_vocab(restrict_vocab, case_insensitive)
        gold, ia, ib, dummy = [], [], [], []
        oov = 0
        header_allowed = True
        for n, line in lines:
            if not line.strip() or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split(delimiter)]
            score = None
            if len(fields) == 3:
                try:
                    score = float(fields[2])
                except ValueError:
                    if header_allowed:              # 'Word 1,Word 2,Human (mean)'
                        header_allowed = False
                        continue
            header_allowed = False
            if score is None or not math.isfinite(score) or not fields[0] or not fields[1]:
                raise ValueError(f"{path}:{n}: expected word1{delimiter!r}word2{delimiter!r}score "
                                 f"with a finite number for score, got {_excerpt(line)}")
            a, b = fields[0], fields[1]
            if case_insensitive:
                a, b = a.upper(), b.upper()
            if a not in ok or b not in ok:
                oov += 1
                if dummy4unknown:
                    gold.append(score)
                    ia.append(0)
                    ib.append(0)
                    dummy.append(True)
                continue
            gold.append(score)
            ia.append(ok[a])
            ib.append(ok[b])
            dummy.append(False)
        if len(gold) < 2:
            raise ValueError(f"{path}: {len(gold)} word pair(s) could be scored ({oov} had a word "
                             f"outside the first {R} keys); a correlation needs at least 2")
        normed = self.get_normed_vectors()
        ia, ib = np.array(ia), np.array(ib)
        model = np.einsum("ij,ij->i", normed[ia].astype(np.float64), normed[ib].astype(np.float64))
        model[np.array(dummy)] = 0.0
        gold = np.array(gold, np.float64)
        pairs = len(gold)
        ratio = 100.0 * oov / (pairs if dummy4unknown else pairs + oov)
        return WordPairsResult(_pearson(_average_ranks(gold), _average_ranks(model)),
                               _pearson(gold, model), pairs, oov, ratio)

    def evaluate_word_analogies(self, path, restrict_vocab=300000, case_insensitive=True,
                                dummy4unknown=False, method="3cosadd", *,
                                max_bytes=MAX_EVALUATION_BYTES):
        r"""Accuracy on an analogy file in Google's ``questions-words.txt`` format, as gensim's
        ``evaluate_word_analogies`` (word2vec.c's ``compute-accuracy``).

        The file: UTF-8; ``: name`` lines start sections, every other non-blank line is a
        question ``a b c expected`` (``a`` is to ``b`` as ``c`` is to ``expected``). A question
        before the first section, or a line that is not four words, is a ``ValueError`` naming
        the file and the line (gensim skips the latter silently).

        Only the first ``restrict_vocab`` keys take part (the rest of the vocabulary is not
        searched either). A question with a word outside them is skipped -- or, with
        ``dummy4unknown``, counted as incorrect. With ``case_insensitive`` (default) words and
        keys are compared upper-cased (a key's first spelling stands for all), and the
        returned questions are upper-cased, as gensim's.

        The answer is the best-scoring key other than ``a``, ``b``, ``c`` (and, case-
        insensitively, their other spellings), by ``method``: ``'3cosadd'`` (gensim's; the
        best of :meth:`most_similar` ``(positive=[b, c], negative=[a])``) or ``'3cosmul'``
        (:meth:`most_similar_cosmul`'s). gensim looks at the five best candidates only; this
        looks at all, which differs only when five spellings of the question's words come
        first. Every question of the file is answered in batched matrix products.

        Returns ``(accuracy, sections)``: the overall fraction correct (0.0 when nothing was
        scored), and one dict ``{'section': name, 'correct': [(a, b, c, expected), ...],
        'incorrect': [...]}`` per section, in file order, then ``'Total accuracy'`` holding
        them all.
        """
        choice(method, "method", ("3cosadd", "3cosmul"))
        lines, path = _text_lines(path, "analogy file", max_bytes)
        R, ok = self._ok_vocab(restrict_vocab, case_insensitive)
        sections, questions = [], []        # questions: (section index, words, indices or None)
        for n, line in lines:
            if line.startswith(": "):
                sections.append({"section": line.lstrip(": ").strip(), "correct": [],
                                 "incorrect": []})
                continue
            if not line.strip():
                continue
            if not sections:
                raise ValueError(f"{path}:{n}: a question before the first ': section' line: "
                                 f"{_excerpt(line)}")
            words = line.split()
            if len(words) != 4:
                raise ValueError(f"{path}:{n}: a question is four words 'a b c expected', got "
                                 f"{len(words)}: {_excerpt(line)}")
            if case_insensitive:
                words = [w.upper() for w in words]
            idx = [ok.get(w) for w in words]
            questions.append((len(sections) - 1, tuple(words), None if None in idx else idx))
        known = [q for q in questions if q[2] is not None]
        predicted = self._answer(np.array([q[2] for q in known], np.int64).reshape(-1, 4), R, ok,
                                 case_insensitive, method)
        answers = iter(predicted)
        for s, words, idx in questions:
            if idx is None:
                if dummy4unknown:
                    sections[s]["incorrect"].append(words)
                continue
            sections[s]["correct" if next(answers) else "incorrect"].append(words)
        total = {"section": "Total accuracy",
                 "correct": [q for s in sections for q in s["correct"]],
                 "incorrect": [q for s in sections for q in s["incorrect"]]}
        sections.append(total)
        scored = len(total["correct"]) + len(total["incorrect"])
        return (len(total["correct"]) / scored if scored else 0.0), sections

    def _answer(self, idx, R, ok, case_insensitive, method) -> np.ndarray:
        """Whether each question ``idx[q] = (a, b, c, expected)`` (rows) is answered right,
        a batch of questions per matrix product."""
        n_q = idx.shape[0]
        right = np.zeros(n_q, bool)
        if n_q == 0:
            return right
        normed = self.get_normed_vectors()
        table = normed[:R]
        dtype = normed.dtype
        # the row standing for each row's spelling: a key's other spellings are excluded with it
        group = np.arange(R)
        spellings = {}
        if case_insensitive:
            group = np.array([ok[k.upper()] for k in self.index_to_key[:R]], np.int64)
            for r in np.flatnonzero(group != np.arange(R)):
                spellings.setdefault(int(group[r]), [int(group[r])]).append(int(r))
        per_row = R * dtype.itemsize * (1 if method == "3cosadd" else 4)
        step = max(1, _GEMM_BYTES // per_row)
        for s in range(0, n_q, step):
            a, b, c, e = idx[s:s + step].T
            if method == "3cosadd":
                mean = (normed[b].astype(np.float64) + normed[c] - normed[a]) / 3
                scores = _unit_rows(mean).astype(dtype) @ table.T
            else:
                sa, sb, sc = ((1 + normed[x] @ table.T) / 2 for x in (a, b, c))
                scores = sb * sc / (sa + dtype.type(_COSMUL_EPS))
            rows = np.arange(len(a))
            for x in (a, b, c):
                scores[rows, x] = -np.inf
            if spellings:
                for q in range(len(a)):
                    for x in (a[q], b[q], c[q]):
                        if int(x) in spellings:
                            scores[q, spellings[int(x)]] = -np.inf
            best = np.argmax(scores, axis=1)
            found = scores[rows, best] > -np.inf
            right[s:s + len(a)] = found & (group[best] == e)
        return right

    # -- files ----------------------------------------------------------------------------------
    def save_word2vec_format(self, path, binary=False) -> None:
        """Write the word2vec.c format (see the module's docstring), in vocabulary order,
        atomically (a temporary file beside ``path``, renamed over it when complete).

        Text writes each float32 vector's values with ``'%.9g'`` (nine significant digits:
        enough for every float32 to read back bit-exactly, by us and by gensim) and each
        float64 vector's with ``repr`` (the shortest decimal that reads back bit-exactly as a
        float64). Binary always holds float32: float64 vectors are rounded to the nearest
        float32. ``counts`` are not written (the format has no place for them)."""
        if not isinstance(binary, (bool, np.bool_)):
            raise TypeError(f"binary must be True or False, got {binary!r}")
        from ..io import atomic_write
        V, D = self._vectors.shape
        keys = [k.encode("utf-8") for k in self.index_to_key]
        vectors = self._vectors
        rows_per_write = max(1, _CHUNK // (12 * D))

        def write(f):
            f.write(f"{V} {D}\n".encode("ascii"))
            if binary:
                for s in range(0, V, rows_per_write):
                    block = vectors[s:s + rows_per_write].astype("<f4")
                    f.write(b"".join(k + b" " + row.tobytes() + b"\n"
                                     for k, row in zip(keys[s:s + rows_per_write], block)))
            else:
                fmt = " ".join(["%.9g" if vectors.dtype == np.float32 else "%r"] * D)
                for s in range(0, V, rows_per_write):
                    block = vectors[s:s + rows_per_write].tolist()
                    f.write(b"".join(k + b" " + (fmt % tuple(row)).encode("ascii") + b"\n"
                                     for k, row in zip(keys[s:s + rows_per_write], block)))

        atomic_write(path, write)

    @classmethod
    def load_word2vec_format(cls, path, binary=False, limit=None, *, dtype=np.float32,
                             max_bytes=MAX_VECTORS_BYTES) -> "KeyedVectors":
        """Read a word2vec.c text or binary file (ours, gensim's, word2vec.c's, GloVe's with a
        header line added). ``limit``: read only the first ``limit`` rows (as gensim; the rest of
        the file is not read). ``dtype``: float32 (the format's type, default) or float64 (a
        text file's decimals then read exactly as float64).

        The file is hostile until checked; every failure is a ``ValueError`` naming the file
        and the line (text) or row and byte offset (binary), and nothing is returned until
        every row has been checked:

        * a regular file (not a directory, FIFO or device) of at most ``max_bytes`` bytes
          (:data:`MAX_VECTORS_BYTES` by default), refused from its size before reading;
        * the header: one line of two positive decimal integers ``V D``; the size the header
          implies is checked against the file's size *before* anything is allocated: text needs
          at least ``V (2 D + 2) - 1`` bytes (a key, and a digit and a separator per value);
          binary at least ``V (4 D + 2)`` and at most ``V (4 D + MAX_KEY_BYTES + 2) + 1`` more
          than the header;
        * each row: a key of strict UTF-8 without whitespace, at most :data:`MAX_KEY_BYTES`
          bytes, not seen before (gensim keeps the first of two equal keys with a warning; this
          refuses), then exactly ``D`` values; text values are decimal numbers (``nan``,
          ``inf``, ``1_0`` and other spellings Python's ``float`` would take are refused);
        * every value finite once in ``dtype`` -- NaN, infinities and decimals beyond
          float32's range are refused (gensim accepts them; they make every similarity NaN);
        * binary: one ``\\n`` may precede each key (word2vec.c writes one after each vector);
          after the last row at most one ``\\n``. Text: trailing whitespace after a row and
          blank lines after the last one are allowed, nothing else. Without ``limit``, a file
          shorter than its header says is "truncated", one longer has "trailing data".

        The vectors are ``dtype``; ``counts`` is None.
        """
        if not isinstance(binary, (bool, np.bool_)):
            raise TypeError(f"binary must be True or False, got {binary!r}")
        limit = _optional_limit(limit, "limit")
        dtype = resolve_dtype(dtype)
        max_bytes = positive_int(max_bytes, "max_bytes")
        from .._files import open_regular
        what = "word2vec binary file" if binary else "word2vec text file"
        with open_regular(path, what) as (f, size):
            path = os.fspath(path)
            if size > max_bytes:
                raise ValueError(f"{path} has {size:,} bytes, more than the {max_bytes:,} a {what} "
                                 f"may have here (max_bytes=)")
            V, D, header_bytes = _read_header(f, path, size)
            body = size - header_bytes
            if binary:
                lo, hi = V * (4 * D + 2), V * (4 * D + MAX_KEY_BYTES + 2) + 1
            else:
                lo, hi = V * (2 * D + 2) - 1, None
            if body < lo:
                raise ValueError(f"{path}: the header announces {V:,} vectors of {D:,} values, "
                                 f"which need at least {lo:,} bytes after it; the file has "
                                 f"{body:,}: truncated, or not a {what} with that header")
            if hi is not None and body > hi:
                raise ValueError(f"{path}: the header announces {V:,} vectors of {D:,} values, "
                                 f"which take at most {hi:,} bytes after it; the file has {body:,}"
                                 f": the header is wrong, or this is not a {what}")
            n = V if limit is None else min(V, limit)
            reader = _BinaryRows if binary else _TextRows
            rows = reader(f, path, size, header_bytes, D, dtype)
            vectors = rows.read(n, check_end=n == V)
        return cls._adopt(rows.keys, vectors, rows.seen)

    # -- starting an embedding ---------------------------------------------------------------
    def vectors_for(self, keys, missing="random", rng=None):
        r"""The rows for ``keys`` (e.g. a tokenizer's vocabulary, in id order): an ``(n, D)``
        array of the vectors' dtype, row ``j`` the vector of ``keys[j]`` -- what
        :meth:`scratchlm.nn.Embedding.from_pretrained` takes.

        A key not in the vocabulary gets zeros (``missing='zeros'``) or (``'random'``, default)
        a row drawn from :math:`\mathcal N(0, \sigma^2)` with :math:`\sigma` the standard
        deviation of all the entries of ``vectors`` -- the scale of the known rows, so that a
        model starting from them sees no odd row out. ``rng``: a Generator, an int seed, or
        None.

        Returns ``(array, missing_keys)``: ``missing_keys`` lists the keys that were not found,
        in the order given (so ``len(missing_keys)`` says how many rows are not pretrained).
        """
        choice(missing, "missing", ("random", "zeros"))
        if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
            raise TypeError(f"keys must be a list of str, got {type(keys).__name__}")
        keys = list(keys)
        if not keys:
            raise ValueError("keys must not be empty (an embedding has at least one row)")
        for j, k in enumerate(keys):
            if not isinstance(k, str):
                raise TypeError(f"keys[{j}] must be a str, got {type(k).__name__}")
        rows = np.array([self.key_to_index.get(k, -1) for k in keys], np.int64)
        absent = np.flatnonzero(rows < 0)
        out = np.zeros((len(keys), self.vector_size), self._vectors.dtype)
        found = rows >= 0
        out[found] = self._vectors[rows[found]]
        if missing == "random" and absent.size:
            sigma = float(np.std(self._vectors, dtype=np.float64))
            out[absent] = make_rng(rng).normal(0.0, sigma, (absent.size, self.vector_size))
        return out, [keys[j] for j in absent]


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def _average_ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of their ranks (scipy's 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0          # mean of positions start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _pearson(x, y) -> float:
    """Pearson's r in float64; NaN when either side is constant (undefined)."""
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    den = math.sqrt(float(x @ x) * float(y @ y))
    if den == 0:
        return float("nan")
    return float(min(1.0, max(-1.0, float(x @ y) / den)))


# ------------------------------------------------------------------------------------------------
# reading files
# ------------------------------------------------------------------------------------------------
def _text_lines(path, what, max_bytes):
    """``([(line number, line)], path)`` of a strict UTF-8 text file (a leading byte-order mark
    dropped), refused from its size when over ``max_bytes``."""
    max_bytes = positive_int(max_bytes, "max_bytes")
    data = read_bytes(path, what, limit=max_bytes)
    path = os.fspath(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8: invalid byte 0x{data[exc.start]:02x} at byte "
                         f"offset {exc.start} ({exc.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ValueError(f"{path} is empty: a {what} holds at least one line")
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)], path


def _read_header(f, path, size):
    """``(V, D, bytes of the header line)`` of a word2vec file."""
    if size == 0:
        raise ValueError(f"{path} is empty: a word2vec file starts with a 'V D' header line")
    line = f.readline(_MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        problem = ("has no end" if len(line) > _MAX_HEADER_BYTES else "is the whole file")
        raise ValueError(f"{path}:1: the header line {problem}; expected 'V D' (two positive "
                         f"integers) then a newline, got {_excerpt(line[:40])}")
    fields = line.split()
    if (len(fields) != 2 or not all(x.isdigit() and len(x) <= _MAX_HEADER_DIGITS for x in fields)
            or int(fields[0]) < 1 or int(fields[1]) < 1):
        raise ValueError(f"{path}:1: expected a header of two positive integers 'V D' (number of "
                         f"vectors, their size; at most {_MAX_HEADER_DIGITS} digits each), got "
                         f"{_excerpt(line)}")
    return int(fields[0]), int(fields[1]), len(line)


class _Rows:
    """What the text and binary readers share: the keys read so far, checked one by one, and
    where row ``i`` is in the file (computed only for an error message)."""

    def __init__(self, f, path, size, offset, D, dtype):
        self.f, self.path, self.size, self.offset = f, path, size, offset
        self.D, self.dtype = D, dtype
        self.keys, self.seen = [], {}

    def at(self, i) -> str:                     # how an error message about row i starts
        raise NotImplementedError

    def label(self, i) -> str:                  # row i, as a duplicate's message names the first
        raise NotImplementedError

    def key(self, raw) -> str:
        """The key of the next row, checked: strict UTF-8, a valid key, not seen before."""
        i = len(self.keys)
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.at(i)}: the key {_excerpt(raw)} is not UTF-8 ({exc.reason} "
                             f"at byte {exc.start})") from None
        problem = _key_problem(key)
        if problem:
            raise ValueError(f"{self.at(i)}: the key {problem}")
        first = self.seen.setdefault(key, i)
        if first != i:
            raise ValueError(f"{self.at(i)}: the key {_excerpt(key)} appears twice (first in "
                             f"{self.label(first)}); keys must be distinct")
        self.keys.append(key)
        return key

    def finite(self, out):
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            j = int(np.flatnonzero(~np.isfinite(out[i]))[0])
            raise ValueError(f"{self.at(i)}: the values of key {_excerpt(self.keys[i])} must "
                             f"be finite: value {j + 1} is {out[i, j]} as {out.dtype}")


class _TextRows(_Rows):
    """Rows ``key v1 ... vD`` one a line; row ``i`` is line ``i + 2``."""

    def at(self, i):
        return f"{self.path}:{i + 2}"

    def label(self, i):
        return f"line {i + 2}"

    def read(self, n, check_end):
        with np.errstate(over="ignore", invalid="ignore"):   # 1e39 -> inf in float32: refused below
            return self._read(n, check_end)

    def _read(self, n, check_end):
        out = np.empty((n, self.D), self.dtype)
        D = self.D
        for i in range(n):
            line = self.f.readline()
            if not line:
                raise ValueError(f"{self.at(i)}: truncated: the file ends after {i} of the {n:,} "
                                 f"rows to read")
            parts = line.split()
            if not parts:
                raise ValueError(f"{self.at(i)}: an empty line where row {i + 1} (a key and {D} "
                                 f"values) should be")
            self.key(parts[0])
            if len(parts) - 1 != D:
                raise ValueError(f"{self.at(i)}: expected a key and {D} values (the header's "
                                 f"vector size), got {len(parts) - 1} values"
                                 + ("; truncated?" if not line.endswith(b"\n") else ""))
            bad = _NOT_NUMBER.search(line, len(parts[0]) + line.find(parts[0]))
            if bad:
                raise ValueError(f"{self.at(i)}: not a decimal number: byte {bad.group()!r} in "
                                 f"the values of {_excerpt(self.keys[-1])}")
            try:
                out[i] = [float(x) for x in parts[1:]]
            except ValueError:
                tok = next(x for x in parts[1:] if not _is_float(x))
                raise ValueError(f"{self.at(i)}: not a decimal number: "
                                 f"{_excerpt(tok.decode('ascii'))}") from None
        if check_end:
            rest = self.f.read(_CHUNK)
            while rest:
                if rest.strip():
                    raise ValueError(f"{self.at(n)}: trailing data after the {n:,} rows the "
                                     f"header announces: the header is wrong, or the file holds "
                                     f"more than one table")
                rest = self.f.read(_CHUNK)
        self.finite(out)
        return out


def _is_float(x) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


class _BinaryRows(_Rows):
    """Rows ``[\\n]key<space><4 D bytes>`` read from a buffer refilled a chunk at a time; the
    file offset where each row starts is kept (8 bytes a row) for the error messages."""

    def at(self, i):
        return f"{self.path}: {self.label(i)}"

    def label(self, i):
        return f"row {i + 1} at byte offset {int(self.starts[i])}"

    def read(self, n, check_end):
        D = self.D
        row_bytes = 4 * D
        out = np.empty((n, D), self.dtype)
        self.starts = np.zeros(n + 1, np.int64)
        buf, pos, base = b"", 0, self.offset          # base: the file offset of buf[0]

        def need(k):
            nonlocal buf, pos, base
            while len(buf) - pos < k:
                chunk = self.f.read(max(_CHUNK, k))
                if not chunk:
                    return False
                buf, base, pos = buf[pos:] + chunk, base + pos, 0
            return True

        for i in range(n):
            self.starts[i] = base + pos
            if need(1) and buf[pos:pos + 1] == b"\n":
                pos += 1
            need(MAX_KEY_BYTES + 1)
            space = buf.find(b" ", pos, pos + MAX_KEY_BYTES + 1)
            if space < 0:
                if len(buf) - pos <= MAX_KEY_BYTES:                    # need() met the end
                    raise ValueError(f"{self.path}: truncated: {self.label(i)} has no space ending "
                                     f"its key before the end of the file ({i} of the header's "
                                     f"rows read)")
                raise ValueError(f"{self.at(i)}: no space within {MAX_KEY_BYTES} bytes, so no key: "
                                 f"not a word2vec binary file, or its header's vector size {D} is "
                                 f"wrong")
            self.key(buf[pos:space])
            pos = space + 1
            if not need(row_bytes):
                raise ValueError(f"{self.path}: truncated: {self.label(i)} (key "
                                 f"{_excerpt(self.keys[-1])}) needs {row_bytes} bytes of float32, "
                                 f"the file has {len(buf) - pos}")
            out[i] = np.frombuffer(buf, "<f4", D, pos)
            pos += row_bytes
        if check_end:
            need(3)
            rest = buf[pos:pos + 3]
            if rest not in (b"", b"\n"):
                raise ValueError(f"{self.path}: trailing data after the {n:,} rows the header "
                                 f"announces (byte offset {base + pos}): the header is wrong, or "
                                 f"this is not a word2vec binary file")
        self.finite(out)
        return out
