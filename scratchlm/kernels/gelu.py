"""GELU, exact and tanh-approximated, forward and backward, on flat arrays.

exact:  y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2));          dy/dx = Phi(x) + x phi(x)
tanh:   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)

Since 0.5 (1 + tanh u) = sigmoid(2u), the tanh form is evaluated as ``y = x * s`` with
``s = 1 / (1 + exp(-2u))``: one ``exp`` per element, no cancellation, and no overflow (for very
negative u, exp(-2u) = inf gives s = 0). Its derivative is

        dy/dx = s + 2 x s (1 - s) u',   u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The forward also returns that derivative, so the backward is one multiply, ``dx = dy * dydx``,
with no second pass of exponentials (the cache holds ``dydx`` instead of ``x``: no more memory).

The Numba kernel computes in the input's precision (float32 stays float32) and take the
exponentials a block at a time with the vectorised ``exp_inplace`` (``vmath.py``). They are
serial on purpose: next to BLAS calls, a second thread pool fights OpenBLAS's spinning threads
for the cores and loses more than it gains (measured on the 2-core benchmark machine).
"""

import math

import numpy as np
from numba import njit

from . import dispatch
from .vmath import exp_inplace

BLOCK = 2048  # elements per block: the exp buffer stays in L1

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
COEF = 0.044715

# NumPy has no erf; libm's, applied element by element, keeps the twin exact (and slow).
_erf = np.frompyfunc(math.erf, 1, 1)


def _erf_numpy(z):
    return _erf(z).astype(z.dtype)


@njit(cache=True, inline="always")
def _const(x, value):
    """``value`` as a scalar of ``x``'s dtype, so float32 arithmetic stays float32."""
    a = np.empty(1, dtype=x.dtype)
    a[0] = value
    return a[0]


def gelu_forward_numpy(x, approximate):
    """x: (n,) -> y: (n,), dydx: (n,) (the local derivative, which is all the backward needs)."""
    if approximate:
        with np.errstate(over="ignore"):           # exp -> inf is intended: then s = 0
            s = 1 / (1 + np.exp(-2 * SQRT_2_OVER_PI * (x + COEF * x * x * x)))   # sigmoid(2u)
        y = x * s
        d = s + 2 * x * s * (1 - s) * SQRT_2_OVER_PI * (1 + 3 * COEF * x * x)
        return y, d
    cdf = 0.5 * (1 + _erf_numpy(x * INV_SQRT_2))
    return x * cdf, cdf + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)


@njit(cache=True, nogil=True)
def gelu_forward_numba(x, approximate):
    # x: (n,) -> y: (n,), dydx: (n,)
    y = np.empty_like(x)
    d = np.empty_like(x)
    one, two, half, c = _const(x, 1.0), _const(x, 2.0), _const(x, 0.5), _const(x, COEF)
    k, k2, c3 = _const(x, SQRT_2_OVER_PI), _const(x, -2.0 * SQRT_2_OVER_PI), _const(x, 3.0 * COEF)
    r2, rpi = _const(x, INV_SQRT_2), _const(x, INV_SQRT_2PI)
    n = x.shape[0]
    if approximate:
        buf, bits = np.empty(BLOCK, x.dtype), np.empty(BLOCK, np.int32)   # no aliasing: SIMD
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            xs, ys, ds, e = x[start:start + m], y[start:start + m], d[start:start + m], buf[:m]
            for j in range(m):
                v = xs[j]
                e[j] = k2 * (v + c * v * v * v)             # -2u
            exp_inplace(e, bits[:m])                        # exp(-2u)
            for j in range(m):
                v = xs[j]
                s = one / (one + e[j])                      # sigmoid(2u)
                ys[j] = v * s                               # y = x * sigmoid(2u)
                ds[j] = s + two * v * s * (one - s) * k * (one + c3 * v * v)
    else:
        for i in range(n):
            v = x[i]
            cdf = half * (one + math.erf(v * r2))
            y[i] = v * cdf
            d[i] = cdf + v * rpi * math.exp(-half * v * v)
    return y, d


gelu_forward = dispatch(gelu_forward_numba, gelu_forward_numpy)
