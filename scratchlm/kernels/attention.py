"""Attention's softmax, fused with the scale and the causal mask: one pass per row of scores.

    p[n, i, j] = exp(s[n,i,j]*scale - m) / sum_j' exp(...)   for j allowed,  0 otherwise
    allowed:   j <= i + offset when causal (offset = Tk - Tq: queries are the LAST Tq positions,
               as with a KV cache), every j otherwise; entries already at -inf (an additive mask)
               are excluded too. A row with nothing allowed is all zeros (not NaN).

The backward is the plain softmax backward (``kernels/softmax.py``): a masked entry has p = 0, so
``p * (dp - <dp, p>)`` gives it no gradient.
"""

import numpy as np
from numba import njit

from . import dispatch
from .vmath import exp_inplace


def attention_softmax_numpy(scores, scale, causal, offset):
    """scores: (N, Tq, Tk) raw q.k -> probs: (N, Tq, Tk)."""
    N, Tq, Tk = scores.shape
    s = scores * scores.dtype.type(scale)
    if causal:
        allowed = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + offset          # (Tq, Tk)
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    empty = ~np.isfinite(m)                                                          # nothing allowed
    with np.errstate(invalid="ignore"):
        e = np.exp(s - np.where(empty, 0, m))
    e = np.where(empty, 0, e)
    z = e.sum(axis=-1, keepdims=True)
    return (e / np.where(z == 0, 1, z)).astype(scores.dtype)


@njit(cache=True, nogil=True)
def attention_softmax_numba(scores, scale, causal, offset):
    # scores: (N, Tq, Tk) -> probs: (N, Tq, Tk)
    N, Tq, Tk = scores.shape
    probs = np.zeros_like(scores)
    buf = np.empty(Tk, scores.dtype)
    bits = np.empty(Tk, np.int32)
    sc = scores.dtype.type(scale)
    for n in range(N):
        for i in range(Tq):
            stop = min(Tk, i + offset + 1) if causal else Tk                         # allowed: j < stop
            if stop <= 0:
                continue
            m = -np.inf
            for j in range(stop):
                v = scores[n, i, j] * sc
                buf[j] = v
                if v > m:
                    m = v
            if m == -np.inf:                                                         # all masked
                continue
            for j in range(stop):
                buf[j] = buf[j] - m
            exp_inplace(buf[:stop], bits[:stop])
            z = 0.0
            for j in range(stop):
                z += buf[j]
            inv = 1.0 / z
            for j in range(stop):
                probs[n, i, j] = buf[j] * inv
    return probs


attention_softmax = dispatch(attention_softmax_numba, attention_softmax_numpy)
