"""``LayerNorm`` and ``RMSNorm`` with torch.nn's arguments."""

import numpy as np

from .. import functional as F
from .._checks import boolean, nonnegative, resolve_dtype, same_dtype, shape_tuple
from .._per_example import accumulate_sample, per_example_active
from .module import Module, Parameter


class LayerNorm(Module):
    r"""Normalise the trailing ``normalized_shape`` axes to zero mean and unit variance, then
    scale by ``weight`` and shift by ``bias`` (Ba et al., 2016). See
    :func:`scratchlm.functional.layer_norm_forward` for the equations.

    Parameters: ``weight`` (ones) and ``bias`` (zeros), both of shape ``normalized_shape``.
    Shapes: x ``(..., *normalized_shape)`` -> y same.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = shape_tuple(normalized_shape, "normalized_shape")  # int, tuple or list
        self.eps = nonnegative(eps, "eps")
        self.elementwise_affine = boolean(elementwise_affine, "elementwise_affine")
        bias = boolean(bias, "bias")
        self.dtype = resolve_dtype(dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, self.dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, self.dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and self.weight is not None:
            same_dtype(x, "x", self.weight.dtype, "LayerNorm")
        y, self._cache = F.layer_norm_forward(
            x, self.normalized_shape,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data, self.eps)
        return y

    def backward(self, dy):
        dx, _, dw, db = F.layer_norm_backward(dy, self._saved())
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += dw
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += db
        if per_example_active():                       # DP-SGD: each example's dw, db too
            c = self._saved()
            xhat = (c.rows - c.mean[:, None]) * c.rstd[:, None]                # (R, C)
            _norm_samples(dy, xhat, self.weight, self.bias)
        return dx

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


def _norm_samples(dy, xhat, weight, bias):
    """Per-example gradients of a normalisation's affine part: from y = xhat * w + b, over each
    example's rows (the batch is dy's first axis): dw_b = sum dy * xhat, db_b = sum dy."""
    B = dy.shape[0]
    C = xhat.shape[1]
    d3 = dy.reshape(B, -1, C)                                              # (B, T, C)
    if weight is not None:
        accumulate_sample(weight, (d3 * xhat.reshape(B, -1, C)).sum(axis=1).reshape(
            (B,) + weight.shape))
    if bias is not None:
        accumulate_sample(bias, d3.sum(axis=1).reshape((B,) + bias.shape))


class RMSNorm(Module):
    r"""Scale the trailing ``normalized_shape`` axes to unit root-mean-square, then by
    ``weight`` (Zhang & Sennrich, 2019), with ``torch.nn.RMSNorm``'s arguments: ``eps=None``
    means ``torch.finfo(dtype).eps``. See :func:`scratchlm.functional.rms_norm_forward`.

    Parameters: ``weight`` (ones) of shape ``normalized_shape`` (none without
    ``elementwise_affine``). Shapes: x ``(..., *normalized_shape)`` -> y same.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = shape_tuple(normalized_shape, "normalized_shape")
        self.eps = None if eps is None else nonnegative(eps, "eps")
        self.elementwise_affine = boolean(elementwise_affine, "elementwise_affine")
        self.dtype = resolve_dtype(dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, self.dtype)) if elementwise_affine else None

    def forward(self, x):
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and self.weight is not None:
            same_dtype(x, "x", self.weight.dtype, "RMSNorm")
        y, self._cache = F.rms_norm_forward(
            x, self.normalized_shape, None if self.weight is None else self.weight.data, self.eps)
        return y

    def backward(self, dy):
        dx, _, dw = F.rms_norm_backward(dy, self._saved())
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += dw
        if per_example_active():                       # DP-SGD: each example's dw too
            c = self._saved()
            _norm_samples(dy, c.rows * c.rstd[:, None], self.weight, None)
        return dx

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
