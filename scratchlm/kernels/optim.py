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


@njit(cache=True, nogil=True)
def adam_update_numba(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                      amsgrad, bc1, bc2):
    # p, g, m, v, vmax: (n,) updated in place
    step = lr / bc1
    sbc2 = math.sqrt(bc2)
    shrink = 1.0 - lr * weight_decay
    for i in range(p.shape[0]):
        gi = g[i]
        if weight_decay != 0.0:
            if decoupled:
                p[i] = p[i] * shrink
            else:
                gi = gi + weight_decay * p[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        vi = v[i]
        if amsgrad:
            if vi > vmax[i]:
                vmax[i] = vi
            vi = vmax[i]
        p[i] = p[i] - step * m[i] / (math.sqrt(vi) / sbc2 + eps)


adam_update = dispatch(adam_update_numba, adam_update_numpy)
