r"""Rotary position embeddings (Su et al., 2021, "RoFormer"), in Hugging Face Llama's layout.

Each head vector ``x`` (d even) is read as d/2 pairs ``(x[i], x[i + d/2])`` ("rotate-half",
not interleaved pairs), and at position ``t`` pair ``i`` is turned by the angle
:math:`\theta_{t,i} = t\,\omega_i`, :math:`\omega_i = \text{rope\_theta}^{-2i/d}`:

.. math::  y_i = x_i\cos\theta_{t,i} - x_{i+d/2}\sin\theta_{t,i},\qquad
           y_{i+d/2} = x_{i+d/2}\cos\theta_{t,i} + x_i\sin\theta_{t,i}

Applied to q and k before attention, ``q_s . k_t`` depends on ``s - t`` only. Positions are
given explicitly, so a KV cache continues at an offset. The backward is the inverse rotation.

``rope_scaling={"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
"original_max_position_embeddings"}`` (Llama 3.1) divides the low frequencies (wavelengths
longer than ``original / low_freq_factor``) by ``factor``, keeps the high ones (shorter than
``original / high_freq_factor``) and blends in between, as ``transformers`` does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import float_array, upstream
from ..kernels import rope as K

_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def check_rope_scaling(rope_scaling, name="rope_scaling"):
    """``None``, or a dict of type ``"llama3"`` (``"rope_type"`` or the older ``"type"``) with
    its four numbers; returns a clean copy. Other types are refused by name."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise TypeError(f"{name} must be None or a dict, got {type(rope_scaling).__name__}")
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(f"{name} of type {kind!r} is not supported (only 'llama3' and none)")
    out = {"rope_type": "llama3"}
    for key in _LLAMA3_KEYS:
        v = rope_scaling.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}[{key!r}] must be a positive number, got {v!r}")
        out[key] = v
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(f"{name}: high_freq_factor ({out['high_freq_factor']}) must exceed "
                         f"low_freq_factor ({out['low_freq_factor']})")
    return out


def rope_inv_freq(head_dim: int, theta: float, rope_scaling=None) -> np.ndarray:
    r""":math:`\omega_i = \theta^{-2i/d}`, i < d/2, float64 ``(d/2,)``, with llama3 scaling applied."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (d/2,)
    s = check_rope_scaling(rope_scaling)
    if s is None:
        return inv
    factor, lo, hi, old = (s[k] for k in _LLAMA3_KEYS)
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)          # long waves: slowed down
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_cos_sin(positions, inv_freq, dtype):
    """``cos``, ``sin`` ``(T, d/2)`` of the angles ``positions[t] * inv_freq[i]``, computed in
    float64 and rounded once to ``dtype``."""
    angles = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]      # (T, d/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class RopeCache(NamedTuple):
    cos: np.ndarray          # (T, d/2) in x's dtype
    sin: np.ndarray          # (T, d/2)
    x_shape: tuple           # (..., T, d)


def rope_forward(x, cos, sin):
    r"""Rotate ``x`` ``(..., T, d)`` by the angles whose ``cos``/``sin`` ``(T, d/2)`` are given
    (:func:`rope_cos_sin`). Returns ``y`` (shape of ``x``) and a :class:`RopeCache`."""
    x = float_array(x, "x", min_ndim=2)
    T, d = x.shape[-2:]
    if d % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got x {x.shape}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not (isinstance(t, np.ndarray) and t.shape == (T, d // 2) and t.dtype == x.dtype):
            raise ValueError(f"{name} must be a {x.dtype} array of shape {(T, d // 2)}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {np.shape(t)}")
    cos, sin = np.ascontiguousarray(cos), np.ascontiguousarray(sin)
    flat = np.ascontiguousarray(x).reshape(-1, T, d)                            # (N, T, d)
    y = K.rope_apply(flat, cos, sin, 1, np.empty_like(flat))
    return y.reshape(x.shape), RopeCache(cos, sin, x.shape)


def rope_backward(dy, cache: RopeCache):
    r"""The inverse rotation: :math:`dx_i = dy_i\cos + dy_{i+d/2}\sin`,
    :math:`dx_{i+d/2} = dy_{i+d/2}\cos - dy_i\sin`. Returns ``dx`` (``None`` for cos and sin
    is implied: they are constants)."""
    upstream(dy, cache.x_shape, cache.cos.dtype)
    T, d = cache.x_shape[-2:]
    flat = np.ascontiguousarray(dy).reshape(-1, T, d)
    dx = K.rope_apply(flat, cache.cos, cache.sin, -1, np.empty_like(flat))
    return dx.reshape(cache.x_shape)
