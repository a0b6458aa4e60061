r"""Root-mean-square normalisation over the last axis of a 2-D array, forward and backward.

    r = 1 / sqrt(mean_c x_c^2 + eps),     y = x * r * w                    (per row of (R, C))
    g = dy * w,   a = mean_c(g_c * x_c * r),   dx = r * (g - x * r * a),   dw = sum_rows dy * x * r

``rstd`` (``r`` of each row, float64) is all the backward needs besides the input.

Over the whole floating-point range (both routes give the same answer, to round-off):

* Every row is reduced in float64 arithmetic, so a float32 row cannot overflow its sum of
  squares (at most ``C * 1.2e77``) and is rounded once into the output.
* A float64 row whose sum of squares overflows (``|x|`` past ~1e154) or underflows (below
  ~1e-150, where ``eps`` may be tiny or zero) is normalised pre-scaled: ``x 2^-k`` with ``2^k``
  at least its largest magnitude (exact), ``r = 2^-k / sqrt(mean (x 2^-k)^2 + eps 4^-k)``.
  ``x * r`` is then formed as ``(x 2^-e)(r 2^e)`` with ``r 2^e`` in [0.5, 1), because
  ``r`` alone may be subnormal (rows near the float64 max).
* Backward: the same pre-scaled ``x r``; ``g = dy w`` is formed as ``(dy 2^-kd)(w 2^-kw)`` in the
  rows where it or its sums would overflow, and scaled back with one ``ldexp``.
* A row of zeros with ``eps = 0`` has ``r = inf`` and gives NaN (0 * inf), as torch does.
"""

import math

import numpy as np
from numba import njit

from . import FAST, dispatch

#: a sum of squares outside [SMALL, BIG] is redone pre-scaled (float64 rows only)
SMALL, BIG = 2.0 ** -500, 2.0 ** 1000


# ------------------------------------------------------------------------------------------------
# NumPy twins
# ------------------------------------------------------------------------------------------------
def _scaled_rstd_numpy(x64, eps):
    """x64: (r, C) -> rstd (r,) of rows whose plain sum of squares over- or underflows."""
    amax = np.abs(x64).max(axis=1)
    k = np.frexp(amax)[1]                                                   # (r,)
    xs = np.ldexp(x64, -k[:, None])                                         # |xs| < 1, exact
    with np.errstate(over="ignore"):
        e4 = np.ldexp(eps, -2 * k)                     # inf: eps dwarfs the row's mean square
    with np.errstate(divide="ignore"):
        rs = np.ldexp(1.0 / np.sqrt((xs * xs).mean(axis=1) + e4), -k)
    flat = 1.0 / math.sqrt(eps) if eps > 0 else np.inf
    return np.where((amax > 0) & np.isfinite(e4), rs, flat)


def _xhat_numpy(x64, rstd):
    """x * rstd per row, as (x 2^-e)(rstd 2^e): rstd may be subnormal."""
    e = -np.frexp(rstd)[1]                                                  # (R,)
    e = np.where(np.isfinite(rstd) & (rstd > 0), e, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.ldexp(x64, -e[:, None]) * np.ldexp(rstd, e)[:, None]


def rmsnorm_forward_numpy(x, weight, eps):
    """x: (R, C), weight: (C,) -> y: (R, C) x.dtype, rstd: (R,) float64."""
    x64 = x.astype(np.float64, copy=False)
    with np.errstate(over="ignore", under="ignore"):
        ss = np.einsum("ij,ij->i", x64, x64)                                # (R,)
    C = x.shape[1]
    with np.errstate(divide="ignore"):
        rstd = 1.0 / np.sqrt(ss / C + eps)
    bad = ~((ss >= SMALL) & (ss <= BIG))
    if bad.any():
        rstd[bad] = _scaled_rstd_numpy(x64[bad], eps)
    with np.errstate(over="ignore", invalid="ignore"):
        y = _xhat_numpy(x64, rstd) * weight
    return y.astype(x.dtype), rstd


def rmsnorm_backward_numpy(dy, x, weight, rstd):
    """dy, x: (R, C), weight: (C,), rstd: (R,) float64 -> dx (R, C), dweight (C,) in x.dtype."""
    C = x.shape[1]
    xhat = _xhat_numpy(x.astype(np.float64, copy=False), rstd)                  # (R, C) |.| <= sqrt(C)
    dy64, w64 = dy.astype(np.float64, copy=False), weight.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        g = dy64 * w64
        a = np.einsum("ij,ij->i", g, xhat) / C
        dx = rstd[:, None] * (g - xhat * a[:, None])
        dw = np.einsum("ij,ij->j", dy64, xhat)
    bad = ~np.isfinite(dx).all(axis=1) & np.isfinite(rstd)
    for r in np.flatnonzero(bad):                         # dy * w (or its sum) overflowed
        kd = np.frexp(np.abs(dy64[r]).max())[1]
        kw = np.frexp(np.abs(w64).max())[1]
        gs = np.ldexp(dy64[r], -kd) * np.ldexp(w64, -kw)
        e = -np.frexp(rstd[r])[1]
        with np.errstate(over="ignore"):
            dx[r] = np.ldexp(np.ldexp(rstd[r], e) * (gs - xhat[r] * (gs @ xhat[r]) / C),
                             kd + kw - e)
    with np.errstate(over="ignore"):
        return dx.astype(x.dtype), dw.astype(x.dtype)


# ------------------------------------------------------------------------------------------------
# Numba
# ------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _scaled_rstd(xr, eps):
    # xr: (C,) a row whose plain sum of squares over- or underflows -> its rstd
    C = xr.shape[0]
    amax = 0.0
    for c in range(C):
        amax = max(amax, abs(np.float64(xr[c])))
    k = math.frexp(amax)[1]
    e4 = math.ldexp(eps, -2 * k)                     # inf: eps dwarfs the row's mean square
    if amax == 0.0 or e4 == np.inf:
        return 1.0 / math.sqrt(eps) if eps > 0 else np.inf
    s = 0.0
    for c in range(C):
        v = math.ldexp(np.float64(xr[c]), -k)
        s += v * v
    return math.ldexp(1.0 / math.sqrt(s / C + e4), -k)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rstd_exponent(rs):
    # e with rs 2^e in [0.5, 1) (minus the exponent of rs); 0 for rs = 0 or inf
    if rs > 0 and rs < np.inf:
        return -math.frexp(rs)[1]
    return 0


def rmsnorm_forward_numba(x, weight, eps):
    """The Numba twin of :func:`rmsnorm_forward_numpy` (same contract): the rows split over the
    threads (:func:`scratchlm.kernels.split_run`); each row alone, so the same result at any
    thread count."""
    from . import split_run
    from .layernorm import ROWS_GRAIN
    R, C = x.shape
    y = np.empty_like(x)
    rstd = np.empty(R, dtype=np.float64)
    split_run(lambda lo, hi: _forward_rows(x[lo:hi], weight, eps, y[lo:hi], rstd[lo:hi]), R,
              max(1, ROWS_GRAIN // max(C, 1)))
    return y, rstd


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _forward_rows(x, weight, eps, y, rstd):
    # x: (R, C), weight: (C,) -> y: (R, C), rstd: (R,) float64
    R, C = x.shape
    for r in range(R):
        s = 0.0
        for c in range(C):
            v = np.float64(x[r, c])
            s += v * v
        if s >= SMALL and s <= BIG:
            rs = 1.0 / math.sqrt(s / C + eps)
        else:
            rs = _scaled_rstd(x[r], eps)
        rstd[r] = rs
        e = _rstd_exponent(rs)
        if e == 0:
            for c in range(C):
                y[r, c] = np.float64(x[r, c]) * rs * weight[c]
        else:
            f, rse = math.ldexp(1.0, -e), math.ldexp(rs, e)
            for c in range(C):
                y[r, c] = (np.float64(x[r, c]) * f) * rse * weight[c]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _scaled_row_backward(dyr, xr, w, rs, dxr):
    # dy * w overflowed in this row: g = (dy 2^-kd)(w 2^-kw), dx scaled back by one ldexp
    C = xr.shape[0]
    kd, kw, e = 0, 0, _rstd_exponent(rs)
    amax = 0.0
    for c in range(C):
        amax = max(amax, abs(np.float64(dyr[c])))
    kd = math.frexp(amax)[1]
    amax = 0.0
    for c in range(C):
        amax = max(amax, abs(np.float64(w[c])))
    kw = math.frexp(amax)[1]
    rse = math.ldexp(rs, e)
    a = 0.0
    for c in range(C):
        xh = math.ldexp(np.float64(xr[c]), -e) * rse
        a += math.ldexp(np.float64(dyr[c]), -kd) * math.ldexp(np.float64(w[c]), -kw) * xh
    a /= C
    for c in range(C):
        xh = math.ldexp(np.float64(xr[c]), -e) * rse
        g = math.ldexp(np.float64(dyr[c]), -kd) * math.ldexp(np.float64(w[c]), -kw)
        dxr[c] = math.ldexp(rse * (g - xh * a), kd + kw - e)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def rmsnorm_backward_numba(dy, x, weight, rstd):
    # dy, x: (R, C), weight: (C,), rstd: (R,) -> dx (R, C), dweight (C,)
    R, C = x.shape
    dx = np.empty_like(x)
    dw = np.zeros(C, dtype=np.float64)
    row = np.empty(C, dtype=np.float64)
    for r in range(R):
        rs = rstd[r]
        e = _rstd_exponent(rs)
        f, rse = math.ldexp(1.0, -e), math.ldexp(rs, e)
        a = 0.0
        for c in range(C):
            xh = (np.float64(x[r, c]) * f) * rse                 # x r, |x r| <= sqrt(C)
            a += np.float64(dy[r, c]) * weight[c] * xh
            dw[c] += np.float64(dy[r, c]) * xh
        a /= C
        bad = 0.0
        for c in range(C):
            xh = (np.float64(x[r, c]) * f) * rse
            v = rs * (np.float64(dy[r, c]) * weight[c] - xh * a)
            row[c] = v
            bad += v * 0.0         # NaN if some v is inf or NaN (no branch: the loop vectorises)
        if bad != bad and abs(rs) < np.inf:
            _scaled_row_backward(dy[r], x[r], weight, rs, row)
        for c in range(C):
            dx[r, c] = row[c]
    return dx, dw.astype(x.dtype)


rmsnorm_forward = dispatch(rmsnorm_forward_numba, rmsnorm_forward_numpy)
rmsnorm_backward = dispatch(rmsnorm_backward_numba, rmsnorm_backward_numpy)
