r"""Rotary position embedding, Hugging Face Llama's "rotate-half" layout, on (N, T, d) arrays.

The two halves of each head vector are the real and imaginary parts of d/2 complex numbers;
position t turns pair i by the angle ``t * inv_freq[i]`` (``cos``/``sin`` ``(T, d/2)``)::

    y1 = x1 cos - x2 sin          x1 = x[..., :d/2],  x2 = x[..., d/2:]
    y2 = x2 cos + x1 sin

The backward is the inverse rotation (the transpose of a rotation), the same kernel with
``sin`` negated (``sign = -1``)::

    dx1 =  dy1 cos + dy2 sin
    dx2 =  dy2 cos - dy1 sin

A rotation never grows a pair's length, so a result overflows only where the true value does.
"""

import numpy as np
from numba import njit

from . import dispatch


def rope_apply_numpy(x, cos, sin, sign, out):
    """x, out: (N, T, d); cos, sin: (T, d/2) in x's dtype; sign +1 (rotate) or -1 (inverse)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    s = sin if sign > 0 else -sin
    with np.errstate(over="ignore", invalid="ignore"):
        out[..., :h] = x1 * cos - x2 * s
        out[..., h:] = x2 * cos + x1 * s
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def rope_apply_numba(x, cos, sin, sign, out):
    # x, out: (N, T, d); cos, sin: (T, d/2)
    N, T, d = x.shape
    h = d // 2
    for n in range(N):
        for t in range(T):
            for i in range(h):
                c = cos[t, i]
                s = sin[t, i] if sign > 0 else -sin[t, i]
                a, b = x[n, t, i], x[n, t, h + i]
                out[n, t, i] = a * c - b * s
                out[n, t, h + i] = b * c + a * s
    return out


rope_apply = dispatch(rope_apply_numba, rope_apply_numpy)
