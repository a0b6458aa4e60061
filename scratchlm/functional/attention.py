"""Scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need", eq. 1)."""

import math
from typing import NamedTuple

import numpy as np

from .._checks import boolean, float_array, probability, scalar, upstream
from ..kernels import attention as K
from ..kernels.checks import all_finite


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


def attention_forward(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                      training=True, rng=None):
    r"""Attention over the last two axes, any leading (batch, head) axes:

    .. math::  P = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right),\qquad
               Y = \mathrm{dropout}(P)\,V

    The arguments are ``torch.nn.functional.scaled_dot_product_attention``'s, in its order
    (``query, key, value, attn_mask, dropout_p, is_causal``, then keyword-only ``scale``);
    ``training`` and ``rng`` (keyword-only too) are this library's.

    Args:
        q: ``(..., Tq, d)``.  k: ``(..., Tk, d)``.  v: ``(..., Tk, dv)``  (same leading axes).
        attn_mask: broadcastable to ``(..., Tq, Tk)``: boolean (True = may attend, as
            ``torch.nn.functional.scaled_dot_product_attention``) or float, added to the scaled
            scores (``-inf`` forbids). Integer masks are refused (as torch): an integer 0/1 mask
            added to the scores would silently mask nothing.
        is_causal: query i (the last Tq of Tk positions) sees keys ``j <= i + Tk - Tq``. With
            ``Tq == Tk`` this is torch's causal mask; with ``Tq < Tk`` (new queries after cached
            keys) the mask is aligned bottom-right (torch's ``causal_lower_right``), where torch's
            ``is_causal`` aligns it top-left. Combined with ``attn_mask`` both apply (torch
            refuses the pair).
        dropout_p, training, rng: dropout on the attention probabilities.
        scale: defaults to :math:`1/\sqrt{d}`.

    A query that may attend to nothing gets zero output (PyTorch gives NaN there).
    The scale, the causal mask and the softmax run as one fused Numba pass
    (``kernels/attention.py``).

    Scores past the dtype's max: when some :math:`q\cdot k` (or, with a float mask,
    :math:`s\,q\cdot k + M`) overflows, the probabilities are those of the exact scores, not of
    their overflow (:func:`_exact_probs`: float32 scores recomputed in float64, float64 ones with a
    power-of-two pre-scale of q and k), so a huge score wins its row (one-hot; equal shares among
    exact ties) and finite inputs never give NaN. Detection costs one scan of the scores.

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
    is_causal = boolean(is_causal, "is_causal")
    training = boolean(training, "training")
    Tq, d = q.shape[-2:]
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scalar(scale, "scale")
    lead = q.shape[:-2]
    N = int(np.prod(lead)) if lead else 1
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is detected just below
        scores = q @ np.swapaxes(k, -1, -2)                                   # (..., Tq, Tk)
    kernel_scale = scale
    exact_mask = None                                   # the mask for _exact_probs, if needed
    scores_ok = all_finite(np.ascontiguousarray(scores).reshape(-1))         # no q.k overflowed
    if attn_mask is not None:
        if not isinstance(attn_mask, (np.ndarray, list, tuple)):
            raise TypeError(f"attn_mask must be a bool or float numpy array, got "
                            f"{type(attn_mask).__name__}")
        mask = np.asarray(attn_mask)
        if mask.dtype != bool and mask.dtype.kind != "f":
            raise TypeError(f"attn_mask must be bool (True = may attend) or float (added to the "
                            f"scores), got {mask.dtype}: an integer mask is refused, as torch does")
        try:
            mask = np.broadcast_to(mask, scores.shape)
        except ValueError as exc:
            raise ValueError(f"attn_mask of shape {np.shape(attn_mask)} does not broadcast to the "
                             f"scores' shape {scores.shape} (..., Tq, Tk)") from exc
        exact_mask = mask
        if mask.dtype == bool:
            scores = np.where(mask, scores, -np.inf)
        else:
            if np.isnan(mask).any():
                raise ValueError("attn_mask must not contain NaN")
            if scores_ok:                  # s * q.k + M cannot overflow (checked in float64)?
                finite = np.asarray(attn_mask)[np.isfinite(attn_mask)]
                bound = (abs(scale) * max(float(scores.max()), -float(scores.min()))
                         + (float(np.abs(finite).max()) if finite.size else 0.0))
                scores_ok = bound <= float(np.finfo(scores.dtype).max)
            with np.errstate(over="ignore", invalid="ignore"):   # only when scores_ok is False
                scores = scores * scores.dtype.type(scale) + mask.astype(scores.dtype)
            kernel_scale = 1.0
    if scores_ok:
        probs = K.attention_softmax(np.ascontiguousarray(scores).reshape(N, Tq, Tk), kernel_scale,
                                    is_causal, Tk - Tq).reshape(scores.shape)   # (..., Tq, Tk)
    else:                                      # some score overflowed: the exact probabilities
        probs = _exact_probs(q, k, scale, exact_mask, is_causal)
    drop = None
    if training and p > 0:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy Generator when attention dropout is active")
        drop = (rng.random(probs.shape, dtype=probs.dtype) >= p).astype(probs.dtype) / probs.dtype.type(1 - p)
    weights = probs if drop is None else probs * drop
    y = weights @ v                                                           # (..., Tq, dv)
    cache = AttentionCache(q, k, v, probs, drop, weights, scale, attn_mask is not None,
                           is_causal)
    return y, cache


def _exact_probs(q, k, scale, mask, causal):
    r"""softmax(scale q.k^T + M) where q.k^T (or the sum) overflows q's dtype: the slow path.

    Each score is held as :math:`w\,2^E`: float32 inputs are multiplied in float64 (exact
    products, no overflow: :math:`|q\cdot k| \le d \cdot 1.2\times10^{77}`); float64 rows of q,
    and each (batch, head) slice of k, are first divided by a power of two at least their largest
    magnitude (exact), and those exponents go into E, as does the scale's exponent. The softmax
    needs only differences from the row maximum, :math:`(w - w^*)\,2^E`, which overflow only
    below ``-max``: weight 0. A masked entry (False, or ``-inf``) gets 0; a row with nothing
    allowed is all zeros, as in the kernel. Both routes take this NumPy code.

    q: (..., Tq, d), k: (..., Tk, d), mask: None, bool or float broadcast to (..., Tq, Tk).
    Returns probs (..., Tq, Tk) in q's dtype.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    m_s, e_s = math.frexp(scale)                       # scale = m_s 2^e_s, |m_s| in [0.5, 1)
    e_s = max(e_s, 0)                                  # E >= 0: the mask is only ever scaled down
    m_s = math.ldexp(scale, -e_s)
    qw, kw = q.astype(np.float64), k.astype(np.float64)
    E = np.full(q.shape[:-1] + (1,), e_s, dtype=np.int64)                       # (..., Tq, 1)
    if q.dtype == np.float64:
        a = np.maximum(np.frexp(np.abs(qw).max(axis=-1, keepdims=True))[1], 0)       # (..., Tq, 1)
        b = np.maximum(np.frexp(np.abs(kw).max(axis=(-2, -1), keepdims=True))[1], 0)  # (..., 1, 1)
        qw, kw = np.ldexp(qw, -a), np.ldexp(kw, -b)                          # |entries| < 1
        E = E + a + b
    w = (qw @ np.swapaxes(kw, -1, -2)) * m_s                                  # (..., Tq, Tk)
    if mask is not None:
        if mask.dtype == bool:
            w = np.where(mask, w, -np.inf)
        else:
            w = w + np.ldexp(mask.astype(np.float64), -E)
    if causal:
        allowed = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
        w = np.where(allowed, w, -np.inf)
    star = w.max(axis=-1, keepdims=True)
    empty = star == -np.inf
    with np.errstate(over="ignore"):                   # below -max: -inf, exp(-inf) = 0
        e = np.exp(np.ldexp(w - np.where(empty, 0.0, star), E))
    e = np.where(w == -np.inf, 0.0, e)
    z = e.sum(axis=-1, keepdims=True)
    return (e / np.where(z == 0, 1.0, z)).astype(q.dtype)


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
