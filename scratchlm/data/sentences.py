r"""Text -> sentences of words, and the counted vocabulary word vectors are trained over.

* :func:`word_sentences` -- a text split into sentences (paragraphs: runs of non-blank lines)
  of lower-cased words (runs of letters, with inner apostrophes: ``don't``); digits, punctuation
  and underscores separate words and are dropped. This is what ``scratchlm train word2vec`` and
  ``train glove`` feed the trainers (and what the benchmarks feed gensim: the same lists).
* :class:`Vocab` -- every word seen at least ``min_count`` times with its count, most frequent
  first (ties: the word seen first comes first; gensim's order among ties may differ), and
  :meth:`Vocab.encode`, which turns sentences into one ``int32`` id array plus sentence offsets,
  dropping the words left out of the vocabulary (as word2vec.c and gensim do: a context window
  then spans them).
"""

from __future__ import annotations

import itertools
import re
import types
from collections import Counter

import numpy as np

__all__ = ["word_sentences", "Vocab"]

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
_PARAGRAPH = re.compile(r"\n\s*\n")


def word_sentences(text: str, lowercase: bool = True) -> list:
    """``text`` -> a list of sentences, each a non-empty list of words (see the module
    docstring). A paragraph is one sentence, however long: the trainers cut it into pieces of
    at most ``max_sentence_length`` words."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if lowercase:
        text = text.lower()
    out = []
    for paragraph in _PARAGRAPH.split(text):
        words = _WORD.findall(paragraph)
        if words:
            out.append(words)
    return out


def checked_sentences(sentences, name="sentences", words: bool = True) -> list:
    """``sentences`` as a list, each checked to be a list (or tuple) of non-empty str words
    (``words=False``: of anything; :meth:`Vocab.encode` checks the words as it looks them up)."""
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"{name} must be an iterable of sentences (lists of str words), got "
                        f"{type(sentences).__name__}")
    out = list(sentences)
    for k, s in enumerate(out):
        if isinstance(s, str) or not isinstance(s, (list, tuple)):
            raise TypeError(f"{name}[{k}] must be a list of str words, got "
                            f"{type(s).__name__} (split a text with word_sentences)")
    if words and (set(map(type, itertools.chain.from_iterable(out))) - {str} or
                  any("" in s for s in out)):                # the rare case: find and name it
        _name_bad_word(out, name)
    return out


def _name_bad_word(sentences, name="sentences"):
    """Raise the TypeError that names the first word of ``sentences`` that is not a non-empty
    str (the slow search, run once something is known to be wrong)."""
    for k, s in enumerate(sentences):
        for w in s:
            if not isinstance(w, str) or not w:
                raise TypeError(f"{name}[{k}] must hold non-empty str words, got {w!r}")


class _Ids(dict):
    """word -> id, and -1 for a word outside the vocabulary -- after checking that it *is* a
    word: looking every word up this way checks the corpus for free (the known words are str
    already), where a separate pass over its types cost as much as half the lookups."""

    def __missing__(self, word):
        if type(word) is not str or not word:
            raise TypeError("not a word")
        return -1


class Vocab:
    """Words and their counts, most frequent first (ids 0, 1, ...).

    ``Vocab.build(sentences, min_count)`` counts; ``Vocab(words, counts)`` takes them as given
    (a checkpoint's). ``words`` (a tuple of str), ``counts`` (``(V,)`` int64, read-only),
    ``index`` (a read-only mapping word -> id), ``total`` (the sum of the counts: the corpus's
    words that are in the vocabulary). Frozen, because the trainers size and index their tables
    from it.
    """

    def __init__(self, words, counts):
        words = list(words)
        counts = np.asarray(counts)
        if not words:
            raise ValueError("a vocabulary needs at least one word, got none")
        if counts.shape != (len(words),) or counts.dtype.kind not in "iu":
            raise ValueError(f"counts must be {len(words)} integers (one per word), got "
                             f"{counts.dtype} of shape {counts.shape}")
        if np.any(counts < 1):
            raise ValueError(f"counts must be >= 1, got {int(counts.min())}")
        for w in words:
            if not isinstance(w, str) or not w or any(c.isspace() for c in w):
                raise ValueError(f"words must be non-empty str without whitespace, got {w!r}")
        # frozen: the trainers' tables are sized and indexed from these
        self.words = tuple(words)
        self.counts = counts.astype(np.int64)
        self.counts.setflags(write=False)
        self._lookup = {w: i for i, w in enumerate(words)}
        self.index = types.MappingProxyType(self._lookup)
        self._ids = _Ids(self._lookup)                   # encode's look-ups (-1: not a word here)
        if len(self.index) != len(words):
            dup = next(w for w, k in Counter(words).items() if k > 1)
            raise ValueError(f"words must be distinct, got {dup!r} more than once")
        self.total = int(self.counts.sum())

    @classmethod
    def build(cls, sentences, min_count: int = 5) -> "Vocab":
        """Count every word of ``sentences`` and keep those seen ``min_count`` times or more."""
        from .._checks import positive_int
        min_count = positive_int(min_count, "min_count")
        sentences = checked_sentences(sentences)
        counts = Counter()
        for s in sentences:
            counts.update(s)
        if not counts:
            raise ValueError("sentences hold no words: the corpus is empty")
        kept = [(w, k) for w, k in counts.items() if k >= min_count]   # first-seen order
        if not kept:
            raise ValueError(f"min_count {min_count} leaves no words: the most frequent word "
                             f"is seen {max(counts.values())} times in {sum(counts.values()):,} "
                             f"words; lower min_count or use a larger corpus")
        kept.sort(key=lambda wk: -wk[1])                                 # stable: ties by order
        return cls([w for w, _ in kept], [k for _, k in kept])

    def __len__(self) -> int:
        return len(self.words)

    def __deepcopy__(self, memo):
        return self                     # frozen: a copy of a model may share it

    def encode(self, sentences, max_sentence_length: int = 10000, *, checked: bool = False):
        """``(ids, starts)``: the in-vocabulary words of every sentence as one ``(N,)`` int32
        array, and the ``(S + 1,)`` int64 offsets where each sentence starts. Sentences longer
        than ``max_sentence_length`` are cut into consecutive pieces (gensim's limit is 10000;
        word2vec.c's 1000); sentences left empty are dropped. ``checked=True``: ``sentences`` is
        a list whose sentences :func:`checked_sentences` has already checked (the trainers'
        jobs); the words are checked here in any case, as they are looked up."""
        from .._checks import positive_int
        max_sentence_length = positive_int(max_sentence_length, "max_sentence_length")
        if not checked:
            sentences = checked_sentences(sentences, words=False)
        lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))      # (S,)
        flat = itertools.chain.from_iterable(sentences)
        try:
            ids = np.fromiter(map(self._ids.__getitem__, flat), np.int64,
                              int(lengths.sum()))                                   # (N_all,)
        except TypeError:                   # not a str, empty, or unhashable: name it
            _name_bad_word(sentences)
            raise
        known = ids >= 0
        ids = ids[known]                                                           # (N,)
        sentence = np.repeat(np.arange(lengths.size), lengths)[known]             # (N,)
        kept = np.bincount(sentence, minlength=lengths.size)                      # (S,)
        kept = kept[kept > 0]                                                      # empty: dropped
        if kept.size and kept.max() > max_sentence_length:                         # cut long ones
            kept = np.array([piece for k in kept.tolist() for piece in
                             [max_sentence_length] * (k // max_sentence_length) +
                             ([k % max_sentence_length] if k % max_sentence_length else [])],
                            np.int64)
        starts = np.concatenate([[0], np.cumsum(kept)])                            # (S' + 1,)
        return ids.astype(np.int32), starts.astype(np.int64)
