"""GELU, exact and tanh-approximated, forward and backward, on flat arrays.

exact:  y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2));          dy/dx = Phi(x) + x phi(x)
tanh:   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
        dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
"""

import math

import numpy as np
from numba import njit

from . import dispatch

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
COEF = 0.044715

# NumPy has no erf; libm's, applied element by element, keeps the twin exact (and slow).
_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_forward_numpy(x, approximate):
    """x: (n,) -> y: (n,)."""
    if approximate:
        return (0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + COEF * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1.0 + _erf(x * INV_SQRT_2).astype(np.float64))).astype(x.dtype)


@njit(cache=True, nogil=True)
def gelu_forward_numba(x, approximate):
    # x: (n,) -> y: (n,)
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        if approximate:
            y[i] = 0.5 * v * (1.0 + math.tanh(SQRT_2_OVER_PI * (v + COEF * v * v * v)))
        else:
            y[i] = 0.5 * v * (1.0 + math.erf(v * INV_SQRT_2))
    return y


def gelu_backward_numpy(dy, x, approximate):
    """dy, x: (n,) -> dx: (n,)."""
    if approximate:
        t = np.tanh(SQRT_2_OVER_PI * (x + COEF * x ** 3))
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
    else:
        cdf = 0.5 * (1.0 + _erf(x * INV_SQRT_2).astype(np.float64))
        d = cdf + x * INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return (dy * d).astype(x.dtype)


@njit(cache=True, nogil=True)
def gelu_backward_numba(dy, x, approximate):
    # dy, x: (n,) -> dx: (n,)
    dx = np.empty_like(x)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        if approximate:
            t = math.tanh(SQRT_2_OVER_PI * (v + COEF * v * v * v))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * v * v)
        else:
            d = 0.5 * (1.0 + math.erf(v * INV_SQRT_2)) + v * INV_SQRT_2PI * math.exp(-0.5 * v * v)
        dx[i] = dy[i] * d
    return dx


gelu_forward = dispatch(gelu_forward_numba, gelu_forward_numpy)
gelu_backward = dispatch(gelu_backward_numba, gelu_backward_numpy)
