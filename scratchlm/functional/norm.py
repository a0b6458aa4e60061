"""Layer normalisation (Ba, Kiros & Hinton, 2016) and RMS normalisation (Zhang & Sennrich, 2019)."""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, nonnegative, shape_tuple, upstream
from ..kernels import layernorm as K
from ..kernels import rmsnorm as KR


class LayerNormCache(NamedTuple):
    rows: np.ndarray             # (R, C) the input, C = prod(normalized_shape), contiguous
    weight: np.ndarray           # (C,) gamma as a row (ones without a weight)
    mean: np.ndarray             # (R,) float64: mu of each row
    rstd: np.ndarray             # (R,) float64: 1 / sqrt(sigma^2 + eps) of each row
    x_shape: tuple               # the input's shape
    normalized_shape: tuple
    has_weight: bool
    has_bias: bool


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    r"""Normalise over the trailing ``normalized_shape`` axes, then scale and shift:

    .. math::  \mu = \tfrac1C\sum_c x_c,\quad \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
               y = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}\,\gamma + \beta

    (biased variance, as ``torch.nn.functional.layer_norm``.)

    Any finite input normalises to a finite output: the statistics are computed in float64 (a
    float32 row such as ``[3e38, -3e38, ...]``, whose variance passes float32's max, gives the
    exact answer where torch gives NaN; float64 rows that would overflow are pre-scaled by a power
    of two). See ``scratchlm/kernels/layernorm.py`` for the rules.

    Args:
        x: ``(..., *normalized_shape)``.
        normalized_shape: int or tuple, the trailing shape normalised over (C = its product).
        weight, bias: ``normalized_shape`` arrays (gamma, beta) or ``None``.
        eps: added to the variance.

    Returns:
        ``y`` (shape of ``x``) and a :class:`LayerNormCache` ``(rows, weight, mean, rstd, ...)``.
    """
    x = float_array(x, "x", min_ndim=1)
    shape = shape_tuple(normalized_shape, "normalized_shape")
    eps = nonnegative(eps, "eps")
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"x must end with normalized_shape {shape}, got shape {x.shape}")
    C = int(np.prod(shape))
    rows = np.ascontiguousarray(x).reshape(-1, C)                       # (R, C)
    ones = np.ones(C, dtype=x.dtype)
    w = ones if weight is None else _param(weight, "weight", shape, x.dtype).reshape(C)
    b = np.zeros(C, dtype=x.dtype) if bias is None else _param(bias, "bias", shape, x.dtype).reshape(C)
    y, mean, rstd = K.layernorm_forward(rows, w, b, float(eps))         # (R, C), (R,), (R,)
    cache = LayerNormCache(rows, w, mean, rstd, x.shape, shape, weight is not None,
                           bias is not None)
    return y.reshape(x.shape), cache


def layer_norm_backward(dy, cache: LayerNormCache):
    r"""From ``y = xhat * gamma + beta``, ``xhat = (x - mu) * rstd``:

    .. math::  \hat g = dy\,\gamma,\qquad
               dx = \mathrm{rstd}\,\big(\hat g - \overline{\hat g} - \hat x\,\overline{\hat g\,\hat x}\big),
               \qquad d\gamma = \textstyle\sum dy\,\hat x,\qquad d\beta = \sum dy

    (bars are means over the normalised axes; sums run over every leading axis).

    Returns ``(dx, None, dweight, dbias)`` -- ``None`` for ``normalized_shape``, and for an
    absent weight or bias.
    """
    rows, shape = cache.rows, cache.normalized_shape
    upstream(dy, cache.x_shape, rows.dtype)
    drows = np.ascontiguousarray(dy).reshape(rows.shape)                     # (R, C)
    dx, dw, db = K.layernorm_backward(drows, rows, cache.weight, cache.mean,
                                      cache.rstd)                            # (R, C), (C,), (C,)
    return (dx.reshape(cache.x_shape), None,
            dw.reshape(shape) if cache.has_weight else None,
            db.reshape(shape) if cache.has_bias else None)


def _param(p, name, shape, dtype):
    p = float_array(p, name, finite=False)
    if p.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (normalized_shape), got {p.shape}")
    if p.dtype != dtype:
        raise TypeError(f"{name} has dtype {p.dtype} but x has dtype {dtype}")
    return np.ascontiguousarray(p)


# ------------------------------------------------------------------------------------------------
# RMSNorm (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization")
# ------------------------------------------------------------------------------------------------
class RMSNormCache(NamedTuple):
    rows: np.ndarray             # (R, C) the input, C = prod(normalized_shape), contiguous
    weight: np.ndarray           # (C,) gamma as a row (ones without a weight)
    rstd: np.ndarray             # (R,) float64: 1 / sqrt(mean(x^2) + eps) of each row
    x_shape: tuple               # the input's shape
    normalized_shape: tuple
    has_weight: bool


def rms_norm_forward(x, normalized_shape, weight=None, eps=None):
    r"""Scale each row to unit root-mean-square over the trailing ``normalized_shape`` axes:

    .. math::  r = \Big(\tfrac1C\textstyle\sum_c x_c^2 + \epsilon\Big)^{-1/2},\qquad y = x\,r\,\gamma

    (no mean is subtracted and there is no bias), as ``torch.nn.functional.rms_norm``:
    ``eps=None`` means ``torch.finfo(x.dtype).eps``. The statistics are computed in float64
    (see ``scratchlm/kernels/rmsnorm.py`` for the whole-range rules).

    Returns ``y`` (shape of ``x``) and an :class:`RMSNormCache`.
    """
    x = float_array(x, "x", min_ndim=1)
    shape = shape_tuple(normalized_shape, "normalized_shape")
    eps = float(np.finfo(x.dtype).eps) if eps is None else nonnegative(eps, "eps")
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"x must end with normalized_shape {shape}, got shape {x.shape}")
    C = int(np.prod(shape))
    rows = np.ascontiguousarray(x).reshape(-1, C)                       # (R, C)
    w = np.ones(C, x.dtype) if weight is None else _param(weight, "weight", shape, x.dtype).reshape(C)
    y, rstd = KR.rmsnorm_forward(rows, w, float(eps))                   # (R, C), (R,)
    return y.reshape(x.shape), RMSNormCache(rows, w, rstd, x.shape, shape, weight is not None)


def rms_norm_backward(dy, cache: RMSNormCache):
    r"""From ``y = x r gamma``, ``r = (mean(x^2) + eps)^{-1/2}``, with :math:`\hat x = x r`,
    :math:`g = dy\,\gamma`:

    .. math::  dx = r\,\big(g - \hat x\,\overline{g\,\hat x}\big),\qquad
               d\gamma = \textstyle\sum dy\,\hat x

    (the bar a mean over the normalised axes; ``dgamma`` sums over every leading axis).
    Returns ``(dx, None, dweight)`` -- ``None`` for ``normalized_shape`` and for an absent weight.
    """
    rows = cache.rows
    upstream(dy, cache.x_shape, rows.dtype)
    drows = np.ascontiguousarray(dy).reshape(rows.shape)                     # (R, C)
    dx, dw = KR.rmsnorm_backward(drows, rows, cache.weight, cache.rstd)     # (R, C), (C,)
    return (dx.reshape(cache.x_shape), None,
            dw.reshape(cache.normalized_shape) if cache.has_weight else None)
