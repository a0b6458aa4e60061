r"""GloVe (Pennington, Socher & Manning, 2014, "GloVe: Global Vectors for Word Representation"):
word vectors fitted to the logarithms of a corpus's co-occurrence counts, as glove.c fits them.

**Counting.** :math:`X_{ij}` sums, over every time word :math:`j` appears ``d <= window`` words
after word :math:`i` in a sentence, the weight :math:`1/d` (and, ``symmetric``, the same for
:math:`j` before :math:`i`): :meth:`GloVe.cooccurrence`, the kernel
:func:`scratchlm.kernels.glove.cooccur` (exact: the weights are counted as integers in units of
:math:`1/\mathrm{lcm}(1..\mathrm{window})`).

**The model.** Word vectors :math:`w_i` (``weight``), context vectors :math:`\tilde w_j`
(``context_weight``) and biases :math:`b_i, \tilde b_j` minimise the weighted least squares

.. math:: J = \tfrac12 \sum_{X_{ij} > 0} f(X_{ij})\,\big(w_i\cdot\tilde w_j + b_i + \tilde b_j
          - \log X_{ij}\big)^2, \qquad f(x) = \min\!\big(1, (x/x_{\max})^{\alpha}\big),

(the paper's eq. 8; the 1/2 is glove.c's). :math:`f` caps the weight of frequent pairs and
gives rare, noisy ones little; :math:`\log X` is only defined where :math:`X > 0`, so only the
non-zero entries are fitted. The loss and its gradients are the pair
:func:`scratchlm.functional.glove_forward` / ``glove_backward``, gradient-checked.

**Training** (:meth:`GloVe.train`) is glove.c's AdaGrad step over the non-zero entries (the
kernel :func:`scratchlm.kernels.glove.glove_epoch`; threads share the tables without locks, as
glove.c's do). The vectors kept are :math:`W + \tilde W` (glove.c's ``-model 2``, the paper's
choice: the two are symmetric roles of one word). Deliberate differences from glove.c: the
entries are shuffled anew each epoch (glove.c's ``shuffle`` tool orders them once), and a step
that is not finite is applied as it is (glove.c skips it; here a diverging run shows as NaN).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .._checks import make_rng, positive_int, positive_number
from ..data.sentences import Vocab
from ..kernels import get_backend
from ..kernels import glove as K
from ..nn.module import Parameter
from .word2vec import WordVectorModel

__all__ = ["GloVe", "GloVeConfig", "Cooccurrence"]


@dataclass(frozen=True)
class GloVeConfig:
    """glove.c's settings: ``vector_size``, ``window`` (at most 20 here), ``symmetric``,
    ``min_count`` (its ``vocab_count``'s), ``x_max`` and ``alpha`` of :math:`f`, ``eta`` (the
    initial learning rate), ``epochs`` (its ``iter``), ``grad_clip`` (each component's step is
    clipped to this), ``batch_entries`` (co-occurrences per job), ``seed``."""
    vector_size: int = 100
    window: int = 10
    symmetric: bool = True
    min_count: int = 5
    x_max: float = 100.0
    alpha: float = 0.75
    eta: float = 0.05
    epochs: int = 25
    grad_clip: float = 100.0
    batch_entries: int = 100000
    seed: int = 1
    max_sentence_length: int = 10000

    def __post_init__(self):
        for name in ("vector_size", "window", "min_count", "epochs", "batch_entries",
                     "max_sentence_length"):
            positive_int(getattr(self, name), name)
        positive_int(self.seed, "seed", minimum=0)
        if self.window > K.MAX_WINDOW:
            raise ValueError(f"window must be at most {K.MAX_WINDOW} (the weights 1/d are counted "
                             f"exactly, in units of 1/lcm(1, ..., {K.MAX_WINDOW})), got "
                             f"{self.window}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")
        for name in ("x_max", "alpha", "eta", "grad_clip"):
            positive_number(getattr(self, name), name)


@dataclass(frozen=True)
class Cooccurrence:
    """The non-zero entries of :math:`X`: ``rows``, ``cols`` ``(P,)`` int32 word ids (sorted by
    row, then column) and ``values`` ``(P,)`` float64."""
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return self.values.size

    def dense(self, V) -> np.ndarray:
        """``(V, V)`` float64 (for small vocabularies: inspection and tests)."""
        X = np.zeros((V, V))
        X[self.rows, self.cols] = self.values
        return X


class GloVe(WordVectorModel):
    """GloVe vectors (module docstring). Parameters: ``weight`` and ``context_weight``
    ``(V, D)``, ``bias`` and ``context_bias`` ``(V,)``, all uniform in :math:`[-0.5, 0.5)/D` at
    the start (glove.c); AdaGrad's squared-gradient sums are buffers (``grad_sq_*``, starting at
    1), saved with the model so training can go on.

    ``forward(rows, cols, x)`` is :math:`J` over given entries
    (:func:`scratchlm.functional.glove_forward`), ``backward()`` accumulates its gradients;
    :meth:`train` is glove.c's AdaGrad over a corpus's co-occurrences.
    """

    config_class = GloVeConfig
    differentiable_inputs = ()        # ids and counts are data

    def __init__(self, config: GloVeConfig, vocab: Vocab, dtype=np.float32, rng=None):
        super().__init__(config, vocab, dtype)
        V, D = len(vocab), config.vector_size
        rng = make_rng(config.seed if rng is None else rng)

        def uniform(shape):
            return ((rng.random(shape) - 0.5) / D).astype(self.dtype)

        self.weight = Parameter(uniform((V, D)))
        self.context_weight = Parameter(uniform((V, D)))
        self.bias = Parameter(uniform(V))
        self.context_bias = Parameter(uniform(V))
        for name, shape in (("weight", (V, D)), ("context_weight", (V, D)), ("bias", (V,)),
                            ("context_bias", (V,))):
            self.register_buffer(f"grad_sq_{name}", np.ones(shape, self.dtype))
        self.register_buffer("counts", vocab.counts.copy())

    def forward(self, rows, cols, x):
        loss, self._cache = F.glove_forward(self.weight.data, self.context_weight.data,
                                            self.bias.data, self.context_bias.data, rows, cols, x,
                                            self.config.x_max, self.config.alpha)
        return loss

    def backward(self, dloss=1.0):
        grads = F.glove_backward(dloss, self._saved())
        for p, g in zip((self.weight, self.context_weight, self.bias, self.context_bias), grads):
            if p.requires_grad:
                p.grad += g
        return None

    def word_vectors(self) -> np.ndarray:
        """:math:`W + \\tilde W`."""
        return self.weight.data + self.context_weight.data

    def cooccurrence(self, sentences) -> Cooccurrence:
        """:math:`X` over ``sentences`` (module docstring), with this model's vocabulary."""
        ids, starts = self._encode(sentences)
        V, window = len(self.vocab), self.config.window
        keys, counts = K.cooccur(ids, starts, V, window, self.config.symmetric)
        if keys.size == 0:
            raise ValueError("no two vocabulary words share a sentence: there are no "
                             "co-occurrences to fit (a larger corpus or a lower min_count)")
        return Cooccurrence((keys // V).astype(np.int32), (keys % V).astype(np.int32),
                            counts / K.units(window))

    def train(self, sentences=None, cooccurrence=None, workers=None, progress=None, clock=None):
        """Fit ``config.epochs`` epochs of AdaGrad to the co-occurrences of ``sentences`` (or a
        :class:`Cooccurrence` already counted). ``progress(entries_done, entries_total, info)``
        after every job, ``info`` holding ``epoch``, ``cost`` (the mean of
        :math:`\\tfrac12 f\\,\\mathrm{diff}^2` so far this epoch, glove.c's) and
        ``entries_per_sec``. Returns the history: ``epoch``, ``cost``, ``seconds`` per epoch."""
        cfg = self.config
        clock = clock or time.perf_counter
        if (sentences is None) == (cooccurrence is None):
            raise TypeError("train needs sentences or a cooccurrence (counted from them), "
                            "one of the two")
        if cooccurrence is None:
            cooccurrence = self.cooccurrence(sentences)
        X = cooccurrence
        if not isinstance(X, Cooccurrence):
            raise TypeError(f"cooccurrence must be a Cooccurrence, got {type(X).__name__}")
        V = len(self.vocab)
        for name in ("rows", "cols"):            # ids are checked before any cast can wrap them
            a = np.asarray(getattr(X, name))
            if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= V)):
                raise ValueError(f"cooccurrence.{name} must hold integer ids in [0, {V}), got "
                                 f"{a.dtype}" + (f" in [{a.min()}, {a.max()}]" if a.size and
                                                 a.dtype.kind in "iuf" else ""))
        rows, cols = (np.ascontiguousarray(a, np.int32) for a in (X.rows, X.cols))
        values = np.ascontiguousarray(X.values, np.float64)
        if not rows.ndim == 1 or rows.shape != cols.shape or rows.shape != values.shape or \
                rows.size == 0:
            raise ValueError(f"cooccurrence must hold equally long non-empty rows, cols and "
                             f"values, got shapes {rows.shape}, {cols.shape}, {values.shape}")
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= V or cols.max() >= V or \
                not np.all(values > 0) or not np.all(np.isfinite(values)):
            raise ValueError(f"cooccurrence must hold ids in [0, {V}) and finite positive values")
        X = Cooccurrence(rows, cols, values)
        self._check_tables()
        workers = self._workers(workers)
        logx = np.log(X.values)                                      # (P,) shared by both routes
        fx = F.glove_weight(X.values, cfg.x_max, cfg.alpha)         # (P,)
        tables = (self.weight.data, self.context_weight.data, self.bias.data,
                  self.context_bias.data, self.grad_sq_weight, self.grad_sq_context_weight,
                  self.grad_sq_bias, self.grad_sq_context_bias)
        kernel = K.glove_epoch.numba if get_backend() == "numba" else K.glove_epoch.numpy
        P = len(X)
        n_jobs = -(-P // cfg.batch_entries)
        history = {"epoch": [], "cost": [], "seconds": []}
        t_start = clock()
        for epoch in range(cfg.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(P)
            t0 = clock()
            stats = {"entries": 0, "cost": 0.0}

            def run_job(j, order=order):
                part = order[j * cfg.batch_entries:(j + 1) * cfg.batch_entries]
                return part.size, kernel(*tables, X.rows, X.cols, logx, fx, part, cfg.eta,
                                         cfg.grad_clip)

            def done(j, result, epoch=epoch, stats=stats):
                stats["entries"] += result[0]
                stats["cost"] += result[1]
                if progress is not None:
                    seen = epoch * P + stats["entries"]
                    progress(seen, cfg.epochs * P, {
                        "epoch": epoch + 1, "cost": stats["cost"] / stats["entries"],
                        "entries_per_sec": seen / max(clock() - t_start, 1e-9)})

            self._run(run_job, n_jobs, workers, done)
            history["epoch"].append(epoch + 1)
            history["cost"].append(stats["cost"] / P)
            history["seconds"].append(clock() - t0)
        return history
