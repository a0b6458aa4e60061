"""Row-wise softmax, log-softmax and the fused cross-entropy, over the last axis of a 2-D array.

All kernels take C-contiguous ``(R, C)`` arrays (R rows of C classes); callers reshape and
validate. Every row is shifted by its maximum before ``exp`` (the log-sum-exp trick), so no
finite input overflows. Numba kernels exponentiate a whole row at a time with the vectorised
``exp_inplace`` (``vmath.py``) and accumulate sums in float64 whatever the storage dtype.
"""

import math

import numpy as np
from numba import njit

from . import FAST, dispatch
from .vmath import exp_inplace


@njit(cache=True, inline="always")
def _row_max(x, r):
    m = x[r, 0]
    for c in range(1, x.shape[1]):
        if x[r, c] > m:
            m = x[r, c]
    return m


# --------------------------------------------------------------------------------------------
# softmax: y = exp(x - max) / sum(exp(x - max))
# --------------------------------------------------------------------------------------------
def softmax_forward_numpy(x):
    """x: (R, C) -> y: (R, C), each row summing to 1."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_forward_numba(x):
    # x: (R, C) -> y: (R, C)
    R, C = x.shape
    y = np.empty_like(x)
    bits = np.empty(C, np.int32)                 # scratch for exp_inplace
    for r in range(R):
        m = _row_max(x, r)
        for c in range(C):
            y[r, c] = x[r, c] - m
        exp_inplace(y[r], bits)                  # y[r] = exp(x[r] - m)
        s = 0.0
        for c in range(C):
            s += y[r, c]
        inv = 1.0 / s
        for c in range(C):
            y[r, c] = y[r, c] * inv
    return y


def softmax_backward_numpy(dy, y):
    """dy, y: (R, C) -> dx: (R, C).  From y = softmax(x):  dx = y * (dy - sum(dy * y))."""
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


@njit(cache=True, nogil=True, fastmath=FAST)
def softmax_backward_numba(dy, y):
    # dy, y: (R, C) -> dx: (R, C)
    R, C = y.shape
    dx = np.empty_like(y)
    for r in range(R):
        s = 0.0
        for c in range(C):
            s += dy[r, c] * y[r, c]
        for c in range(C):
            dx[r, c] = y[r, c] * (dy[r, c] - s)
    return dx


# --------------------------------------------------------------------------------------------
# log-softmax: y = x - max - log(sum(exp(x - max)))
# --------------------------------------------------------------------------------------------
def log_softmax_forward_numpy(x):
    """x: (R, C) -> y: (R, C) = x - logsumexp(x)."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@njit(cache=True, nogil=True, fastmath=FAST)
def log_softmax_forward_numba(x):
    # x: (R, C) -> y: (R, C)
    R, C = x.shape
    y = np.empty_like(x)
    bits = np.empty(C, np.int32)
    for r in range(R):
        m = _row_max(x, r)
        for c in range(C):
            y[r, c] = x[r, c] - m
        exp_inplace(y[r], bits)                  # y[r] = exp(x[r] - m), for the sum only
        s = 0.0
        for c in range(C):
            s += y[r, c]
        lse = m + math.log(s)
        for c in range(C):
            y[r, c] = x[r, c] - lse
    return y


def log_softmax_backward_numpy(dy, y):
    """dy, y: (R, C) -> dx.  From y = x - lse(x):  dx = dy - softmax(x) * sum(dy)."""
    return dy - np.exp(y) * dy.sum(axis=1, keepdims=True)


@njit(cache=True, nogil=True, fastmath=FAST)
def log_softmax_backward_numba(dy, y):
    # dy, y: (R, C) -> dx: (R, C)
    R, C = y.shape
    dx = np.empty_like(y)
    bits = np.empty(C, np.int32)
    for r in range(R):
        s = 0.0
        for c in range(C):
            s += dy[r, c]
        dx[r] = y[r]
        exp_inplace(dx[r], bits)                 # softmax = exp(log-softmax)
        for c in range(C):
            dx[r, c] = dy[r, c] - dx[r, c] * s
    return dx


# --------------------------------------------------------------------------------------------
# cross-entropy from logits, fused: loss_r = lse_r - (1 - eps) * x[r, t_r] - eps * mean_c x[r, c]
# (label smoothing eps mixes the one-hot target with the uniform distribution, as torch does)
# --------------------------------------------------------------------------------------------
def cross_entropy_forward_numpy(x, target, ignore_index, smoothing):
    """x: (R, C) logits, target: (R,) int64 -> loss: (R,) per row, lse: (R,) (both 0 where ignored)."""
    R, C = x.shape
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    loss = lse - (1.0 - smoothing) * x[np.arange(R), t]
    if smoothing:
        loss = loss - smoothing * x.mean(axis=1)
    return np.where(keep, loss, 0.0).astype(x.dtype), np.where(keep, lse, 0.0).astype(x.dtype)


@njit(cache=True, nogil=True, fastmath=FAST)
def cross_entropy_forward_numba(x, target, ignore_index, smoothing):
    # x: (R, C) logits, target: (R,) -> loss: (R,), lse: (R,)
    R, C = x.shape
    loss = np.zeros(R, dtype=x.dtype)
    lse = np.zeros(R, dtype=x.dtype)
    buf = np.empty(C, dtype=x.dtype)
    bits = np.empty(C, np.int32)
    for r in range(R):
        t = target[r]
        if t == ignore_index:
            continue
        m = _row_max(x, r)
        for c in range(C):
            buf[c] = x[r, c] - m
        exp_inplace(buf, bits)
        s = 0.0
        total = 0.0
        for c in range(C):
            s += buf[c]
            total += x[r, c]
        lse_r = m + math.log(s)
        lse[r] = lse_r
        loss[r] = lse_r - (1.0 - smoothing) * x[r, t] - smoothing * total / C
    return loss, lse


def cross_entropy_backward_numpy(dloss, x, target, lse, ignore_index, smoothing):
    """dloss: (R,), x: (R, C), target: (R,), lse: (R,) -> dx: (R, C).

    From loss_r = lse_r - (1-eps) x[r,t] - eps mean_c x[r,c]:
        dx[r, c] = dloss_r * (softmax(x)[r, c] - (1-eps) [c == t_r] - eps / C)
    """
    R, C = x.shape
    keep = target != ignore_index
    g = np.where(keep, dloss, 0.0).astype(x.dtype)[:, None]
    dx = (np.exp(x - lse[:, None]) - smoothing / C) * g
    rows = np.nonzero(keep)[0]
    dx[rows, target[rows]] -= (1.0 - smoothing) * g[rows, 0]
    return dx


@njit(cache=True, nogil=True, fastmath=FAST)
def cross_entropy_backward_numba(dloss, x, target, lse, ignore_index, smoothing):
    # dloss: (R,), x: (R, C), target: (R,), lse: (R,) -> dx: (R, C)
    R, C = x.shape
    dx = np.empty_like(x)
    bits = np.empty(C, np.int32)
    for r in range(R):
        t = target[r]
        if t == ignore_index:
            for c in range(C):
                dx[r, c] = 0.0
            continue
        g = dloss[r]
        off = smoothing / C
        for c in range(C):
            dx[r, c] = x[r, c] - lse[r]
        exp_inplace(dx[r], bits)                 # softmax(x)[r]
        for c in range(C):
            dx[r, c] = (dx[r, c] - off) * g
        dx[r, t] -= (1.0 - smoothing) * g
    return dx


softmax_forward = dispatch(softmax_forward_numba, softmax_forward_numpy)
softmax_backward = dispatch(softmax_backward_numba, softmax_backward_numpy)
log_softmax_forward = dispatch(log_softmax_forward_numba, log_softmax_forward_numpy)
log_softmax_backward = dispatch(log_softmax_backward_numba, log_softmax_backward_numpy)
cross_entropy_forward = dispatch(cross_entropy_forward_numba, cross_entropy_forward_numpy)
cross_entropy_backward = dispatch(cross_entropy_backward_numba, cross_entropy_backward_numpy)
