"""GELU, exact and tanh-approximated, forward and backward, on flat arrays.

exact:  y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2));          dy/dx = Phi(x) + x phi(x)
tanh:   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)

Since 0.5 (1 + tanh u) = sigmoid(2u), the tanh form is evaluated as ``y = x * s`` with
``s = sigmoid(2u)``, taken from ``e = exp(-2|u|)`` (in [0, 1], never overflows) as
``s = 1 / (1 + e)`` for u >= 0 and ``e / (1 + e)`` for u < 0: one ``exp`` per element, no
cancellation, accurate relative to s even where s is tiny. Its derivative is

        dy/dx = s + 2 x s (1 - s) u',   u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)

with ``s (1 - s) = e / (1 + e)^2`` (``1 - s`` itself would cancel: at x = 6 it lost five digits).

The forward also returns that derivative, so the backward is one multiply, ``dx = dy * dydx``,
with no second pass of exponentials (the cache holds ``dydx`` instead of ``x``: no more memory).

Over the whole floating-point range (both routes, float32 and float64):

* ``x^3`` overflows to +-inf for huge |x|; that is the right limit of -2u, and exp(-2u) is then
  0 or inf (``vmath``'s exp covers float32's whole range: no clamp that turns inf into
  1.7e38), so ``s`` is exactly 1 or 0 and y = x or -0: gelu(-huge) = -0, gelu(+huge) = x.
* the derivative's second term is evaluated as ``2 sqrt(2/pi) (w + 0.134145 (w x) x)`` with
  ``w = s (1 - s) x``: the small factor ``s (1 - s)`` multiplies first, so where it is 0 (|x| above
  ~11 in float32, ~21 in float64) the term is 0 instead of ``0 * inf = NaN`` (x^2 overflows from
  |x| = 1.8e19 in float32): gelu'(-huge) = 0, gelu'(+huge) = 1, as torch.
* ``u`` itself may overflow (x^3 past the max): ``|u| = inf`` gives e = 0, the right limit.
* the exact form takes ``Phi(x) = erfc(-x / sqrt 2) / 2``, not ``(1 + erf(x / sqrt 2)) / 2``:
  the same value, but without the cancellation that made ``gelu(-10)`` exactly 0 (it is
  -7.6e-23); for x below about -13.2 (float32) / -38.5 (float64) the result underflows to -0.

The Numba kernel computes in the input's precision (float32 stays float32) and take the
exponentials a block at a time with the vectorised ``exp_nonpos_inplace`` (``vmath.py``), of
-2|u| <= 0 only. They are
serial on purpose: next to BLAS calls, a second thread pool fights OpenBLAS's spinning threads
for the cores and loses more than it gains (measured on the 2-core benchmark machine).
"""

import math

import numpy as np
from numba import njit

from . import dispatch
from .vmath import exp_nonpos_inplace

BLOCK = 2048  # elements per block: the exp buffer stays in L1

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
COEF = 0.044715

# NumPy has no erfc; libm's, applied element by element, keeps the twin exact (and slow).
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _erfc_numpy(z):
    return _erfc(z).astype(z.dtype)


@njit(cache=True, error_model="numpy", inline="always")
def _const(x, value):
    """``value`` as a scalar of ``x``'s dtype, so float32 arithmetic stays float32."""
    a = np.empty(1, dtype=x.dtype)
    a[0] = value
    return a[0]


def gelu_forward_numpy(x, approximate, y=None, dydx=None):
    """x: (n,) -> y: (n,), dydx: (n,) (the local derivative, which is all the backward needs),
    written into ``y`` and ``dydx`` when given (a thread's slices of the whole arrays)."""
    if y is not None:
        y[...], dydx[...] = gelu_forward_numpy(x, approximate)
        return y, dydx
    if approximate:
        t = x.dtype.type
        with np.errstate(over="ignore"):           # x^3 -> +-inf is intended: e = exp(-inf) = 0
            e = x * x                                                         # in place, to
            e *= t(COEF)                                                      # spare passes:
            e += 1                                                            # 1 + c x^2
            e *= x
            np.abs(e, out=e)
            e *= t(-2 * SQRT_2_OVER_PI)                                       # -2|u|
        np.exp(e, out=e)                                                      # in [0, 1]
        s = e + 1
        np.reciprocal(s, out=s)                                               # r = 1 / (1 + e)
        f = np.maximum(e, x >= 0)                    # 1 where x >= 0, e where x < 0 (no select:
        e *= s                                       # masked NumPy ops are 10x slower)
        w = e * s                                    # e r^2 = s (1 - s), 0 where s saturates
        w *= x
        s *= f                                       # sigmoid(2u) = r, or e r (u has x's sign)
        y = x * s
        d = w * x                                    # w + 0.134145 (w x) x
        d *= x
        d *= t(3 * COEF)
        d += w
        d *= t(2 * SQRT_2_OVER_PI)
        d += s
        return y, d
    cdf = 0.5 * _erfc_numpy(-x * INV_SQRT_2)                          # Phi(x), no cancellation
    with np.errstate(over="ignore"):               # x^2 -> inf is intended: exp(-inf) = 0
        return x * cdf, cdf + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)


@njit(cache=True, error_model="numpy", nogil=True)
def gelu_forward_numba(x, approximate, y=None, dydx=None):
    # x: (n,) -> y: (n,), dydx: (n,), into the given arrays when there are
    if y is None:
        y = np.empty_like(x)
    if dydx is None:
        d = np.empty_like(x)
    else:
        d = dydx
    one, half, c = _const(x, 1.0), _const(x, 0.5), _const(x, COEF)
    k2, c3 = _const(x, 2.0 * SQRT_2_OVER_PI), _const(x, 3.0 * COEF)
    r2, rpi = _const(x, INV_SQRT_2), _const(x, INV_SQRT_2PI)
    n = x.shape[0]
    if approximate:
        buf, bits = np.empty(BLOCK, x.dtype), np.empty(BLOCK, np.int32)   # no aliasing: SIMD
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            xs, ys, ds, e = x[start:start + m], y[start:start + m], d[start:start + m], buf[:m]
            for j in range(m):
                v = xs[j]
                e[j] = -abs((((v * v) * c + one) * v) * k2)  # -2|u|, in the twin's order
            exp_nonpos_inplace(e, bits[:m])                 # exp(-2|u|), in [0, 1]
            for j in range(m):
                v = xs[j]
                r = one / (one + e[j])
                s = r if v >= 0 else e[j] * r               # sigmoid(2u): u has the sign of x
                ys[j] = v * s                               # y = x * sigmoid(2u)
                w = (e[j] * r * r) * v                      # s (1 - s) x: 0 where s saturates
                ds[j] = s + (w + ((w * v) * v) * c3) * k2   # in the twin's order
    else:
        for i in range(n):
            v = x[i]
            cdf = half * math.erfc(-v * r2)                 # Phi(x) without cancellation
            y[i] = v * cdf
            d[i] = cdf + v * rpi * math.exp(-half * v * v)
    return y, d


gelu_forward = dispatch(gelu_forward_numba, gelu_forward_numpy)


def gelu_backward_numpy(dy, dydx, out):
    """dy, dydx, out: (n,) -> out = dy * dydx (the derivative the forward kept)."""
    with np.errstate(over="ignore", invalid="ignore"):        # IEEE: inf * 0 = NaN, as Numba
        np.multiply(dy, dydx, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def gelu_backward_numba(dy, dydx, out):
    # dy, dydx, out: (n,): one multiply an element, on the caller's thread part
    for i in range(out.shape[0]):
        out[i] = dy[i] * dydx[i]
    return out


gelu_backward = dispatch(gelu_backward_numba, gelu_backward_numpy)
