r"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.

``clip_grad_norm_`` rescales all gradients together so that their joint :math:`p`-norm (the
gradients viewed as one long vector) is at most ``max_norm``:

.. math::

    N = \Big\lVert \big(\lVert g_1\rVert_p, \dots, \lVert g_k\rVert_p\big) \Big\rVert_p, \qquad
    c = \min\!\Big(\frac{\text{max\_norm}}{N + 10^{-6}},\ 1\Big), \qquad g_i \leftarrow c\, g_i

with :math:`\lVert g\rVert_\infty = \max_j |g_j|`. Every gradient is multiplied by :math:`c`
(also when :math:`c = 1`), so a NaN norm spreads to every gradient, as in PyTorch.
``clip_grad_value_`` clamps each entry to :math:`[-v, v]`.
"""

from __future__ import annotations

import math

import numpy as np

from ..nn.module import Module, Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "grad_norm"]


def _grads(parameters) -> list:
    if isinstance(parameters, Module):
        parameters = parameters.parameters()
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters must be Parameters, but entry {i} is a {type(p).__name__}")
        if p.grad is not None:
            grads.append(p.grad)
    return grads


def _vector_norm(x: np.ndarray, norm_type: float):
    """The p-norm of ``x`` viewed as a vector, as a scalar of ``x``'s dtype."""
    flat = x.reshape(-1)
    if flat.size == 0:
        return x.dtype.type(0.0)
    if norm_type == math.inf:
        return np.max(np.abs(flat))
    if norm_type == -math.inf:
        return np.min(np.abs(flat))
    if norm_type == 0.0:
        return x.dtype.type(np.count_nonzero(flat))
    return x.dtype.type(np.linalg.norm(flat, norm_type))


def _total_norm(grads, norm_type):
    dtype = np.result_type(*grads)
    norms = np.array([_vector_norm(g, norm_type) for g in grads], dtype=dtype)
    return _vector_norm(norms, norm_type)


def grad_norm(parameters, norm_type=2.0) -> float:
    """The joint ``norm_type``-norm of the gradients of ``parameters`` (what
    :func:`clip_grad_norm_` returns), without changing them."""
    grads = _grads(parameters)
    return float(_total_norm(grads, float(norm_type))) if grads else 0.0


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False) -> float:
    r"""Scale the gradients of ``parameters`` in place so their joint ``norm_type``-norm is at
    most ``max_norm``; return that norm, measured *before* clipping, as a Python float.

    ``parameters``: a Parameter, an iterable of them, or a Module. ``norm_type`` may be
    ``float('inf')`` (or ``'inf'``). With ``error_if_nonfinite=True`` a NaN or infinite total
    norm raises ``RuntimeError`` (PyTorch's error) and leaves the gradients untouched.
    """
    grads = _grads(parameters)
    max_norm = float(max_norm)
    if not grads:
        return 0.0
    total = _total_norm(grads, float(norm_type))
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite "
            f"({float(total)}), so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    scale_to_norm_(grads, max_norm, total)
    return float(total)


def scale_to_norm_(grads, max_norm, total) -> None:
    """The rescaling of :func:`clip_grad_norm_` for a joint norm ``total`` measured elsewhere
    (ZeRO-1 measures it over the ranks' shards): every array of ``grads`` times
    ``min(max_norm / (total + 1e-6), 1)``, in their dtype, in place."""
    if not grads:
        return
    dtype = np.result_type(*grads)
    clip_coef = dtype.type(max_norm) / (dtype.type(total) + dtype.type(1e-6))
    clip_coef = np.minimum(clip_coef, dtype.type(1.0))   # NaN stays NaN, as torch.clamp
    for g in grads:
        g *= g.dtype.type(clip_coef)


def clip_grad_value_(parameters, clip_value) -> None:
    r"""Clamp every gradient entry of ``parameters`` to :math:`[-\text{clip\_value},
    \text{clip\_value}]`, in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
