"""Softmax and log-softmax along one axis (rows of a 2-D kernel after moving that axis last)."""

from typing import NamedTuple

import numpy as np

from .._checks import dim_index, float_array, upstream
from ..kernels import softmax as K


class SoftmaxCache(NamedTuple):
    y: np.ndarray                # (R, C) the output, ``dim`` moved last and flattened
    moved_shape: tuple           # x's shape with ``dim`` moved last
    dim: int
    x_shape: tuple               # the input's shape


class LogSoftmaxCache(NamedTuple):
    y: np.ndarray                # (R, C) the output log-probabilities, ``dim`` last, flattened
    moved_shape: tuple           # x's shape with ``dim`` moved last
    dim: int
    x_shape: tuple               # the input's shape


def _as_rows(x, dim):
    """Move axis ``dim`` last and flatten the rest: x (..., C, ...) -> (R, C) contiguous."""
    dim_index(dim, x.ndim)                   # an int in [-ndim, ndim): negative from the end
    moved = np.moveaxis(x, dim, -1)
    return np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]), moved.shape


def _from_rows(y, moved_shape, dim):
    return np.moveaxis(y.reshape(moved_shape), -1, dim)


def softmax_forward(x, dim: int = -1):
    r""":math:`y_i = e^{x_i - m} / \sum_j e^{x_j - m}` along ``dim`` with :math:`m = \max_j x_j`.

    x: any shape with ``x.shape[dim] = C`` -> y: same shape, summing to 1 along ``dim``.
    """
    x = float_array(x, "x", min_ndim=1)
    rows, moved = _as_rows(x, dim)                           # (R, C)
    y = K.softmax_forward(rows)                              # (R, C)
    return _from_rows(y, moved, dim), SoftmaxCache(y, moved, dim, x.shape)


def softmax_backward(dy, cache: SoftmaxCache):
    r"""From ``y = softmax(x)``: :math:`dx = y \odot (dy - \langle dy, y\rangle)` along ``dim``."""
    y, dim = cache.y, cache.dim
    drows, _ = _as_rows(upstream(dy, cache.x_shape, y.dtype), dim)   # (R, C)
    return _from_rows(K.softmax_backward(drows, y), cache.moved_shape, dim)


def log_softmax_forward(x, dim: int = -1):
    r""":math:`y_i = x_i - \log\sum_j e^{x_j}` (computed as ``x - m - log sum exp(x - m)``)."""
    x = float_array(x, "x", min_ndim=1)
    rows, moved = _as_rows(x, dim)                           # (R, C)
    y = K.log_softmax_forward(rows)                          # (R, C)
    return _from_rows(y, moved, dim), LogSoftmaxCache(y, moved, dim, x.shape)


def log_softmax_backward(dy, cache: LogSoftmaxCache):
    r"""From ``y = x - lse(x)``: :math:`dx = dy - \mathrm{softmax}(x) \sum_j dy_j`."""
    y, dim = cache.y, cache.dim
    drows, _ = _as_rows(upstream(dy, cache.x_shape, y.dtype), dim)   # (R, C)
    return _from_rows(K.log_softmax_backward(drows, y), cache.moved_shape, dim)
