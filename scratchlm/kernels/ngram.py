"""Counting transitions of a first-order chain: ``counts[a, b] = #{t : s_t = a, s_{t+1} = b}``."""

import numpy as np
from numba import njit

from . import dispatch


def count_transitions_numpy(seq, n_states):
    """seq: (L,) int64 states in [0, n_states) -> counts: (n_states, n_states) int64."""
    pairs = seq[:-1] * n_states + seq[1:]                       # (L-1,) flat index of (a, b)
    return np.bincount(pairs, minlength=n_states * n_states).reshape(n_states, n_states).astype(np.int64)


@njit(cache=True, nogil=True)
def count_transitions_numba(seq, n_states):
    # seq: (L,) -> counts: (n_states, n_states)
    counts = np.zeros((n_states, n_states), dtype=np.int64)
    for t in range(seq.shape[0] - 1):
        counts[seq[t], seq[t + 1]] += 1
    return counts


count_transitions = dispatch(count_transitions_numba, count_transitions_numpy)
