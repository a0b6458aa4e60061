"""Hypothesis strategies for fuzzing layers -- ours and yours (needs the ``test`` extra).

Arrays are generated from a drawn seed with NumPy rather than element by element: fast for any
size, reproducible, and still shrinkable through the shape and the seed.

Example::

    from hypothesis import given
    from scratchlm.testing import arrays, shapes
    from scratchlm.gradcheck import check_module

    @given(arrays(shapes(min_dims=2, max_dims=3), min_abs=1e-2))
    def test_my_layer(x):
        assert check_module(MyLayer(x.shape[-1]), x).ok
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

__all__ = ["shapes", "arrays", "token_ids", "seeds"]


def seeds():
    """A 32-bit seed."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 6):
    """Tuples of ``min_dims``..``max_dims`` sides, each in ``[min_side, max_side]``."""
    side = st.integers(min_value=min_side, max_value=max_side)
    return st.integers(min_value=min_dims, max_value=max_dims).flatmap(
        lambda n: st.tuples(*[side] * n))


def _strategy(value):
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def arrays(shape, dtype=np.float64, scale: float = 1.0, min_abs: float = 0.0, loc: float = 0.0):
    """Well-conditioned float arrays: ``loc + scale * N(0, 1)`` entries, each pushed at least
    ``min_abs`` away from ``loc`` (keep non-smooth ops' inputs off their kinks for gradient checks).

    ``shape`` may be a tuple or a strategy of tuples (e.g. :func:`shapes`).
    """
    def build(args):
        shp, seed = args
        z = np.random.default_rng(seed).standard_normal(shp) * scale
        if min_abs:
            z = np.where(z >= 0, np.maximum(z, min_abs), np.minimum(z, -min_abs))
        return (loc + z).astype(dtype)
    return st.tuples(_strategy(shape), seeds()).map(build)


def token_ids(vocab_size, shape, dtype=np.int64):
    """Integer arrays with entries uniform in ``[0, vocab_size)``; both arguments may be
    strategies."""
    def build(args):
        v, shp, seed = args
        return np.random.default_rng(seed).integers(0, v, size=shp).astype(dtype)
    return st.tuples(_strategy(vocab_size), _strategy(shape), seeds()).map(build)
