"""Affine map: the fully connected layer."""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, last_dim, upstream
from ..kernels.gemm import matmul


class LinearCache(NamedTuple):
    x: np.ndarray                # (..., in_features) the input
    weight: np.ndarray           # (out_features, in_features)
    has_bias: bool               # a bias was added


def linear_forward(x, weight, bias=None):
    r"""Affine map over the last axis, :math:`y = x W^\top + b`.

    Args:
        x: ``(..., in_features)`` input.
        weight: ``(out_features, in_features)`` -- torch's layout.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        ``y``: ``(..., out_features)`` and a :class:`LinearCache` ``(x, weight, has_bias)``.
    """
    x = float_array(x, "x", min_ndim=1)
    weight = float_array(weight, "weight", ndim=2, finite=False)
    last_dim(x, "x", weight.shape[1], "in_features of weight")
    if x.dtype != weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but weight has dtype {weight.dtype}")
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)           # (N, in) @ (in, out) -> (N, out): one gemm
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))            # (..., out)
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, finite=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (out_features), got "
                             f"{bias.shape}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but weight has dtype {weight.dtype}")
        y += bias
    return y, LinearCache(x, weight, bias is not None)


def linear_backward(dy, cache: LinearCache, *, needs_input_grad=(True, True, True)):
    r"""Gradients of :math:`y = x W^\top + b`.

    From ``y = x @ W.T + b``:  ``dx = dy @ W``,  ``dW = dy^T x`` (summed over every leading axis),
    ``db = sum(dy)`` over every leading axis.

    Args:
        dy: ``(..., out_features)``.

        needs_input_grad: which of ``(x, weight, bias)`` to differentiate (as
            ``torch.autograd.Function``'s ``ctx.needs_input_grad``); the others are returned as
            ``None`` and their products skipped (a frozen weight's ``dW`` is a whole GEMM).

    Returns:
        ``(dx, dweight, dbias)`` with the shapes of ``x``, ``weight``, ``bias`` (``dbias`` is
        ``None`` without a bias).
    """
    x, weight = cache.x, cache.weight
    upstream(dy, x.shape[:-1] + (weight.shape[0],), x.dtype)
    dy2 = dy.reshape(-1, dy.shape[-1])                          # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                             # (N, in)
    need_x, need_w, need_b = needs_input_grad
    dx = matmul(dy2, weight).reshape(x.shape) if need_x else None   # (N, out) @ (out, in) -> (..., in)
    dweight = matmul(dy2.T, x2) if need_w else None             # (out, N) @ (N, in) -> (out, in)
    dbias = dy2.sum(axis=0) if cache.has_bias and need_b else None   # (out,)
    return dx, dweight, dbias
