r"""Documents as bags of words, from the built-in corpus (no download): the data of the document
VAE (:class:`scratchlm.models.nvdm.DocumentVAE`).

:func:`load_documents_dataset` turns a text into documents the way topic-model data sets are
usually prepared (e.g. the 20 Newsgroups set of Miao et al., 2016):

1. *documents* -- the paragraphs of the text (blocks separated by blank lines); for
   :func:`~scratchlm.data.builtin_corpus` these are the paragraphs of CPython's help topics
   (about 2,600, prose and code examples);
2. *words* -- each paragraph lower-cased and cut into runs of ASCII letters
   (``[a-z]+``); words of one letter and, with ``stop_words=True``, the English function words
   of :data:`STOP_WORDS` are dropped;
3. *split* -- the paragraphs are shuffled with ``seed`` and the last ``test_fraction`` of them
   (rounded, at least one) held out;
4. *vocabulary* -- the ``vocab_size`` most frequent words of the **training** paragraphs (ties
   broken alphabetically; fewer when there are fewer distinct words), ids in that order; words
   outside it are dropped from both splits;
5. *filter* -- documents with fewer than ``min_words`` in-vocabulary words are dropped (from
   both splits);
6. *counts* -- :func:`~scratchlm.data.bag_of_words` of each split: a ``CSRMatrix`` of float32
   counts ``(documents, vocabulary)``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import numpy as np

from .._checks import boolean, integer, positive_int, probability
from .corpus import builtin_corpus
from .representations import CSRMatrix, bag_of_words

__all__ = ["DocumentSplit", "STOP_WORDS", "load_documents_dataset", "document_words"]

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else etc even
ever every few for from further had has have having he her here hers herself him himself his how
however i if in into is it its itself just let may me might more most much must my myself neither
no nor not now of off on once one only or other otherwise our ours ourselves out over own per
rather same shall she should since so some such than that the their theirs them themselves then
there therefore these they this those though through thus to too under until up upon us use used
uses using very via was we were what whatever when where whether which while who whom whose why
will with within without would yet you your yours yourself yourselves
""".split())

_WORD = re.compile(r"[a-z]+")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


class DocumentSplit(NamedTuple):
    """``(train, test, vocab)``: ``CSRMatrix`` word counts ``(documents, len(vocab))`` (float32)
    for the two splits, and the vocabulary (word of each column id)."""
    train: CSRMatrix
    test: CSRMatrix
    vocab: list


def document_words(text, stop_words=True) -> list:
    """The words of one document, in order: lower-cased runs of ASCII letters, one-letter words
    and (``stop_words=True``) :data:`STOP_WORDS` dropped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    stop = STOP_WORDS if boolean(stop_words, "stop_words") else frozenset()
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in stop]


def load_documents_dataset(text=None, vocab_size=2000, min_words=10, test_fraction=0.1, seed=0,
                           stop_words=True) -> DocumentSplit:
    """Bag-of-words documents from ``text`` (default: :func:`~scratchlm.data.builtin_corpus`),
    split into train and test; see the module docstring for every step.

    Returns a :class:`DocumentSplit` ``(train, test, vocab)``. Deterministic given the text and
    the arguments. Raises ``ValueError`` when either split ends up empty.
    """
    text = builtin_corpus() if text is None else text
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    vocab_size = positive_int(vocab_size, "vocab_size", minimum=2)
    min_words = positive_int(min_words, "min_words")
    test_fraction = probability(test_fraction, "test_fraction", allow_one=False)
    if test_fraction == 0.0:
        raise ValueError("test_fraction must be in (0, 1), got 0.0")
    seed = integer(seed, "seed")
    docs = [document_words(p, stop_words) for p in _PARAGRAPH.split(text.replace("\r\n", "\n"))]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise ValueError(f"text must hold at least two paragraphs with words, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_test = min(len(docs) - 1, max(1, round(test_fraction * len(docs))))
    train_docs = [docs[i] for i in order[:len(docs) - n_test]]
    test_docs = [docs[i] for i in order[len(docs) - n_test:]]
    counts = Counter(w for d in train_docs for w in d)
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]]
    ids = {w: i for i, w in enumerate(vocab)}

    def bags(split, name):
        kept = [[ids[w] for w in d if w in ids] for d in split]
        kept = [np.array(d, dtype=np.int64) for d in kept if len(d) >= min_words]
        if not kept:
            raise ValueError(f"no {name} document has min_words={min_words} in-vocabulary words")
        return bag_of_words(kept, len(vocab), dtype=np.float32)

    return DocumentSplit(bags(train_docs, "training"), bags(test_docs, "test"), vocab)
