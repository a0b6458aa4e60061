"""Attention's softmax, fused with the scale and the causal mask: one pass per row of scores.

    p[n, i, j] = exp(s[n,i,j]*scale - m) / sum_j' exp(...)   for j allowed,  0 otherwise
    allowed:   j <= i + offset when causal (offset = Tk - Tq: queries are the LAST Tq positions,
               as with a KV cache), every j otherwise; entries already at -inf (an additive mask)
               are excluded too. A row with nothing allowed is all zeros (not NaN).

The backward, fused with the scale too:

    ds[n, i, j] = scale * p[n,i,j] * (dp[n,i,j] - sum_j' dp[n,i,j'] p[n,i,j'])

a masked entry has p = 0, so it gets no gradient; under the causal mask the kernel never reads
the entries above the diagonal (about half of each matrix).

The row sums are vectorised with the ``FAST`` flags (``kernels/__init__.py``): reordered sums,
but NaN and inf keep their IEEE meaning (the all-masked test ``m == -inf`` depends on it).
"""

import numpy as np
from numba import njit

from . import FAST, dispatch
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


@njit(cache=True, nogil=True, fastmath={"nnan", "reassoc"})
def _row_max(row, stop):
    # row: (Tk,) -> max(row[:stop]). ``nnan`` lets LLVM vectorise the max; a NaN score makes the
    # max meaningless but still reaches the output, since exp(NaN - m) is NaN.
    m = -np.inf
    for j in range(stop):
        m = max(m, row[j])
    return m


@njit(cache=True, nogil=True, fastmath=FAST)
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
            for j in range(stop):
                buf[j] = scores[n, i, j] * sc
            m = _row_max(buf, stop)
            if m == -np.inf:                                                         # all masked
                continue
            for j in range(stop):
                buf[j] = buf[j] - m
            exp_inplace(buf[:stop], bits[:stop])
            z = buf.dtype.type(0.0)
            for j in range(stop):
                z += buf[j]
            inv = buf.dtype.type(1.0) / z
            for j in range(stop):
                probs[n, i, j] = buf[j] * inv
    return probs


def attention_softmax_backward_numpy(dprobs, probs, scale, causal, offset):
    """dprobs, probs: (N, Tq, Tk) -> dscores (N, Tq, Tk), the gradient of the raw q.k scores.

    From p = softmax(s * scale):  ds = scale * p * (dp - sum_j dp p).  (``causal``/``offset`` only
    let the Numba twin skip entries where p = 0.)"""
    ds = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    ds *= ds.dtype.type(scale)
    return ds


@njit(cache=True, nogil=True, fastmath=FAST)
def attention_softmax_backward_numba(dprobs, probs, scale, causal, offset):
    # dprobs, probs: (N, Tq, Tk) -> dscores: (N, Tq, Tk)
    N, Tq, Tk = probs.shape
    ds = np.empty_like(probs)
    sc = probs.dtype.type(scale)
    zero = probs.dtype.type(0.0)
    for n in range(N):
        for i in range(Tq):
            stop = max(0, min(Tk, i + offset + 1)) if causal else Tk                # p = 0 from stop on
            dot = zero
            for j in range(stop):
                dot += dprobs[n, i, j] * probs[n, i, j]
            for j in range(stop):
                ds[n, i, j] = sc * probs[n, i, j] * (dprobs[n, i, j] - dot)
            for j in range(stop, Tk):
                ds[n, i, j] = zero
    return ds


attention_softmax = dispatch(attention_softmax_numba, attention_softmax_numpy)
attention_softmax_backward = dispatch(attention_softmax_backward_numba, attention_softmax_backward_numpy)
