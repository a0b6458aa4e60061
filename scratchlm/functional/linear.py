"""Affine map: the fully connected layer."""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, last_dim, upstream
from .. import _autocast as _precision
from ..kernels import bias as KB, split_run
from ..kernels.gemm import matmul
from .activation import GRAIN


class LinearCache(NamedTuple):
    x: np.ndarray                # (..., in_features) the input (2 bytes an entry under autocast)
    weight: np.ndarray           # (out_features, in_features)
    has_bias: bool               # a bias was added
    precision: str | None = None  # the autocast precision of the forward ("fp16", "bf16")


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
    mode = _precision.active()
    if mode is not None:                    # a tensor core: 16-bit operands, float32 sums
        return _linear_forward16(x, weight, bias, mode)
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)           # (N, in) @ (in, out) -> (N, out): one gemm
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))            # (..., out)
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, finite=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (out_features), got "
                             f"{bias.shape}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but weight has dtype {weight.dtype}")
        y2 = y.reshape(-1, y.shape[-1])                                     # (N, out), a view
        split_run(lambda lo, hi: KB.add_bias(y2[lo:hi], bias), y2.shape[0],
                  max(1, GRAIN // max(1, y2.shape[1])))                     # y += b, by rows
    return y, LinearCache(x, weight, bias is not None)


def _linear_forward16(x, weight, bias, mode):
    """The forward under autocast: ``y = r(r(x) r(W)^T + r(b))``, r rounding to ``mode``'s
    16-bit format; the input kept for the backward in 16 bits."""
    x16 = _precision.to16(x, mode)                                           # (..., in)
    w16 = _precision.to16(weight, mode)                                      # (out, in)
    y = matmul(x16.reshape(-1, x.shape[-1]), w16.T)                         # (N, out) float32
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, finite=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (out_features), got "
                             f"{bias.shape}")
        y += _precision.to16(bias, mode)
    return _precision.to16(y, mode), LinearCache(_precision.pack16(x16, mode), weight,
                                                 bias is not None, mode)


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
    if cache.precision is not None:
        return _linear_backward16(dy, cache, needs_input_grad)
    x, weight = cache.x, cache.weight
    upstream(dy, x.shape[:-1] + (weight.shape[0],), x.dtype)
    dy2 = dy.reshape(-1, dy.shape[-1])                          # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                             # (N, in)
    need_x, need_w, need_b = needs_input_grad
    dx = matmul(dy2, weight).reshape(x.shape) if need_x else None   # (N, out) @ (out, in) -> (..., in)
    dweight = matmul(dy2.T, x2) if need_w else None             # (out, N) @ (N, in) -> (out, in)
    dbias = _column_sums(dy2) if cache.has_bias and need_b else None   # (out,) = sum_n dy
    return dx, dweight, dbias


def _column_sums(m):
    """m: (N, out) -> (out,) its column sums, in the calling thread: a pass that only streams
    memory, which two threads here read no faster than one (split by columns it took 0.35 ms for
    (2048, 768) against 0.22 in one thread, 2026-12-03)."""
    m = np.ascontiguousarray(m)
    return KB.column_sums(m, 0, m.shape[1], np.empty(m.shape[1], m.dtype))


def _linear_backward16(dy, cache, needs_input_grad):
    """The backward under autocast: the products of 16-bit operands, each result rounded."""
    mode = cache.precision
    x16 = _precision.unpack16(cache.x, mode)                                 # (..., in)
    upstream(dy, x16.shape[:-1] + (cache.weight.shape[0],), np.float32)
    dy16 = _precision.to16(dy, mode).reshape(-1, dy.shape[-1])               # (N, out)
    need_x, need_w, need_b = needs_input_grad
    r = _precision.to16
    dx = r(matmul(dy16, r(cache.weight, mode)), mode).reshape(x16.shape) if need_x else None
    dweight = r(matmul(dy16.T, x16.reshape(-1, x16.shape[-1])), mode) if need_w else None
    dbias = r(dy16.sum(axis=0), mode) if cache.has_bias and need_b else None
    return dx, dweight, dbias
