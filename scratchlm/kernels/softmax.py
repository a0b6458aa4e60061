"""Row-wise softmax, log-softmax and the fused cross-entropy, over the last axis of a 2-D array.

All kernels take C-contiguous ``(R, C)`` arrays (R rows of C classes); callers reshape and
validate. Every row is shifted by its maximum before ``exp`` (the log-sum-exp trick), so no
finite input overflows. Numba kernels exponentiate a whole row at a time with the vectorised
``exp_nonpos_inplace`` (``vmath.py``; every argument here is <= 0) and accumulate sums in
float64 whatever the storage dtype.

Over the whole floating-point range (any finite input up to the dtype's max, both routes):

* ``x - max`` may be below ``-max`` (a row holding -3e38 and 3e38): it is then ``-inf``, whose
  ``exp`` is exactly 0 -- the right limit: a row with a huge spread gives a one-hot softmax.
* row sums are accumulated in float64 (both routes); a float32 row of C values, even all at
  float32's max, cannot overflow them. float64 rows that can (log-softmax's ``sum(dy)``) are
  redone with a power-of-two pre-scale (``_scale_for``), so an upstream gradient near float64's max
  still gives the finite answer whenever that answer is representable.
* backward formulas are arranged so that no intermediate exceeds the result by more than a
  bounded factor: softmax's ``y * (dy - <dy, y>)`` is evaluated as ``y dy - y <dy, y>`` (each
  product at most ``|dy|``), and ``<dy, y>``, a convex combination of ``dy``, is clamped to
  ``[-max, max]`` (it can only pass them by rounding).
* log-softmax's result is ``-inf`` exactly when ``x_c - lse`` is below ``-max`` (not
  representable: the correctly rounded overflow); otherwise it is finite.
* ``log sum exp(x - max)`` is ``log k + log1p(rest / k)`` (k entries at the max, each exactly 1)
  wherever the plain log of a sum near 1 would keep only that sum's round-off: always for
  float64 rows, for float32 rows below ``NEAR_ONE`` (``_log_sum``; a confident row's loss of
  1e-13 is then right to a few ulps, not to 0.2%).
* ``log sum exp(x - max)`` is never added to the max: at |max| ~ 3e38 (or 1e308) ``max + log 2``
  is ``max``, so log-softmax is ``(x - max) - ls`` and cross-entropy keeps ``(max, ls)`` per row
  (its backward's softmax is ``exp((x - max) - ls)``, not ``exp(x - lse)``).
* cross-entropy's per-row losses are returned in float64 (the reduction sums them without
  overflow; ``reduction='none'`` rounds them to the input's dtype) and are formed as
  ``(1 - eps)((max - x_t) + ls) + eps ((max - mean x) + ls)``: non-negative terms, no
  cancellation of huge values; the row mean is accumulated as ``sum(x / C)``, which cannot
  overflow.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import FAST, dispatch
from .vmath import exp_nonpos_inplace


@njit(cache=True, error_model="numpy", inline="always")
def _scale_for(C):
    """A power of two ``2^k >= C``: a sum of C values, each divided by it, cannot overflow."""
    return 2.0 ** math.ceil(math.log2(max(C, 1)))


#: below this sum of exp(x - max), log(sum) is taken as log1p(sum of the entries below the max):
#: the log of a sum near 1 keeps only that sum's round-off (float64 sums of float32 values:
#: C 1e-16 absolute; above 1 + 2^-10 that is under a float32 ulp of the log up to C ~ 5e5)
NEAR_ONE = 1.0 + 2.0 ** -10


def _log_sum_numpy(e):
    """e: (R, C) = exp(x - max), the row maxima exactly 1 -> (R,) float64 log(sum(e)), as
    ``log k + log1p(rest / k)`` (k entries at the max, ``rest`` the sum of the others) where
    the plain log of the sum would lose digits: always for float64 rows, for float32 rows when
    the sum is below ``NEAR_ONE`` (a confident row; k = 1 then). A float64 sum of float32 values
    is enough elsewhere."""
    if e.dtype == np.float32:
        s = np.einsum("ij->i", e, dtype=np.float64)
        ls = np.log(s)
        near = s < NEAR_ONE
        if near.any():
            en = e[near]
            ls[near] = np.log1p(np.where(en < 1, en, 0).sum(axis=1, dtype=np.float64))
        return ls
    ones = e == 1
    k = ones.sum(axis=1)
    rest = np.where(ones, 0, e).sum(axis=1)
    return np.log(k) + np.log1p(rest / k)


def _log_sum(e):
    """e: (C,) = exp(x - max) -> log(sum(e)) (see _log_sum_numpy): an overload per dtype."""
    return float(_log_sum_numpy(e[None])[0])


@overload(_log_sum, inline="always")
def _log_sum_overload(e):
    if e.dtype == types.float32:
        def impl(e):
            s = 0.0                              # a float64 sum of float32 values
            for c in range(e.shape[0]):
                s += e[c]
            if s >= NEAR_ONE:
                return math.log(s)
            rest = 0.0                           # a confident row: k = 1, the rest exactly
            for c in range(e.shape[0]):
                v = e[c]
                rest += v * np.float32(v < np.float32(1.0))
            return math.log1p(rest)
        return impl

    def impl(e):                                 # float64: log k + log1p(rest / k), always
        k = 0.0
        rest = 0.0
        for c in range(e.shape[0]):
            v = e[c]
            below = np.float64(v < 1.0)          # arithmetic masks: the loop stays vectorised
            k += 1.0 - below
            rest += v * below
        return math.log(k) + math.log1p(rest / k)
    return impl


@njit(cache=True, error_model="numpy", inline="always")
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
    with np.errstate(over="ignore"):          # x - max below -max: -inf, and exp(-inf) = 0
        e = np.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)         # a sum in [1, C]: float32 is enough here
    return e


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def softmax_forward_numba(x):
    # x: (R, C) -> y: (R, C)
    R, C = x.shape
    y = np.empty_like(x)
    bits = np.empty(C, np.int32)                 # scratch for exp_nonpos_inplace
    for r in range(R):
        m = _row_max(x, r)
        for c in range(C):
            y[r, c] = x[r, c] - m                # below -max: -inf, whose exp is 0
        exp_nonpos_inplace(y[r], bits)  # y[r] = exp(x[r] - m)
        s = 0.0
        for c in range(C):
            s += y[r, c]
        inv = 1.0 / s
        for c in range(C):
            y[r, c] = y[r, c] * inv
    return y


def softmax_backward_numpy(dy, y):
    """dy, y: (R, C) -> dx: (R, C).  From y = softmax(x):  dx = y * (dy - sum(dy * y)),
    evaluated as ``y dy - y s`` with ``s = sum(dy * y)`` clamped to the dtype's range (a convex
    combination of dy), so dy near the max cannot overflow ``dy - s``."""
    big = np.finfo(y.dtype).max
    t = dy * y
    with np.errstate(over="ignore"):          # only by rounding, at +-max: clamped back
        s = np.clip(t.sum(axis=1, keepdims=True), -big, big)
    u = y * s
    np.subtract(t, u, out=u)
    return u


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def softmax_backward_numba(dy, y):
    # dy, y: (R, C) -> dx: (R, C)
    R, C = y.shape
    dx = np.empty_like(y)
    big = np.finfo(y.dtype).max
    for r in range(R):
        s = 0.0
        for c in range(C):
            s += dy[r, c] * y[r, c]
        s = min(max(s, -big), big)               # a convex combination of dy: only rounding passes
        for c in range(C):
            dx[r, c] = y[r, c] * dy[r, c] - y[r, c] * s      # y (dy - s), no overflow of dy - s
    return dx


# --------------------------------------------------------------------------------------------
# log-softmax: y = x - max - log(sum(exp(x - max)))
# --------------------------------------------------------------------------------------------
def log_softmax_forward_numpy(x):
    """x: (R, C) -> y: (R, C) = x - logsumexp(x)."""
    with np.errstate(over="ignore"):          # x - max below -max: -inf (the true value is too)
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - _log_sum_numpy(np.exp(shifted))[:, None].astype(x.dtype)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def log_softmax_forward_numba(x):
    # x: (R, C) -> y: (R, C)
    R, C = x.shape
    y = np.empty_like(x)
    bits = np.empty(C, np.int32)
    for r in range(R):
        m = _row_max(x, r)
        for c in range(C):
            y[r, c] = x[r, c] - m
        exp_nonpos_inplace(y[r], bits)  # y[r] = exp(x[r] - m), for the sum only
        ls = _log_sum(y[r])
        for c in range(C):
            y[r, c] = (x[r, c] - m) - ls         # not x - (m + ls): at |m| ~ 3e38, m + ls = m
    return y


def log_softmax_backward_numpy(dy, y):
    """dy, y: (R, C) -> dx.  From y = x - lse(x):  dx = dy - softmax(x) * sum(dy).

    ``sum(dy)`` is accumulated in float64 (as the Numba twin); a float32 row whose sum passes
    float32's max is evaluated in float64 and rounded once, a float64 row whose sum overflows
    is redone in units of ``2^k >= C``."""
    p = np.exp(y)
    if dy.dtype == np.float32:
        s = np.einsum("ij->i", dy, dtype=np.float64)[:, None]           # float64 accumulation
        big = np.abs(s[:, 0]) > np.finfo(np.float32).max
        with np.errstate(over="ignore", invalid="ignore"):  # past the max: inf; big rows: below
            fixed = (dy[big] - p[big] * s[big]).astype(np.float32) if big.any() else None
            p *= s.astype(np.float32)                       # in place: p becomes dx
            np.subtract(dy, p, out=p)
        if fixed is not None:
            p[big] = fixed
        return p
    with np.errstate(over="ignore", invalid="ignore"):     # rows whose sum overflows: redone
        s = dy.sum(axis=1, keepdims=True)
        dx = dy - p * s
    bad = ~np.isfinite(s[:, 0])          # inf, or NaN where partial sums overflowed both ways
    if bad.any():
        k = _scale_for(dy.shape[1])
        d = dy[bad] * (1.0 / k)
        t = p[bad] * d.sum(axis=1, keepdims=True)      # p * sum(dy) / k: finite
        with np.errstate(over="ignore"):
            u = t * k
            dx[bad] = np.where(np.isinf(u), (d - t) * k, dy[bad] - u)
    return dx


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
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
        exp_nonpos_inplace(dx[r], bits)  # softmax = exp(log-softmax)
        if math.isfinite(s):                     # always, for float32 rows (float64 sums)
            for c in range(C):
                dx[r, c] = dy[r, c] - dx[r, c] * s
        else:                                    # a float64 row whose sum(dy) overflows (or NaN)
            _log_softmax_backward_scaled_row(dy[r], dx[r])
    return dx


# fastmath explicit, not the caller's: reassoc would turn (p s) k into p (s k) = 0 * inf = NaN
@njit(cache=True, error_model="numpy", nogil=True, fastmath=False)
def _log_softmax_backward_scaled_row(dyr, dxr):
    # dyr: (C,), dxr: (C,) holding p = softmax -> dxr = dy - p sum(dy), in units of 2^k >= C
    C = dyr.shape[0]
    k = _scale_for(C)
    inv = 1.0 / k
    s = 0.0
    for c in range(C):
        s += dyr[c] * inv
    for c in range(C):
        t = dxr[c] * s                           # p * sum(dy) / k: finite
        u = t * k
        dxr[c] = (dyr[c] * inv - t) * k if math.isinf(u) else dyr[c] - u


# --------------------------------------------------------------------------------------------
# cross-entropy from logits, fused: loss_r = lse_r - (1 - eps) * x[r, t_r] - eps * mean_c x[r, c]
# (label smoothing eps mixes the one-hot target with the uniform distribution, as torch does)
# --------------------------------------------------------------------------------------------
def cross_entropy_forward_numpy(x, target, ignore_index, smoothing):
    """x: (R, C) logits, target: (R,) int64 -> loss: (R,) float64 per row, stats: (R, 2) float64,
    each row's max ``m`` and ``log sum exp(x - m)`` (so lse = m + stats[:, 1]); 0 where ignored.

    loss_r = (1 - eps) ((m - x[r, t]) + ls) + eps ((m - mean_c x[r, c]) + ls), ls = log sum
    exp(x - m), in float64: non-negative terms, no huge values cancel, and ``ls`` is never
    added to ``m`` (at |m| ~ 3e38, m + log 2 = m: the loss of a tie would read 0, not log 2)."""
    R, C = x.shape
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    m = x.max(axis=1)
    with np.errstate(over="ignore"):          # x - max below -max: -inf, exp(-inf) = 0
        ls = _log_sum_numpy(np.exp(x - m[:, None]))
    m64 = m.astype(np.float64)
    loss = (1.0 - smoothing) * ((m64 - x[np.arange(R), t]) + ls)
    if smoothing:
        if x.dtype == np.float32:                                        # float64: no overflow
            mean = np.einsum("ij->i", x, dtype=np.float64) / C
        else:
            mean = (x * (1.0 / C)).sum(axis=1)                           # sum(x / C): no overflow
        loss = loss + smoothing * ((m64 - mean) + ls)
    stats = np.stack([m64, ls], axis=1)
    return np.where(keep, loss, 0.0), np.where(keep[:, None], stats, 0.0)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def cross_entropy_forward_numba(x, target, ignore_index, smoothing):
    # x: (R, C) logits, target: (R,) -> loss: (R,) float64, stats: (R, 2) float64 (m, ls)
    R, C = x.shape
    loss = np.zeros(R, dtype=np.float64)
    stats = np.zeros((R, 2), dtype=np.float64)
    buf = np.empty(C, dtype=x.dtype)
    bits = np.empty(C, np.int32)
    inv_c = 1.0 / C
    for r in range(R):
        t = target[r]
        if t == ignore_index:
            continue
        m = _row_max(x, r)
        for c in range(C):
            buf[c] = x[r, c] - m
        exp_nonpos_inplace(buf, bits)
        ls = _log_sum(buf)
        m64 = np.float64(m)
        stats[r, 0] = m64
        stats[r, 1] = ls
        loss[r] = (1.0 - smoothing) * ((m64 - x[r, t]) + ls)
        if smoothing != 0.0:
            mean = 0.0
            for c in range(C):
                mean += x[r, c] * inv_c          # sum(x / C): cannot overflow, unlike sum(x)
            loss[r] += smoothing * ((m64 - mean) + ls)
    return loss, stats


def cross_entropy_backward_numpy(dloss, x, target, stats, ignore_index, smoothing):
    """dloss: (R,), x: (R, C), target: (R,), stats: (R, 2) (m, ls) -> dx: (R, C).

    From loss_r = lse_r - (1-eps) x[r,t] - eps mean_c x[r,c]:
        dx[r, c] = dloss_r * (softmax(x)[r, c] - (1-eps) [c == t_r] - eps / C)
    with softmax(x) = exp((x - m) - ls), never exp(x - lse) (see the forward).
    """
    R, C = x.shape
    keep = target != ignore_index
    g = np.where(keep, dloss, 0.0).astype(x.dtype)[:, None]
    m, ls = stats[:, :1].astype(x.dtype), stats[:, 1:].astype(x.dtype)
    with np.errstate(over="ignore", invalid="ignore"):     # x - m below -max: -inf, exp 0;
        dx = x - m                                          # ignored rows (m = 0): 0 below
        dx -= ls
        np.exp(dx, out=dx)
        dx -= x.dtype.type(smoothing / C)
        dx *= g
    ignored = ~keep
    if ignored.any():
        dx[ignored] = 0
    rows = np.nonzero(keep)[0]
    dx[rows, target[rows]] -= (1.0 - smoothing) * g[rows, 0]
    return dx


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def cross_entropy_backward_numba(dloss, x, target, stats, ignore_index, smoothing):
    # dloss: (R,), x: (R, C), target: (R,), stats: (R, 2) -> dx: (R, C)
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
        m, ls = x.dtype.type(stats[r, 0]), x.dtype.type(stats[r, 1])
        for c in range(C):
            dx[r, c] = (x[r, c] - m) - ls
        exp_nonpos_inplace(dx[r], bits)  # softmax(x)[r]
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
