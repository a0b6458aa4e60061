r"""word2vec (Mikolov et al., 2013a, "Efficient Estimation of Word Representations in Vector
Space"; 2013b, "Distributed Representations of Words and Phrases and their Compositionality"):
skip-gram and CBOW, trained with negative sampling and/or hierarchical softmax, as word2vec.c and
gensim train them.

**The model.** Every word :math:`w` has an input vector :math:`v_w` (``vectors``: the word vectors
one keeps; word2vec.c's ``syn0``, gensim's ``wv.vectors``) and an output vector :math:`u_w`
(``syn1neg``). A prediction has an input :math:`h` -- one context word's :math:`v_c` (skip-gram)
or the mean of the window's (CBOW) -- and a centre word :math:`w`. Negative sampling replaces the
softmax over the vocabulary by :math:`k` logistic regressions against noise words
:math:`n_i \sim P_n(w) \propto \mathrm{count}(w)^{3/4}`:

.. math:: \ell = -\log\sigma(h \cdot u_w) - \sum_{i=1}^{k} \log\sigma(-h \cdot u_{n_i}).

Hierarchical softmax (``hs=True``) writes :math:`P(w \mid h)` as the product of the binary
decisions on the path to :math:`w` in a Huffman tree of the counts (frequent words get short
paths), one output vector per inner node (``syn1``):

.. math:: \ell = -\sum_{j} \log\sigma\big((1 - 2 d_j)\, h \cdot u_{n_j}\big),

:math:`d_j` the path's branch bits, :math:`n_j` its inner nodes. Both are the pair
:func:`scratchlm.functional.word2vec_forward` / ``word2vec_backward``, gradient-checked; the
module's ``forward``/``backward`` call it on a batch.

**Training** (:meth:`Word2Vec.train`) is plain SGD, one prediction at a time, in the Numba kernel
:func:`scratchlm.kernels.word2vec.train_job` (the per-sentence procedure -- subsampling, a window
drawn per centre word, the updates -- is in that file's docstring):

* frequent words are subsampled: word :math:`w` with frequency :math:`f_w = c_w / T` is kept with
  probability :math:`\min\big(1, (\sqrt{f_w / s} + 1)\, s / f_w\big)` (word2vec.c's formula,
  ``sample`` :math:`= s`);
* the learning rate falls linearly from ``alpha`` to ``min_alpha`` over all epochs' words;
* the corpus is cut into *jobs* of at most ``batch_words`` words (whole sentences); each job has
  its own learning rate (from its place in the run) and its own random stream (from ``seed``, the
  epoch and the job's number), so the run does not depend on which thread takes which job. With
  ``workers > 1`` threads update the shared tables without locks (Hogwild), as word2vec.c and
  gensim do: a run is then reproducible only to that race. With ``workers=1`` it is exact, and
  the NumPy twin (``use_backend("numpy")``, always one worker) gives the same tables bit for bit.

Differences from the references, all deliberate: the sigmoid is exact (theirs is a table clipped
at :math:`|x| = 6`); noise words are drawn with the alias method (word2vec.c quantises the
distribution into a table of :math:`10^8` ids; gensim bisects the cumulative counts); vectors
start uniform in :math:`[-0.5, 0.5)/D` from one seeded generator (gensim seeds each word by its
hash). A sentence longer than ``max_sentence_length`` is cut into pieces rather than truncated.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .._checks import (choice, make_rng, nonnegative, positive_int, positive_number, resolve_dtype,
                       scalar)
from ..data.sentences import Vocab, checked_sentences
from ..kernels import get_backend, get_num_threads
from ..kernels import word2vec as K
from ..nn.module import Module, Parameter
from .keyed_vectors import KeyedVectors

__all__ = ["Word2Vec", "Word2VecConfig", "WordVectorModel", "huffman_tree"]


@dataclass(frozen=True)
class Word2VecConfig:
    """gensim's ``Word2Vec`` names and defaults (word2vec.c's in brackets where they differ).

    ``sg``: skip-gram (else CBOW, the default of both). ``hs``: hierarchical softmax;
    ``negative``: noise words per prediction (0: none; at least one of the two must be on).
    ``window``: the largest reach; ``sample``: the subsampling threshold (0: off);
    ``min_count``: rarer words are dropped. ``alpha`` falls linearly to ``min_alpha``
    [word2vec.c: 0.05 for CBOW]. ``ns_exponent``: the noise distribution's power.
    ``batch_words``: words per job; ``max_sentence_length``: longer sentences are cut
    [word2vec.c: 1000].
    """
    vector_size: int = 100
    window: int = 5
    min_count: int = 5
    sg: bool = False
    hs: bool = False
    negative: int = 5
    ns_exponent: float = 0.75
    sample: float = 1e-3
    alpha: float = 0.025
    min_alpha: float = 0.0001
    epochs: int = 5
    seed: int = 1
    batch_words: int = 10000
    max_sentence_length: int = 10000

    def __post_init__(self):
        for name in ("vector_size", "window", "epochs", "batch_words", "max_sentence_length",
                     "min_count"):
            positive_int(getattr(self, name), name)
        positive_int(self.negative, "negative", minimum=0)
        positive_int(self.seed, "seed", minimum=0)
        if not isinstance(self.sg, bool) or not isinstance(self.hs, bool):
            raise TypeError(f"sg and hs must be bools, got {self.sg!r} and {self.hs!r}")
        if not self.hs and self.negative == 0:
            raise ValueError("word2vec needs an output layer: negative > 0 (negative sampling) or "
                             "hs=True (hierarchical softmax), got negative=0 and hs=False")
        nonnegative(self.sample, "sample")
        nonnegative(self.min_alpha, "min_alpha")
        if isinstance(self.ns_exponent, bool):
            raise TypeError("ns_exponent must be a number, got bool")
        scalar(self.ns_exponent, "ns_exponent")
        positive_number(self.alpha, "alpha")
        if self.min_alpha > self.alpha:
            raise ValueError(f"min_alpha must be <= alpha ({self.alpha}), got {self.min_alpha}")


def huffman_tree(counts):
    """word2vec.c's Huffman tree over ``counts`` (``(V,)``, V >= 2): ``(points, codes,
    codelens)`` -- for word ``w``, the inner nodes on its path from the root (``points[w, :L]``,
    ids ``0 .. V - 2``, the root being ``V - 2``) and the branch taken at each (``codes[w, :L]``,
    0 or 1), ``L = codelens[w]``. The two rarest nodes are merged first (ties: the lower node id);
    the second of a merged pair is branch 1, as in word2vec.c. A single word has no tree
    (``L = 0``)."""
    counts = np.asarray(counts, np.int64)
    V = counts.size
    parent = np.zeros(max(2 * V - 1, 1), np.int64)
    bit = np.zeros(max(2 * V - 1, 1), np.int8)
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    node = V
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a], parent[b], bit[b] = node, node, 1
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    root = 2 * V - 2
    paths = []
    for w in range(V):
        pts, bits = [], []
        n = w
        while n != root and V > 1:
            bits.append(bit[n])
            pts.append(parent[n] - V)
            n = parent[n]
        paths.append((pts[::-1], bits[::-1]))
    L = max(1, max(len(p) for p, _ in paths))
    points, codes = np.zeros((V, L), np.int32), np.zeros((V, L), np.int8)
    codelens = np.zeros(V, np.int32)
    for w, (pts, bits) in enumerate(paths):
        points[w, :len(pts)], codes[w, :len(bits)], codelens[w] = pts, bits, len(pts)
    return points, codes, codelens


class WordVectorModel(Module):
    """What word2vec and GloVe share: the vocabulary (``vocab``: words and counts, in the config
    a checkpoint carries), the cutting of a corpus into jobs, the threads that run them, and the
    :class:`~scratchlm.models.KeyedVectors` view ``wv``."""

    config_class = None

    def __init__(self, config, vocab: Vocab, dtype=np.float32):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a scratchlm.data.Vocab, got {type(vocab).__name__}")
        self.config, self.vocab, self.dtype = config, vocab, resolve_dtype(dtype)

    @classmethod
    def build(cls, sentences, config=None, dtype=np.float32, **kwargs):
        """The model for ``sentences`` (lists of str words; see
        :func:`scratchlm.data.word_sentences`), its vocabulary counted, untrained: ``config`` or
        the config's fields as keywords (``Word2Vec.build(sents, vector_size=50, sg=True)``)."""
        if config is None:
            config = cls.config_class(**kwargs)
        elif kwargs:
            raise TypeError("give a config or its fields as keywords, not both")
        if not isinstance(config, cls.config_class):
            raise TypeError(f"config must be a {cls.config_class.__name__}, got "
                            f"{type(config).__name__}")
        return cls(config, Vocab.build(sentences, config.min_count), dtype=dtype)

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """From :meth:`config_dict` (a checkpoint's): the config's fields and ``vocab``
        (``{"words": [...], "counts": [...]}``)."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict (config_dict()), got {type(config).__name__}")
        fields = dict(config)
        vocab = fields.pop("vocab", None)
        if not isinstance(vocab, dict) or set(vocab) != {"words", "counts"} or \
                not isinstance(vocab["words"], list) or not isinstance(vocab["counts"], list) or \
                not all(isinstance(c, int) and not isinstance(c, bool) for c in vocab["counts"]):
            raise ValueError("config['vocab'] must be {'words': [str, ...], 'counts': [int, ...]}")
        return cls(cls.config_class(**fields), Vocab(vocab["words"], np.array(vocab["counts"],
                                                                                np.int64)),
                   dtype=dtype)

    def config_dict(self) -> dict:
        return asdict(self.config) | {"vocab": {"words": list(self.vocab.words),
                                                "counts": self.vocab.counts.tolist()}}

    @property
    def wv(self) -> KeyedVectors:
        """The word vectors as :class:`~scratchlm.models.KeyedVectors` (a copy, with counts)."""
        return KeyedVectors(self.vocab.words, self.word_vectors(), counts=self.vocab.counts)

    def word_vectors(self) -> np.ndarray:
        raise NotImplementedError

    def _encode(self, sentences):
        ids, starts = self.vocab.encode(sentences, self.config.max_sentence_length)
        if ids.size == 0:
            raise ValueError("sentences hold no word of the vocabulary: nothing to train on")
        return ids, starts

    @staticmethod
    def _jobs(lengths, batch_words):
        """Sentence ranges ``[s, e)`` of at most ``batch_words`` words (as read, before the
        vocabulary drops any) each -- a longer sentence is a job of its own -- and the words
        before each job."""
        ends = np.cumsum(lengths)                                   # (S,)
        jobs, before = [], []
        s, n = 0, len(lengths)
        while s < n:
            start = ends[s - 1] if s else 0
            e = max(s + 1, int(np.searchsorted(ends, start + batch_words, side="right")))
            jobs.append((s, e))
            before.append(int(start))
            s = e
        return jobs, before

    #: each table's rows: the vocabulary's size, less one for the Huffman tree's inner nodes
    _ROWS = {"syn1": -1}
    #: the one-dimensional tables (GloVe's biases)
    _VECTORS = ("bias", "context_bias")

    def _check_tables(self):
        """The kernels index the tables without bounds checks: each parameter and AdaGrad sum
        must still be the writeable C-contiguous array of the model's dtype and shape it was
        built as."""
        V, D = len(self.vocab), self.config.vector_size
        arrays = [(n, p.data) for n, p in self.named_parameters()] + \
            [(n, a) for n, a in self.named_buffers() if n.startswith("grad_sq_")]
        for name, a in arrays:
            base = name.removeprefix("grad_sq_")
            rows = max(V + self._ROWS.get(base, 0), 0)
            want = (rows,) if base in self._VECTORS else (rows, D)
            if not isinstance(a, np.ndarray) or a.shape != want or a.dtype != self.dtype or \
                    not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"{name} must be a writeable C-contiguous {want} array of "
                                 f"{self.dtype} (the vocabulary has {V} words), got "
                                 f"{getattr(a, 'dtype', type(a).__name__)} of shape "
                                 f"{getattr(a, 'shape', None)}")
        if self.vocab.counts.shape != (V,):
            raise ValueError(f"the vocabulary's counts must be ({V},), got "
                             f"{self.vocab.counts.shape}")

    def _workers(self, workers):
        if workers is None:
            workers = get_num_threads()
        workers = positive_int(workers, "workers")
        return 1 if get_backend() == "numpy" else workers   # the twin is the ordered reference

    @staticmethod
    def _run(run_job, n_jobs, workers, done):
        """Run ``run_job(j)`` for every job, on ``workers`` threads (the kernel releases the
        GIL), and ``done(j, result)`` in the calling thread as each finishes."""
        if workers == 1:
            for j in range(n_jobs):
                done(j, run_job(j))
            return
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
        with ThreadPoolExecutor(workers, thread_name_prefix="scratchlm-w2v") as pool:
            pending, nxt = {}, 0
            while nxt < n_jobs or pending:
                while nxt < n_jobs and len(pending) < 2 * workers:    # a short queue
                    pending[pool.submit(run_job, nxt)] = nxt
                    nxt += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done(pending.pop(fut), fut.result())


class Word2Vec(WordVectorModel):
    """Skip-gram or CBOW word vectors (module docstring). Parameters: ``vectors`` ``(V, D)``
    (the input vectors: the word vectors), ``syn1neg`` ``(V, D)`` with negative sampling and
    ``syn1`` ``(V - 1, D)`` with hierarchical softmax (the output vectors, zero at the start).

    ``forward(context, targets, labels, context_mask=None, target_mask=None, table="syn1neg")``
    is the loss of a batch of predictions (:func:`scratchlm.functional.word2vec_forward`),
    ``backward()`` accumulates its gradients into ``vectors.grad`` and the table's ``.grad``;
    :meth:`train` is the fast SGD of word2vec.c on a corpus.
    """

    config_class = Word2VecConfig
    differentiable_inputs = ()        # ids and labels are data

    def __init__(self, config: Word2VecConfig, vocab: Vocab, dtype=np.float32, rng=None):
        super().__init__(config, vocab, dtype)
        V, D = len(vocab), config.vector_size
        rng = make_rng(config.seed if rng is None else rng)
        self.vectors = Parameter(((rng.random((V, D)) - 0.5) / D).astype(self.dtype))
        if config.negative:
            self.syn1neg = Parameter(np.zeros((V, D), self.dtype))
        if config.hs:
            self.syn1 = Parameter(np.zeros((max(V - 1, 0), D), self.dtype))
        self.register_buffer("counts", vocab.counts.copy())

    # -- the loss, for reading and checking ------------------------------------------------------
    def forward(self, context, targets, labels, context_mask=None, target_mask=None,
                table="syn1neg"):
        """The summed loss of ``B`` predictions: ``context`` ``(B, C)`` word ids (C = 1 for
        skip-gram), ``targets`` ``(B, K)`` rows of ``table`` (``"syn1neg"``: words, the first
        the centre word; ``"syn1"``: Huffman nodes), ``labels`` ``(B, K)`` 0/1."""
        table = choice(table, "table", tuple(n for n in ("syn1neg", "syn1") if hasattr(self, n)))
        out = getattr(self, table)
        loss, cache = F.word2vec_forward(self.vectors.data, out.data, context, targets, labels,
                                         context_mask, target_mask)
        self._cache = (cache, table)
        return loss

    def backward(self, dloss=1.0):
        cache, table = self._saved()
        dv, dout, *_ = F.word2vec_backward(dloss, cache)
        if self.vectors.requires_grad:
            self.vectors.grad += dv
        if getattr(self, table).requires_grad:
            getattr(self, table).grad += dout
        return None

    def word_vectors(self) -> np.ndarray:
        return self.vectors.data.copy()

    # -- the tables the kernel reads --------------------------------------------------------------
    def keep_probabilities(self) -> np.ndarray:
        r"""``(V,)``: the probability each word survives subsampling,
        :math:`\min(1, (\sqrt{f/s} + 1)\, s/f)` with :math:`f = c_w / T` (word2vec.c); a
        ``sample`` of 1 or more is a count :math:`t` instead, :math:`f/s` becoming
        :math:`c_w / t` (gensim's reading)."""
        s = self.config.sample
        if s == 0:
            return np.ones(len(self.vocab))
        threshold = s * self.vocab.total if s < 1 else s        # gensim: s >= 1 is a count
        c = self.vocab.counts.astype(np.float64)
        return np.minimum(1.0, (np.sqrt(c / threshold) + 1.0) * threshold / c)

    def noise_distribution(self) -> np.ndarray:
        r"""``(V,)``: :math:`P_n(w) = c_w^{\,e} / \sum_v c_v^{\,e}` (``e = ns_exponent``)."""
        with np.errstate(over="ignore"):
            w = self.vocab.counts.astype(np.float64) ** self.config.ns_exponent
            p = w / w.sum()
        if not np.all(np.isfinite(p)):
            raise ValueError(f"ns_exponent {self.config.ns_exponent} overflows the counts "
                             f"raised to it (the largest count is {self.vocab.counts.max()})")
        return p

    def train(self, sentences, workers=None, progress=None, compute_loss=True, clock=None):
        """Train on ``sentences`` for ``config.epochs`` epochs (module docstring). ``workers``:
        threads (default: the kernels' thread count; the NumPy route always uses one).
        ``progress(words_done, words_total, info)`` after every job, ``info`` holding ``epoch``,
        ``alpha``, ``words_per_sec`` (words read, before subsampling, per second) and ``loss``
        (the mean loss per prediction so far this epoch, with ``compute_loss``).

        Returns the history: per epoch ``epoch``, ``loss`` (mean per prediction; NaN without
        ``compute_loss``), ``trained`` (words left after subsampling), ``seconds``,
        ``words_per_sec``."""
        cfg = self.config
        clock = clock or time.perf_counter
        t_start = clock()                                         # words/s counts the look-ups
        sentences = checked_sentences(sentences, words=False)     # the words: as looked up
        lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
        words = int(lengths.sum())
        workers = self._workers(workers)
        jobs, before = self._jobs(lengths, cfg.batch_words)
        tables = self._kernel_tables()
        kernel = K.train_job.numba if get_backend() == "numba" else K.train_job.numpy
        total = cfg.epochs * words
        # each job's ids (4 bytes a word), looked up once, here, before any training: a bad
        # word is an error before the tables change, and the workers never wait on Python
        try:
            encoded = [self.vocab.encode(sentences[s:e], cfg.max_sentence_length, checked=True)
                       for s, e in jobs]
        except TypeError:
            checked_sentences(sentences)        # names the bad word's sentence in the corpus
            raise
        if not any(ids.size for ids, _ in encoded):
            raise ValueError("sentences hold no word of the vocabulary: nothing to train on")
        if max(int(ids.max(initial=0)) for ids, _ in encoded) >= tables[4].size:
            raise ValueError(f"the vocabulary's index maps a word past its {tables[4].size} "
                             f"rows")                   # the kernel does not check

        history = {k: [] for k in ("epoch", "loss", "trained", "seconds", "words_per_sec")}
        for epoch in range(cfg.epochs):
            seeds = np.random.SeedSequence([cfg.seed, epoch]).generate_state(len(jobs), np.uint64)
            t0 = clock()
            stats = {"words": 0, "trained": 0, "loss": 0.0, "predictions": 0}

            def run_job(j, epoch=epoch, seeds=seeds):
                s, e = jobs[j]
                ids, starts = encoded[j]
                done = (epoch * words + before[j]) / total
                alpha = max(cfg.min_alpha, cfg.alpha - (cfg.alpha - cfg.min_alpha) * done)
                trained, predictions, loss = kernel(*tables[:3], ids, starts, *tables[3:],
                                                    cfg.sg, cfg.window, cfg.negative, cfg.hs,
                                                    alpha, seeds[j], compute_loss)
                read = int(lengths[s:e].sum())
                return read, int(trained), int(predictions), float(loss), alpha

            def done(j, result, epoch=epoch, stats=stats):
                read, trained, predictions, loss, alpha = result
                stats["words"] += read
                stats["trained"] += trained
                stats["predictions"] += predictions
                stats["loss"] += loss
                if progress is not None:
                    seen = epoch * words + stats["words"]
                    progress(seen, total, {"epoch": epoch + 1, "alpha": alpha,
                                           "words_per_sec": seen / max(clock() - t_start, 1e-9),
                                           "loss": _mean_loss(stats, compute_loss)})

            self._run(run_job, len(jobs), workers, done)
            seconds = clock() - t0
            history["epoch"].append(epoch + 1)
            history["loss"].append(_mean_loss(stats, compute_loss))
            history["trained"].append(stats["trained"])
            history["seconds"].append(seconds)
            history["words_per_sec"].append(words / max(seconds, 1e-9))
        return history

    def _kernel_tables(self):
        """``(syn0, syn1neg, syn1, keep, prob, alias, points, codes, codelens)`` for the kernel,
        each checked against the vocabulary: the kernel indexes them without bounds checks."""
        cfg, V, D = self.config, len(self.vocab), self.config.vector_size
        self._check_tables()
        keep = self.keep_probabilities()
        prob, alias = K.alias_table(self.noise_distribution())
        if cfg.hs:
            points, codes, codelens = huffman_tree(self.vocab.counts)
        else:
            points, codes, codelens = (np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int8),
                                       np.zeros(1, np.int32))
        if keep.shape != (V,) or prob.shape != (V,) or alias.shape != (V,) or \
                (V and (alias.min() < 0 or alias.max() >= V)) or \
                (cfg.hs and (points.max() >= max(V - 1, 1) or codelens.max() > points.shape[1]
                             or codelens.shape != (V,))):
            raise ValueError(f"the vocabulary's counts ({self.vocab.counts.shape}) do not fit "
                             f"its {V} words")
        syn1neg = self.syn1neg.data if cfg.negative else np.zeros((1, D), self.dtype)
        syn1 = self.syn1.data if cfg.hs else np.zeros((1, D), self.dtype)
        return self.vectors.data, syn1neg, syn1, keep, prob, alias, points, codes, codelens


def _mean_loss(stats, compute_loss) -> float:
    """The loss per prediction (NaN when not computed)."""
    if not compute_loss or not stats["predictions"]:
        return float("nan")
    return stats["loss"] / stats["predictions"]
