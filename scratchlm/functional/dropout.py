"""Inverted dropout (Srivastava et al., 2014): zero each unit with probability p, scale the rest."""

from typing import NamedTuple

import numpy as np

from .._checks import boolean, float_array, probability, upstream


class DropoutCache(NamedTuple):
    mask: np.ndarray | None      # (...) like x: m / (1 - p), or None for the identity
    shape: tuple                 # x.shape
    dtype: np.dtype              # x.dtype


def dropout_forward(x, p: float = 0.5, training: bool = True, rng=None):
    r""":math:`y = x \odot m / (1 - p)` with :math:`m_i \sim \mathrm{Bernoulli}(1-p)`; identity when
    not training or ``p == 0``. ``p == 1`` zeroes everything (as torch).

    Args:
        x: any shape.
        rng: ``np.random.Generator`` drawing the mask (required when a mask is drawn).

    Returns:
        ``y`` and a :class:`DropoutCache`: the scaled mask (``None`` for the identity), shape
        and dtype.
    """
    x = float_array(x, "x")
    p = probability(p, "p")
    if not boolean(training, "training") or p == 0.0:
        return x, DropoutCache(None, x.shape, x.dtype)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator when dropout is active, got {type(rng).__name__}")
    if p == 1.0:
        mask = np.zeros_like(x)
    else:
        mask = (rng.random(x.shape, dtype=x.dtype) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, DropoutCache(mask, x.shape, x.dtype)


def dropout_backward(dy, cache: DropoutCache):
    r"""From ``y = x * mask``: :math:`dx = dy \odot \mathrm{mask}`."""
    upstream(dy, cache.shape, cache.dtype)
    return dy if cache.mask is None else dy * cache.mask
