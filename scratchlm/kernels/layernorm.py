"""Layer normalisation over the last axis of a 2-D array, forward and backward.

``(R, C)`` rows are normalised independently; ``weight``/``bias`` are ``(C,)``. The forward saves
the per-row ``mean`` and ``rstd = 1/sqrt(var + eps)`` (biased variance, as torch), which is all the
backward needs besides the input.

Over the whole floating-point range (both routes give the same answer, to round-off):

* A float32 row cannot overflow the statistics: the Numba kernel computes them and the
  normalised row in float64 arithmetic and rounds once into the output (the squares
  ``(x - mean)^2`` stay below ``4 * 3.4e38^2 = 4.6e77``); its NumPy twin works in float32 (the
  mean accumulated in float64 and subtracted in two parts, so ``x - mean`` is exact to a float32
  ulp of the difference) and redoes in float64 any row where float32 overflows. So a row whose
  variance exceeds float32's max (``[3e38, -3e38, ...]``) still normalises exactly, where
  float32 arithmetic (and torch) gives NaN. ``mean`` and ``rstd`` are returned in float64:
  ``rstd`` of such a row (~3e-39) is below float32's normal range.
* A float64 row whose sum or sum of squares overflows is redone with a pre-scale: divided by
  ``2^k`` at least its largest magnitude (exact), normalised, and ``mean = mean' 2^k``,
  ``rstd = 2^-k / sqrt(var' + eps 4^-k)`` (``_scaled_row_forward``); a constant row gives
  ``xhat = 0`` (``rstd = 1/sqrt(eps)``).
* Backward: float32 rows as in the forward (float64 in Numba, where ``dy * w`` cannot overflow;
  float32 with float64 redos in NumPy). A float64 row is redone with pre-scales
  (``_scaled_row_backward``) when ``dy * w`` or its sums overflow, when ``rstd`` is below
  ``2^-1000`` (then ``x - mean`` may overflow: ``xhat`` is formed as
  ``(x 2^e - mean 2^e) (rstd 2^-e)``) or when a result is non-finite although it may be
  representable; the result is scaled back with one ``ldexp`` (one rounding; overflow to inf only
  if the true value is past the max). ``dweight``/``dbias`` are sums over rows: they overflow
  only where those sums do.
* The rescaled helpers set ``fastmath=False`` explicitly (Numba would otherwise compile them
  with their caller's ``FAST`` flags).
"""

import math

import numpy as np
from numba import njit

from . import FAST, dispatch

TINY_RSTD = 2.0 ** -1000      # below: x - mean may overflow in float64; xhat is formed pre-scaled


# ------------------------------------------------------------------------------------------------
# the rare rows: pre-scaled by powers of two (exact); NumPy forms below
# ------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _scaled_row_forward(xr, w, b, eps, yr):
    # xr, yr: (C,), w, b: (C,) -> (mean, rstd) of xr; yr = xhat * w + b. For rows whose sums
    # overflow: work on x / 2^k, k the exponent of max|x| (every |x / 2^k| < 1).
    C = xr.shape[0]
    amax = 0.0
    for c in range(C):
        amax = max(amax, abs(np.float64(xr[c])))
    k = math.frexp(amax)[1]
    f = math.ldexp(1.0, -k)                          # 2^-k (a subnormal power of two is exact too)
    s = 0.0
    for c in range(C):
        s += xr[c] * f
    m1 = s / C
    v = 0.0
    for c in range(C):
        d = xr[c] * f - m1
        v += d * d
    den = v / C + math.ldexp(eps, -2 * k)            # (var + eps) / 4^k
    if den > 0:
        rs1 = 1.0 / math.sqrt(den)
        rs = math.ldexp(rs1, -k)
    else:                                            # a constant row (eps / 4^k underflowed)
        rs1 = 0.0 if eps > 0 else np.inf
        rs = 1.0 / math.sqrt(eps)
    for c in range(C):
        yr[c] = (xr[c] * f - m1) * rs1 * w[c] + b[c]
    return math.ldexp(m1, k), rs


@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _exponent_of_max(a):
    # a: (n,) -> the exponent k of max|a| (max|a| = f 2^k, f in [0.5, 1)); 0 for all zeros
    amax = 0.0
    for i in range(a.shape[0]):
        amax = max(amax, abs(np.float64(a[i])))
    return math.frexp(amax)[1]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _scaled_row_backward(dyr, xr, w, m, rs, kw, dxr, dweight, dbias, accumulate):
    # dyr, xr, dxr: (C,), w: (C,), kw: the exponent of max|w|. dxr = the row's dx, computed with
    # xhat = (x 2^e - m 2^e) (rs 2^-e), g = (dy 2^-kd) (w 2^-kw), one ldexp back at the end.
    # accumulate: also add this row's terms to dweight, dbias (C,) float64.
    C = xr.shape[0]
    e = min(math.frexp(rs)[1], 0)                    # scale x down only (rs < 1: a wide row)
    rs1 = math.ldexp(rs, -e)                         # in [0.5, 1), or rs itself when rs >= 0.5
    mx = math.ldexp(m, e)
    kd = _exponent_of_max(dyr)
    a = 0.0
    b = 0.0
    for c in range(C):
        xhat = (math.ldexp(np.float64(xr[c]), e) - mx) * rs1
        g = math.ldexp(np.float64(dyr[c]), -kd) * math.ldexp(np.float64(w[c]), -kw)
        a += g
        b += g * xhat
    a /= C
    b /= C
    for c in range(C):
        xhat = (math.ldexp(np.float64(xr[c]), e) - mx) * rs1
        g = math.ldexp(np.float64(dyr[c]), -kd) * math.ldexp(np.float64(w[c]), -kw)
        dxr[c] = math.ldexp(rs1 * (g - a - xhat * b), kd + kw + e)
        if accumulate:
            dweight[c] += dyr[c] * xhat
            dbias[c] += dyr[c]


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
def _scaled_rows_forward_numpy(x, w, b, eps):
    """x: (r, C) float64 rows whose sums overflow -> y (r, C), mean (r,), rstd (r,): the NumPy
    form of ``_scaled_row_forward``."""
    k = np.frexp(np.abs(x).max(axis=1))[1]                                  # (r,)
    xs = np.ldexp(x, -k[:, None])                                           # |xs| < 1, exact
    m1 = xs.mean(axis=1)
    d = xs - m1[:, None]
    den = (d * d).mean(axis=1) + np.ldexp(eps, -2 * k)
    with np.errstate(divide="ignore"):
        rs1 = np.where(den > 0, 1.0 / np.sqrt(den), 0.0 if eps > 0 else np.inf)
        rs = np.where(den > 0, np.ldexp(rs1, -k), 1.0 / np.sqrt(eps))
    with np.errstate(invalid="ignore"):
        return d * rs1[:, None] * w + b, np.ldexp(m1, k), rs


def _split(mean):
    """mean: (R,) float64 -> (hi, lo) float32 columns with hi + lo = mean to ~2^-48: then
    ``(x - hi) - lo`` is x - mean to float32 round-off of the difference, not of the mean."""
    hi = mean.astype(np.float32)
    return hi[:, None], (mean - hi).astype(np.float32)[:, None]


def layernorm_forward_numpy(x, weight, bias, eps):
    """x: (R, C), weight/bias: (C,) -> y: (R, C) x.dtype, mean: (R,) float64, rstd: (R,) float64.

    float32 rows take float32 arithmetic (the mean accumulated in float64 and subtracted in two
    parts), and are redone in float64 (exact for float32 input) where that overflows: a variance
    past float32's max, or ``(x - mean)^2`` past it."""
    if x.dtype == np.float64:
        return _forward_float64(x, weight, bias, eps)
    C = x.shape[1]
    mean = np.einsum("ij->i", x, dtype=np.float64) / C
    hi, lo = _split(mean)
    with np.errstate(over="ignore", invalid="ignore"):     # wide rows are redone below
        xc = x - hi
        xc -= lo
        var = np.einsum("ij,ij->i", xc, xc) / np.float32(C)
        wide = ~np.isfinite(var)
        rstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    with np.errstate(divide="ignore", invalid="ignore"):   # eps = 0 and a constant row: NaN
        y = xc
        y *= rstd.astype(np.float32)[:, None]
        y *= weight
        y += bias
    if wide.any():
        y64, mean[wide], rstd[wide] = _forward_float64(x[wide].astype(np.float64),
                                                       weight.astype(np.float64),
                                                       bias.astype(np.float64), eps)
        with np.errstate(over="ignore"):
            y[wide] = y64
    return y, mean, rstd


def _forward_float64(x64, weight, bias, eps):
    """The float64 forward (float64 rows, or float32 rows that overflow float32 arithmetic)."""
    w64, b64 = weight.astype(np.float64, copy=False), bias.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):     # overflowing rows are redone below
        mean = x64.mean(axis=1)
        xc = x64 - mean[:, None]
        var = (xc * xc).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):   # eps = 0 and a constant row: NaN
        rstd = 1.0 / np.sqrt(var + eps)
        y = xc * rstd[:, None] * w64 + b64
    bad = ~np.isfinite(var)
    if bad.any():
        y[bad], mean[bad], rstd[bad] = _scaled_rows_forward_numpy(x64[bad], w64, b64, eps)
    return y, mean, rstd


def layernorm_forward_numba(x, weight, bias, eps):
    """The Numba twin of :func:`layernorm_forward_numpy` (same contract): the rows split over
    the threads (:func:`scratchlm.kernels.split_run`). Each row is normalised alone, so the
    result is the same at any thread count."""
    from . import split_run
    R, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(R, dtype=np.float64)
    rstd = np.empty(R, dtype=np.float64)
    split_run(lambda lo, hi: _forward_rows(x[lo:hi], weight, bias, eps, y[lo:hi], mean[lo:hi],
                                           rstd[lo:hi]), R, max(1, ROWS_GRAIN // max(C, 1)))
    return y, mean, rstd


#: entries per thread below which a normalisation runs in the calling thread
ROWS_GRAIN = 1 << 16


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")   # vectorised row sums
def _forward_rows(x, weight, bias, eps, y, mean, rstd):
    # x: (R, C), weight: (C,), bias: (C,) -> y: (R, C), mean: (R,) float64, rstd: (R,) float64
    R, C = x.shape
    for r in range(R):
        s = 0.0
        for c in range(C):
            s += x[r, c]
        m = s / C
        v = 0.0
        for c in range(C):
            d = x[r, c] - m                      # float64 arithmetic, whatever x's dtype
            v += d * d
        if math.isinf(v) or v != v:              # a float64 row past the squares' range (or NaN)
            m, rs = _scaled_row_forward(x[r], weight, bias, eps, y[r])
        else:
            rs = 1.0 / math.sqrt(v / C + eps)
            for c in range(C):
                y[r, c] = (x[r, c] - m) * rs * weight[c] + bias[c]
        mean[r] = m
        rstd[r] = rs


# ------------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------------
def layernorm_backward_numpy(dy, x, weight, mean, rstd):
    """dy, x: (R, C), weight: (C,), mean/rstd: (R,) float64 -> dx: (R, C), dweight: (C,),
    dbias: (C,) (x's dtype).

    From y = xhat * w + b with xhat = (x - mean) * rstd:
        dxhat = dy * w
        dx    = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))

    float32 rows take float32 arithmetic and are redone in float64 (exact) where that overflows
    (``dy * w``, its sums, dx) or where rstd is below float32's normal range."""
    if x.dtype == np.float64:
        dx, xhat = _backward_float64(dy, x, weight, mean, rstd)
        with np.errstate(over="ignore"):
            return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)
    C = x.shape[1]
    hi, lo = _split(mean)
    rs = rstd.astype(np.float32)[:, None]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):   # bad rows: redone below
        xhat = x - hi
        xhat -= lo
        xhat *= rs
        g = dy * weight
        a = g.mean(axis=1, keepdims=True)
        b = np.einsum("ij,ij->i", g, xhat)[:, None] / np.float32(C)
        dx = g
        dx -= a
        dx -= xhat * b
        dx *= rs
        bad = (~np.isfinite(a[:, 0]) | ~np.isfinite(b[:, 0]) | (rstd < 1e-37)
               | ~np.isfinite(dx).all(axis=1))
    if bad.any():
        dx64, xhat64 = _backward_float64(dy[bad].astype(np.float64), x[bad].astype(np.float64),
                                         weight.astype(np.float64), mean[bad], rstd[bad])
        with np.errstate(over="ignore"):
            dx[bad] = dx64
        xhat[bad] = xhat64
    with np.errstate(over="ignore"):
        return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def _backward_float64(dy64, x64, w, mean, rstd):
    """The float64 backward: -> dx (R, C), xhat (R, C) (float64 rows, or float32 rows that
    overflow float32 arithmetic)."""
    w64 = w.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):     # overflowing rows are redone below
        xhat = (x64 - mean[:, None]) * rstd[:, None]
        g = dy64 * w64
        a = g.mean(axis=1, keepdims=True)
        b = (g * xhat).mean(axis=1, keepdims=True)
        dx = rstd[:, None] * (g - a - xhat * b)
    redo = ~np.isfinite(a[:, 0]) | ~np.isfinite(b[:, 0]) | (rstd < TINY_RSTD)     # xhat unsafe too
    redo_dx = ~redo & ~np.isfinite(dx).all(axis=1)                              # dx only
    rows = redo | redo_dx
    if rows.any():
        xh, dx[rows] = _scaled_rows_backward_numpy(dy64[rows], x64[rows], w64, mean[rows],
                                                   rstd[rows])
        xhat[redo] = xh[redo[rows]]
    return dx, xhat


def _scaled_rows_backward_numpy(dy, x, w, m, rs):
    """dy, x: (r, C) float64, w: (C,), m, rs: (r,) -> xhat (r, C), dx (r, C): the NumPy form of
    ``_scaled_row_backward``."""
    C = x.shape[1]
    e = np.minimum(np.frexp(rs)[1], 0)[:, None]                  # (r, 1): x scaled down only
    rs1 = np.ldexp(rs[:, None], -e)                              # in [0.5, 1), or rs >= 0.5
    xhat = (np.ldexp(x, e) - np.ldexp(m[:, None], e)) * rs1
    kd = np.frexp(np.abs(dy).max(axis=1))[1][:, None]
    kw = np.frexp(np.abs(w).max())[1]
    g = np.ldexp(dy, -kd) * np.ldexp(w, -kw)
    a = g.sum(axis=1, keepdims=True) / C
    b = (g * xhat).sum(axis=1, keepdims=True) / C
    with np.errstate(over="ignore"):
        return xhat, np.ldexp(rs1 * (g - a - xhat * b), kd + kw + e)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")   # vectorised row sums
def layernorm_backward_numba(dy, x, weight, mean, rstd):
    # dy, x: (R, C), weight: (C,), mean/rstd: (R,) float64 -> dx: (R, C), dweight: (C,), dbias: (C,)
    R, C = x.shape
    dx = np.empty_like(x)
    dweight = np.zeros(C, dtype=np.float64)  # float64 accumulators across rows
    dbias = np.zeros(C, dtype=np.float64)
    kw = -1                                  # the exponent of max|w|, found when first needed
    for r in range(R):
        m = mean[r]
        rs = rstd[r]
        a = 0.0  # sum_c dxhat
        b = 0.0  # sum_c dxhat * xhat
        for c in range(C):
            xhat = (x[r, c] - m) * rs
            dxhat = np.float64(dy[r, c]) * weight[c]     # float64: no float32 overflow
            a += dxhat
            b += dxhat * xhat
        if math.isinf(a) or math.isinf(b) or a != a or b != b or rs < TINY_RSTD:
            if kw == -1:
                kw = _exponent_of_max(weight)
            _scaled_row_backward(dy[r], x[r], weight, m, rs, kw, dx[r], dweight, dbias, True)
            continue
        a /= C
        b /= C
        bad = 0.0
        for c in range(C):
            xhat = (x[r, c] - m) * rs
            v = rs * (np.float64(dy[r, c]) * weight[c] - a - xhat * b)
            dx[r, c] = v
            bad += v * 0.0                       # NaN if some v is inf or NaN
            dweight[c] += dy[r, c] * xhat
            dbias[c] += dy[r, c]
        if bad != bad:                           # float64 rows only: redo dx, pre-scaled
            if kw == -1:
                kw = _exponent_of_max(weight)
            _scaled_row_backward(dy[r], x[r], weight, m, rs, kw, dx[r], dweight, dbias, False)
    return dx, dweight.astype(x.dtype), dbias.astype(x.dtype)


layernorm_forward = dispatch(layernorm_forward_numba, layernorm_forward_numpy)
layernorm_backward = dispatch(layernorm_backward_numba, layernorm_backward_numpy)
