"""Scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need", eq. 1)."""

import math
from typing import NamedTuple

import numpy as np

from .._checks import float_array, probability, upstream
from ..kernels import attention as K


class AttentionCache(NamedTuple):
    q: np.ndarray                  # (..., Tq, d) queries
    k: np.ndarray                  # (..., Tk, d) keys
    v: np.ndarray                  # (..., Tk, dv) values
    probs: np.ndarray              # (..., Tq, Tk) P = softmax(S), before dropout
    drop: np.ndarray | None        # (..., Tq, Tk) dropout mask scaled by 1/(1-p); None without
    weights: np.ndarray            # (..., Tq, Tk) P * drop: the weights applied to V
    scale: float                   # s, the factor of Q K^T
    has_mask: bool                 # an attn_mask was given
    causal: bool                   # is_causal


def attention_forward(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, training=True,
                      rng=None, scale=None):
    r"""Attention over the last two axes, any leading (batch, head) axes:

    .. math::  P = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right),\qquad
               Y = \mathrm{dropout}(P)\,V

    Args:
        q: ``(..., Tq, d)``.  k: ``(..., Tk, d)``.  v: ``(..., Tk, dv)``  (same leading axes).
        attn_mask: broadcastable to ``(..., Tq, Tk)``: boolean (True = may attend, as
            ``torch.nn.functional.scaled_dot_product_attention``) or float, added to the scaled
            scores (``-inf`` forbids).
        is_causal: query i (the last Tq of Tk positions) sees keys ``j <= i + Tk - Tq``.
        dropout_p, training, rng: dropout on the attention probabilities.
        scale: defaults to :math:`1/\sqrt{d}`.

    A query that may attend to nothing gets zero output (PyTorch gives NaN there).
    The scale, the causal mask and the softmax run as one fused Numba pass
    (``kernels/attention.py``).

    Returns:
        ``y`` ``(..., Tq, dv)`` and an :class:`AttentionCache`; ``cache.weights`` holds the
        attention probabilities after dropout, ``(..., Tq, Tk)``.
    """
    q = float_array(q, "q", min_ndim=2)
    k = float_array(k, "k", min_ndim=2)
    v = float_array(v, "v", min_ndim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"q, k, v must share leading axes, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k must be (..., Tk, {q.shape[-1]}) and v (..., Tk, dv) with the same Tk, "
                         f"got k {k.shape}, v {v.shape}")
    p = probability(dropout_p, "dropout_p", allow_one=False)
    Tq, d = q.shape[-2:]
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    lead = q.shape[:-2]
    N = int(np.prod(lead)) if lead else 1
    scores = q @ np.swapaxes(k, -1, -2)                                       # (..., Tq, Tk)
    kernel_scale = scale
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        try:
            mask = np.broadcast_to(mask, scores.shape)
        except ValueError as exc:
            raise ValueError(f"attn_mask of shape {np.shape(attn_mask)} does not broadcast to the "
                             f"scores' shape {scores.shape} (..., Tq, Tk)") from exc
        if mask.dtype == bool:
            scores = np.where(mask, scores, -np.inf)
        elif mask.dtype.kind == "f":
            if np.isnan(mask).any():
                raise ValueError("attn_mask must not contain NaN")
            scores = scores * scores.dtype.type(scale) + mask.astype(scores.dtype)
            kernel_scale = 1.0
        else:
            raise TypeError(f"attn_mask must be bool or float, got {mask.dtype}")
    probs = K.attention_softmax(np.ascontiguousarray(scores).reshape(N, Tq, Tk), kernel_scale,
                                bool(is_causal), Tk - Tq).reshape(scores.shape)   # (..., Tq, Tk)
    drop = None
    if training and p > 0:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy Generator when attention dropout is active")
        drop = (rng.random(probs.shape, dtype=probs.dtype) >= p).astype(probs.dtype) / probs.dtype.type(1 - p)
    weights = probs if drop is None else probs * drop
    y = weights @ v                                                           # (..., Tq, dv)
    cache = AttentionCache(q, k, v, probs, drop, weights, scale, attn_mask is not None,
                           bool(is_causal))
    return y, cache


def attention_backward(dy, cache: AttentionCache, dweights=None):
    r"""From :math:`Y = \tilde P V`, :math:`\tilde P = P \odot D` (dropout), :math:`P =
    \mathrm{softmax}(S)`, :math:`S = s\,QK^\top (+M)`:

    .. math::  dV = \tilde P^\top dY,\quad d\tilde P = dY\,V^\top,\quad dP = d\tilde P \odot D,
               \quad dS = P \odot (dP - \textstyle\sum_j dP \odot P),\quad
               dQ = s\,dS\,K,\quad dK = s\,dS^\top Q

    ``dweights`` (``(..., Tq, Tk)``, optional) is an upstream gradient for ``cache.weights``.
    Returns ``(dq, dk, dv, None)`` -- none for the mask.
    """
    q, k, v, probs, drop, w = cache.q, cache.k, cache.v, cache.probs, cache.drop, cache.weights
    upstream(dy, q.shape[:-1] + (v.shape[-1],), q.dtype)
    dv = np.swapaxes(w, -1, -2) @ dy                         # (..., Tk, dv): from y = weights @ v
    dw = dy @ np.swapaxes(v, -1, -2)                                          # (..., Tq, Tk)
    if dweights is not None:
        dw = dw + upstream(dweights, w.shape, w.dtype, name="dweights")
    dprobs = dw if drop is None else dw * drop                     # from weights = probs * drop
    Tq, Tk = probs.shape[-2:]
    ds = K.attention_softmax_backward(                                        # through P = softmax(sS)
        np.ascontiguousarray(dprobs).reshape(-1, Tq, Tk), probs.reshape(-1, Tq, Tk),
        cache.scale, cache.causal, Tk - Tq).reshape(probs.shape)              # (..., Tq, Tk)
    dq = ds @ k                                              # (..., Tq, d): from scores = q @ k^T
    dk = np.swapaxes(ds, -1, -2) @ q                                          # (..., Tk, d)
    return dq, dk, dv, None
