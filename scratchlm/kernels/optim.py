"""The Adam/AdamW update as one pass over each parameter (PyTorch's update rule, step for step).

    g      = grad + weight_decay * p              (Adam's L2 form, when not decoupled)
    p      = p * (1 - lr * weight_decay)          (AdamW's decoupled form)
    m      = beta1 * m + (1 - beta1) * g
    v      = beta2 * v + (1 - beta2) * g^2
    vmax   = max(vmax, v)                          (amsgrad only; the denominator uses vmax)
    p      = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - beta_i^t
"""

import math

import numpy as np
from numba import njit

from . import dispatch


def adam_update_numpy(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                      amsgrad, bc1, bc2):
    """All arrays flat (n,), updated in place; vmax is unused (any array) unless amsgrad."""
    if weight_decay:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    if amsgrad:
        np.maximum(vmax, v, out=vmax)
        denom = np.sqrt(vmax) / math.sqrt(bc2) + eps
    else:
        denom = np.sqrt(v) / math.sqrt(bc2) + eps
    p -= (lr / bc1) * m / denom


# error_model="numpy": no ZeroDivisionError check on the division (its denominator is >= eps),
# which is what kept this loop from vectorising (an order of magnitude; see docs/benchmarks.md)
@njit(cache=True, nogil=True, error_model="numpy")
def adam_update_numba(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                      amsgrad, bc1, bc2):
    # p, g, m, v, vmax: (n,) updated in place
    # The scalars are cast to the parameters' dtype first, so a float32 model updates in float32
    # arithmetic as torch does (and the loop vectorises 8 wide instead of 4).
    t = p.dtype.type
    step, sbc2, eps_ = t(lr / bc1), t(math.sqrt(bc2)), t(eps)
    b1, b2, c1, c2 = t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2)
    shrink, wd = t(1.0 - lr * weight_decay), t(weight_decay)
    l2 = weight_decay != 0.0 and not decoupled
    if weight_decay == 0.0 or not decoupled:
        shrink = t(1.0)
    for i in range(p.shape[0]):
        pi = p[i] * shrink                            # AdamW's decay (x 1 otherwise)
        gi = g[i] + wd * pi if l2 else g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = max(vmax[i], vi)
            vmax[i] = vi
        p[i] = pi - step * mi / (math.sqrt(vi) / sbc2 + eps_)


#: a parameter of at least twice this many entries is updated by two threads or more (each
#: entry's update is independent of the others, so the result is the same bit for bit)
GRAIN = 1 << 17


def adam_update_split(p, g, m, v, vmax, *scalars):
    """The Numba route of :func:`adam_update_numpy` (same arguments), split over scratchlm's
    threads in contiguous ranges of entries."""
    from . import split_run

    n = p.shape[0]
    has_vmax = vmax.shape[0] == n                   # vmax is any array unless amsgrad

    def part(lo, hi):
        adam_update_numba(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi],
                          vmax[lo:hi] if has_vmax else vmax, *scalars)
    split_run(part, n, GRAIN)


adam_update = dispatch(adam_update_split, adam_update_numpy)
