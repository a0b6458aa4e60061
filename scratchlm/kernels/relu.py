"""ReLU, forward and backward, on flat arrays (the caller splits them over the threads).

    y = max(x, 0)                (NaN stays NaN, as np.maximum and torch)
    dx = dy * [x > 0]            (0 at the kink, as torch; dy * 0 keeps IEEE: NaN * 0 = NaN)
    y = r + max(h, 0)            (a residual sum with it, in the same pass: ConvLM's blocks)

One pass each, writing into the caller's output: the NumPy twin needs a temporary for the mask.
"""

import numpy as np
from numba import njit

from . import dispatch


def relu_forward_numpy(x, out):
    """x, out: (n,) -> out = max(x, 0)."""
    np.maximum(x, 0, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def relu_forward_numba(x, out):
    # x, out: (n,)
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v if (v > zero) | (v != v) else zero       # ``|``: no branch, vectorised
    return out


def add_relu_numpy(r, h, out):
    """r, h, out: (n,) -> out = r + max(h, 0)."""
    np.maximum(h, 0, out=out)
    with np.errstate(over="ignore"):         # r + max(h, 0) past the max: inf, as the Numba route
        out += r
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def add_relu_numba(r, h, out):
    # r, h, out: (n,); ``|`` rather than ``or``: no branch, so the loop vectorises
    zero = h.dtype.type(0)
    for i in range(h.shape[0]):
        v = h[i]
        out[i] = (v if (v > zero) | (v != v) else zero) + r[i]
    return out


def relu_backward_numpy(dy, x, out):
    """dy, x, out: (n,) -> out = dy * [x > 0]."""
    with np.errstate(invalid="ignore"):            # inf * 0 = NaN, as the Numba route gives
        np.multiply(dy, x > 0, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def relu_backward_numba(dy, x, out):
    # dy, x, out: (n,)
    one, zero = x.dtype.type(1), x.dtype.type(0)
    for i in range(x.shape[0]):
        out[i] = dy[i] * (one if x[i] > zero else zero)
    return out


relu_forward = dispatch(relu_forward_numba, relu_forward_numpy)
relu_backward = dispatch(relu_backward_numba, relu_backward_numpy)
add_relu = dispatch(add_relu_numba, add_relu_numpy)
