"""Layer normalisation over the last axis of a 2-D array, forward and backward.

``(R, C)`` rows are normalised independently; ``weight``/``bias`` are ``(C,)``. The forward saves
the per-row ``mean`` and ``rstd = 1/sqrt(var + eps)`` (biased variance, as torch), which is all the
backward needs besides the input.
"""

import math

import numpy as np
from numba import njit

from . import FAST, dispatch


def layernorm_forward_numpy(x, weight, bias, eps):
    """x: (R, C), weight/bias: (C,) -> y: (R, C), mean: (R,), rstd: (R,)."""
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=1) + eps)
    y = xc * rstd[:, None] * weight + bias
    return y.astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


@njit(cache=True, nogil=True, fastmath=FAST)   # vectorised row sums
def layernorm_forward_numba(x, weight, bias, eps):
    # x: (R, C), weight: (C,), bias: (C,) -> y: (R, C), mean: (R,), rstd: (R,)
    R, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(R, dtype=x.dtype)
    rstd = np.empty(R, dtype=x.dtype)
    for r in range(R):
        s = 0.0
        for c in range(C):
            s += x[r, c]
        m = s / C
        v = 0.0
        for c in range(C):
            d = x[r, c] - m
            v += d * d
        rs = 1.0 / math.sqrt(v / C + eps)
        mean[r] = m
        rstd[r] = rs
        for c in range(C):
            y[r, c] = (x[r, c] - m) * rs * weight[c] + bias[c]
    return y, mean, rstd


def layernorm_backward_numpy(dy, x, weight, mean, rstd):
    """dy, x: (R, C), weight: (C,), mean/rstd: (R,) -> dx: (R, C), dweight: (C,), dbias: (C,).

    From y = xhat * w + b with xhat = (x - mean) * rstd:
        dxhat = dy * w
        dx    = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))
    """
    xhat = (x - mean[:, None]) * rstd[:, None]
    dxhat = dy * weight
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return dx.astype(x.dtype), (dy * xhat).sum(axis=0), dy.sum(axis=0)


@njit(cache=True, nogil=True, fastmath=FAST)   # vectorised row sums
def layernorm_backward_numba(dy, x, weight, mean, rstd):
    # dy, x: (R, C), weight: (C,), mean/rstd: (R,) -> dx: (R, C), dweight: (C,), dbias: (C,)
    R, C = x.shape
    dx = np.empty_like(x)
    dweight = np.zeros(C, dtype=np.float64)  # float64 accumulators across rows
    dbias = np.zeros(C, dtype=np.float64)
    for r in range(R):
        m = mean[r]
        rs = rstd[r]
        a = 0.0  # sum_c dxhat
        b = 0.0  # sum_c dxhat * xhat
        for c in range(C):
            xhat = (x[r, c] - m) * rs
            dxhat = dy[r, c] * weight[c]
            a += dxhat
            b += dxhat * xhat
            dweight[c] += dy[r, c] * xhat
            dbias[c] += dy[r, c]
        a /= C
        b /= C
        for c in range(C):
            xhat = (x[r, c] - m) * rs
            dx[r, c] = rs * (dy[r, c] * weight[c] - a - xhat * b)
    return dx, dweight.astype(x.dtype), dbias.astype(x.dtype)


layernorm_forward = dispatch(layernorm_forward_numba, layernorm_forward_numpy)
layernorm_backward = dispatch(layernorm_backward_numba, layernorm_backward_numpy)
