"""Binary cross-entropy on logits: its gradient, on flat arrays (the caller splits them over the
threads).

    dx = g (sigmoid(x) - y)          g: the upstream gradient of each item

with ``sigmoid(x) = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` for ``x < 0``,
``e = exp(-|x|)`` in (0, 1]: nothing overflows, and sigmoid saturates exactly (``x = +-1e13``
gives 1 and 0, so a confident right answer has a gradient of exactly 0). The Numba kernel takes
the exponentials a block at a time with the vectorised ``exp_nonpos_inplace`` (``vmath.py``,
within an ulp of NumPy's ``exp``); the NumPy twin is the expression above, whole-array.
"""

import numpy as np
from numba import njit

from . import dispatch
from .gelu import BLOCK
from .rnn import _sigmoid_into, _sigmoid_numpy


def bce_logits_backward_numpy(x, y, g, dx):
    """x, y, g, dx: (n,) -> dx = g (sigmoid(x) - y)."""
    with np.errstate(over="ignore"):         # past the max only where the true value is
        np.multiply(g, _sigmoid_numpy(x) - y, out=dx)
    return dx


@njit(cache=True, error_model="numpy", nogil=True)
def bce_logits_backward_numba(x, y, g, dx):
    # x, y, g, dx: (n,); a block of sigmoids into scratch, then one store per loop (a loop that
    # also computed them stored to two arrays LLVM cannot tell apart, and stayed scalar)
    s, e = np.empty(BLOCK, x.dtype), np.empty(BLOCK, x.dtype)
    bits = np.empty(BLOCK, np.int32)
    for start in range(0, x.shape[0], BLOCK):
        end = min(x.shape[0], start + BLOCK)
        m = end - start
        _sigmoid_into(x[start:end], s, e, bits)                       # s = sigmoid(x)
        ys, gs, dxs = y[start:end], g[start:end], dx[start:end]
        for j in range(m):
            dxs[j] = gs[j] * (s[j] - ys[j])
    return dx


bce_logits_backward = dispatch(bce_logits_backward_numba, bce_logits_backward_numpy)
