"""ReLU, forward and backward, on flat arrays (the caller splits them over the threads).

    y = max(x, 0)                (NaN stays NaN, as np.maximum and torch)
    dx = dy * [x > 0]            (0 at the kink, as torch; dy * 0 keeps IEEE: NaN * 0 = NaN)

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
        out[i] = v if (v > zero or v != v) else zero
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
