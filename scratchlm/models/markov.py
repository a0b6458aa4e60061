r"""A first-order Markov chain over states ``0 .. n_states-1``: count, normalise, sample.

The maximum-likelihood transition matrix of a chain observed as :math:`s_1, \dots, s_L` is

.. math::  \hat P_{ab} = \frac{C_{ab} + \alpha}{\sum_{b'} C_{ab'} + \alpha\, n},
           \qquad C_{ab} = \#\{t : s_t = a,\ s_{t+1} = b\}

with optional additive smoothing :math:`\alpha` (``smoothing``; 0 is plain maximum likelihood).
A state never seen as a source (:math:`\sum_b C_{ab} = 0` and :math:`\alpha = 0`) gets the uniform
row :math:`1/n` -- defined, never NaN. Counting is a Numba kernel (``kernels/ngram.py``) with a NumPy
twin. (Markov, 1913; for the n-gram generalisation see :class:`scratchlm.models.NGramLM`.)
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import NonFiniteError, index_array, make_rng, nonnegative, positive_int
from ..kernels.ngram import count_transitions


class MarkovChain:
    """``MarkovChain(n_states, smoothing=0.0)``.

    Attributes after :meth:`train`: ``counts`` ``(n, n)`` int64 and ``transition_matrix``
    ``(n, n)`` float64 whose rows sum to 1.
    """

    def __init__(self, n_states: int, smoothing: float = 0.0):
        self.n_states = positive_int(n_states, "n_states")
        self.smoothing = nonnegative(smoothing, "smoothing")
        self.counts = np.zeros((self.n_states, self.n_states), dtype=np.int64)
        self.transition_matrix = np.full((self.n_states, self.n_states), 1.0 / self.n_states)

    def train(self, sequence):
        """Add the transitions of ``sequence`` (state ids, length >= 2) to the counts and
        re-estimate ``transition_matrix``. Calling it again accumulates more data. Returns self."""
        seq = index_array(sequence, "sequence", self.n_states, ndim=1)
        if seq.shape[0] < 2:
            raise ValueError(f"sequence must hold at least 2 states to give a transition, got {seq.shape[0]}")
        self.counts += count_transitions(np.ascontiguousarray(seq), self.n_states)
        rows = self.counts + self.smoothing                              # (n, n)
        totals = rows.sum(axis=1, keepdims=True)                         # (n, 1)
        unseen = totals[:, 0] == 0
        self.transition_matrix = np.where(unseen[:, None], 1.0 / self.n_states,
                                          rows / np.where(totals == 0, 1, totals))
        return self

    def generate(self, start_state: int, length: int, rng=None) -> np.ndarray:
        """``length`` states beginning with ``start_state``, each drawn from the row of the one
        before. ``rng``: a Generator or seed."""
        start = int(index_array(np.array([start_state]), "start_state", self.n_states)[0])
        length = positive_int(length, "length")
        rng = make_rng(rng)
        p = np.asarray(self.transition_matrix, dtype=np.float64)
        if p.shape != (self.n_states, self.n_states) or not np.isfinite(p).all() \
                or (p < 0).any() or (p.sum(axis=1) <= 0).any():
            raise NonFiniteError(f"transition_matrix must be a finite, non-negative "
                                 f"({self.n_states}, {self.n_states}) matrix with no all-zero row "
                                 f"to sample from, got shape {p.shape}")
        cdf = np.cumsum(p, axis=1)                                       # (n, n)
        u = rng.random(length - 1)
        out = np.empty(length, dtype=np.int64)
        out[0] = start
        for t in range(1, length):
            row = cdf[out[t - 1]]
            out[t] = min(int(np.searchsorted(row, u[t - 1] * row[-1], side="right")), self.n_states - 1)
        return out

    def log_likelihood(self, sequence) -> float:
        """Natural-log probability of ``sequence``'s transitions (the first state is given).
        ``-inf`` when a transition has probability 0."""
        seq = index_array(sequence, "sequence", self.n_states, ndim=1)
        with np.errstate(divide="ignore"):
            return float(np.log(self.transition_matrix[seq[:-1], seq[1:]]).sum())

    def stationary_distribution(self) -> np.ndarray:
        """The eigenvector of ``transition_matrix.T`` for eigenvalue 1, normalised to sum 1."""
        n = self.n_states
        a = np.vstack([self.transition_matrix.T - np.eye(n), np.ones(n)])
        b = np.zeros(n + 1)
        b[-1] = 1.0
        pi = np.linalg.lstsq(a, b, rcond=None)[0]
        return np.clip(pi, 0, None) / np.clip(pi, 0, None).sum()

    def entropy_rate(self, base: float = 2.0) -> float:
        r""":math:`H = -\sum_a \pi_a \sum_b P_{ab} \log P_{ab}` of the estimated chain."""
        p = self.transition_matrix
        with np.errstate(divide="ignore", invalid="ignore"):
            h_rows = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return float(self.stationary_distribution() @ h_rows) / math.log(base)
