"""Token embedding: a table lookup forward, a scatter-add backward."""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, index_array, integer, upstream
from ..kernels import embedding as K


class EmbeddingCache(NamedTuple):
    ids: np.ndarray              # (...) integer, the looked-up rows
    weight_shape: tuple          # (num_embeddings, embedding_dim)
    dtype: np.dtype              # the table's dtype
    padding_idx: int | None      # the row that gets no gradient, or None


def embedding_forward(ids, weight, padding_idx=None):
    r"""Look up rows of the table: :math:`y[\ldots] = W[\mathrm{ids}[\ldots]]`.

    Args:
        ids: integer array of any shape, every entry in ``[0, num_embeddings)``.
        weight: ``(num_embeddings, embedding_dim)``.
        padding_idx: a row that receives no gradient (as ``torch.nn.functional.embedding``),
            or ``None``; negative counts from the end (``-1`` is the last row), as torch.

    Returns:
        ``y``: ``ids.shape + (embedding_dim,)`` and an :class:`EmbeddingCache`.
    """
    weight = float_array(weight, "weight", ndim=2, finite=False)
    ids = index_array(ids, "ids", weight.shape[0], allow_empty=False)
    if padding_idx is not None:                  # torch's normalisation: -1 is the last row
        V = weight.shape[0]
        padding_idx = integer(padding_idx, "padding_idx")
        if not -V <= padding_idx < V:
            raise ValueError(f"padding_idx must be in [-{V}, {V}) (num_embeddings {V}), got "
                             f"{padding_idx}")
        padding_idx %= V
    y = weight[ids]                                             # ids.shape -> ids.shape + (D,)
    return y, EmbeddingCache(ids, weight.shape, weight.dtype, padding_idx)


def embedding_backward(dy, cache: EmbeddingCache, dweight_out=None):
    r"""From ``y = W[ids]``: :math:`dW_v = \sum_{i:\,\mathrm{ids}_i = v} dy_i` (scatter-add),
    and no gradient for the padding row.

    The sum is formed per distinct id in a compact ``(U, D)`` buffer (a Numba scatter-add), then
    written into the table's rows once -- so accumulating into an existing gradient adds each
    row's total exactly once, and backward twice gives exactly twice the gradient.

    Args:
        dy: ``ids.shape + (embedding_dim,)``.
        dweight_out: an explicit, optional accumulation target, as torch's ``out=``: a
            ``(num_embeddings, embedding_dim)`` array the caller passes on purpose, to which
            the gradient is *added* in place (``nn.Embedding`` passes ``weight.grad``, sparing
            a dense ``(V, D)`` temporary). It is the only argument any backward here writes
            to; without it nothing is mutated and a fresh array is returned.

    Returns:
        ``(None, dweight)`` -- ids are not differentiable; ``dweight`` is ``dweight_out``
        itself (after the addition) when one was passed.
    """
    ids, shape, dtype, padding_idx = cache.ids, cache.weight_shape, cache.dtype, cache.padding_idx
    flat_ids = ids.reshape(-1)                                              # (N,)
    upstream(dy, ids.shape + (shape[1],), dtype)
    flat_dy = np.ascontiguousarray(dy).reshape(-1, shape[1])                # (N, D)
    if padding_idx is not None:
        keep = flat_ids != padding_idx
        flat_ids, flat_dy = flat_ids[keep], flat_dy[keep]
    rows, slot = np.unique(flat_ids, return_inverse=True)                   # (U,), (N,)
    drows = np.zeros((rows.size, shape[1]), dtype=dtype)                    # (U, D)
    K.scatter_add_rows(drows, np.ascontiguousarray(slot, dtype=np.int64), flat_dy)
    dweight = np.zeros(shape, dtype=dtype) if dweight_out is None else dweight_out
    dweight[rows] += drows                                                  # rows are distinct
    return None, dweight
