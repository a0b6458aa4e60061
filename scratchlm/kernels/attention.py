"""Attention's softmax, fused with the scale and the causal mask: one pass per row of scores.

    p[n, i, j] = exp(s[n,i,j]*scale - m) / sum_j' exp(...)   for j allowed,  0 otherwise
    allowed:   j <= i + offset when causal (offset = Tk - Tq: queries are the LAST Tq positions,
               as with a KV cache), every j otherwise; entries already at -inf (an additive mask)
               are excluded too, whatever the sign of ``scale``. A row with nothing allowed is all
               zeros (not NaN).

The backward, fused with the scale too:

    ds[n, i, j] = scale * (p[n,i,j] dp[n,i,j] - p[n,i,j] sum_j' dp[n,i,j'] p[n,i,j'])

a masked entry has p = 0, so it gets no gradient; under the causal mask the kernel never reads
the entries above the diagonal (about half of each matrix).

Extreme values (both routes agree on every one of these):

* ``s * scale - m`` below ``-max`` (a row with scores -3e38 and 3e38) is ``-inf``, whose ``exp``
  is exactly 0: a row with a huge spread gives a one-hot softmax.
* ``s * scale`` past the max (finite scores, ``|scale| > 1``): the row is redone as
  ``(s - s*) * scale`` with ``s*`` the score that maximises ``s * scale`` (the largest for
  ``scale > 0``, the smallest for ``scale < 0``): the differences are what the softmax needs, and
  the ones that overflow are below ``-max``, i.e. weight 0. The answer is the softmax of the exact
  products, not of their overflow.
* ``+inf`` scores (``scale > 0``) are the limit of scores growing without bound: the row's weight is
  shared equally by its ``+inf`` entries, everything else gets 0 (torch gives NaN).
* a NaN among a row's allowed scores makes that row's allowed entries NaN (never a silent 0).
* the backward's ``<dp, p>`` is a convex combination of dp, clamped to ``[-max, max]`` (only
  rounding can pass them), and ``p (dp - <dp, p>)`` is evaluated as ``p dp - p <dp, p>``: with
  dp near the max, ``dp - <dp, p>`` could overflow where the result does not.

Scores that overflow before they reach this kernel (``q.k`` past the max) are the caller's to
avoid: ``functional/attention.py`` recomputes such rows exactly.

The row sums are vectorised with the ``FAST`` flags (``kernels/__init__.py``): reordered sums,
but NaN and inf keep their IEEE meaning (the all-masked test ``m == -inf`` depends on it).
"""

import numpy as np
from numba import njit

from . import FAST, dispatch
from .vmath import exp_nonpos_inplace


def _allowed_numpy(Tq, Tk, causal, offset):
    """(Tq, Tk) bool: which keys each query may see before the -inf mask."""
    if causal:
        return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + offset
    return np.ones((Tq, Tk), bool)


def attention_softmax_numpy(scores, scale, causal, offset):
    """scores: (N, Tq, Tk) raw q.k -> probs: (N, Tq, Tk)."""
    N, Tq, Tk = scores.shape
    dt = scores.dtype.type
    with np.errstate(over="ignore", invalid="ignore"):
        z = scores * dt(scale)
        if not scale > 0:                                      # keep -inf scores masked
            z = np.where(scores == -np.inf, -np.inf, z)
        if causal:
            z = np.where(_allowed_numpy(Tq, Tk, causal, offset), z, -np.inf)
        m = z.max(axis=-1, keepdims=True)                      # NaN if the row holds a NaN
        rare = ~np.isfinite(m[..., 0])
        if rare.any():
            redo = m[..., 0] == np.inf                         # s*scale overflowed, or +inf
            if redo.any():
                z = _redo_overflowed(scores, z, z != -np.inf, redo, dt(scale))
                m = z.max(axis=-1, keepdims=True)
            empty, nan_rows = m[..., 0] == -np.inf, np.isnan(m[..., 0])
            m = np.where(np.isfinite(m), m, 0)
        e = np.exp(z - m)                                      # masked and far below: 0
        e /= e.sum(axis=-1, keepdims=True)
    if rare.any():
        e[empty] = 0                                           # nothing allowed
        if nan_rows.any():                                     # NaN, on every allowed entry
            e[nan_rows] = np.where(_allowed_numpy(Tq, Tk, causal, offset)[np.nonzero(nan_rows)[1]],
                                   np.nan, 0)
    return e


def _redo_overflowed(scores, z, keep, rows, sc):
    """For the rows whose max of s*scale is +inf: z = (s - s*) * scale (s* maximises s*scale),
    or for rows with +inf scores (scale > 0), 0 at the +inf entries and -inf elsewhere."""
    z = z.copy()
    s = np.where(keep[rows], scores[rows], np.nan)                                   # (r, Tk)
    if sc > 0:
        star = np.nanmax(s, axis=-1, keepdims=True)
    else:
        star = np.nanmin(np.where(s == np.inf, np.nan, s), axis=-1, keepdims=True)
    infinite = star == np.inf                                                        # +inf scores
    d = np.where(infinite, np.where(s == np.inf, 0, -np.inf), (s - star) * sc)
    z[rows] = np.where(keep[rows], d, -np.inf)
    return z


@njit(cache=True, error_model="numpy", nogil=True, fastmath={"nnan", "reassoc"})
def _row_max(row, stop):
    # row: (Tk,) -> max(row[:stop]). ``nnan`` lets LLVM vectorise the max; the caller detects NaN
    # itself (the max of a row holding NaN is meaningless here).
    m = -np.inf
    for j in range(stop):
        m = max(m, row[j])
    return m


@njit(cache=True, error_model="numpy", nogil=True, fastmath=False)
def _has_nan(row, stop):
    for j in range(stop):
        if row[j] != row[j]:
            return True
    return False


@njit(cache=True, error_model="numpy", nogil=True, fastmath=False)
def _overflowed_row(srow, buf, stop, sc):
    # srow: (Tk,) raw scores, buf: (Tk,) -> buf[:stop] = (s - s*) * sc, or for +inf scores 0 at
    # them and -inf elsewhere; masked (-inf) scores stay -inf.
    star = np.nan
    for j in range(stop):
        v = srow[j]
        if v == -np.inf or (sc < 0 and v == np.inf):
            continue
        if star != star or (v > star if sc > 0 else v < star):
            star = v
    for j in range(stop):
        v = srow[j]
        if v == -np.inf:
            buf[j] = -np.inf
        elif star == np.inf:
            buf[j] = 0.0 if v == np.inf else -np.inf
        else:
            buf[j] = (v - star) * sc


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def attention_softmax_numba(scores, scale, causal, offset):
    # scores: (N, Tq, Tk) -> probs: (N, Tq, Tk)
    N, Tq, Tk = scores.shape
    probs = np.zeros_like(scores)
    buf = np.empty(Tk, scores.dtype)
    bits = np.empty(Tk, np.int32)
    sc = scores.dtype.type(scale)
    ninf = scores.dtype.type(-np.inf)
    for n in range(N):
        for i in range(Tq):
            stop = min(Tk, i + offset + 1) if causal else Tk                         # allowed: j < stop
            if stop <= 0:
                continue
            if sc > 0:                                               # -inf * sc = -inf
                for j in range(stop):
                    buf[j] = scores[n, i, j] * sc
            else:                                                    # keep -inf masked
                for j in range(stop):
                    v = scores[n, i, j]
                    buf[j] = ninf if v == ninf else v * sc
            m = _row_max(buf, stop)
            if m == np.inf or m == -np.inf or m != m:                                # rare rows
                if _has_nan(buf, stop):
                    for j in range(stop):
                        probs[n, i, j] = np.nan
                    continue
                if m == -np.inf:                                                     # all masked
                    continue
                _overflowed_row(scores[n, i], buf, stop, sc)                         # exact redo
                m = _row_max(buf, stop)
            for j in range(stop):
                buf[j] = buf[j] - m
            exp_nonpos_inplace(buf[:stop], bits[:stop])
            z = buf.dtype.type(0.0)                                                  # in [1, Tk]
            for j in range(stop):
                z += buf[j]
            inv = buf.dtype.type(1.0) / z
            for j in range(stop):
                probs[n, i, j] = buf[j] * inv
    return probs


def attention_softmax_backward_numpy(dprobs, probs, scale, causal, offset):
    """dprobs, probs: (N, Tq, Tk) -> dscores (N, Tq, Tk), the gradient of the raw q.k scores.

    From p = softmax(s * scale):  ds = scale * (p dp - p sum_j dp p).  (``causal``/``offset``
    only let the Numba twin skip entries where p = 0.)"""
    big = np.finfo(probs.dtype).max
    ds = probs * dprobs
    with np.errstate(over="ignore"):          # past the max only by rounding (clamped), or
        dot = np.clip(ds.sum(axis=-1, keepdims=True), -big, big)          # when the true value is
        ds -= probs * dot
        ds *= ds.dtype.type(scale)
    return ds


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def attention_softmax_backward_numba(dprobs, probs, scale, causal, offset):
    # dprobs, probs: (N, Tq, Tk) -> dscores: (N, Tq, Tk)
    N, Tq, Tk = probs.shape
    ds = np.empty_like(probs)
    sc = probs.dtype.type(scale)
    zero = probs.dtype.type(0.0)
    big = np.finfo(probs.dtype).max
    for n in range(N):
        for i in range(Tq):
            stop = max(0, min(Tk, i + offset + 1)) if causal else Tk                # p = 0 from stop on
            acc = 0.0                                                                # float64
            for j in range(stop):
                acc += dprobs[n, i, j] * probs[n, i, j]
            dot = probs.dtype.type(min(max(acc, -big), big))                         # convex comb.
            for j in range(stop):
                p = probs[n, i, j]
                ds[n, i, j] = sc * (p * dprobs[n, i, j] - p * dot)
            for j in range(stop, Tk):
                ds[n, i, j] = zero
    return ds


attention_softmax = dispatch(attention_softmax_numba, attention_softmax_numpy)
attention_softmax_backward = dispatch(attention_softmax_backward_numba, attention_softmax_backward_numpy)
