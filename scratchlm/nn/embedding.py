"""``Embedding``: a lookup table of token vectors (torch.nn.Embedding's names and init)."""

import numpy as np

from .. import functional as F
from .._checks import integer, make_rng, positive_int, resolve_dtype
from .module import Module, Parameter


class Embedding(Module):
    r""":math:`y = W[\mathrm{ids}]`.

    Args:
        num_embeddings: vocabulary size V.  embedding_dim: D.
        padding_idx: a row kept at zero that receives no gradient (negative counts from the end,
            as torch).
        dtype, rng: as :class:`~scratchlm.nn.Linear`.

    Parameters: ``weight`` ``(V, D)`` drawn from N(0, 1) (torch's default), padding row zeroed.
    Shapes: ids (any, integer) -> y ``ids.shape + (D,)``. ``backward`` returns ``None`` (ids have
    no gradient) and accumulates into ``weight.grad`` with a Numba scatter-add.
    """

    differentiable_inputs = ()

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32, rng=None):
        super().__init__()
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = integer(padding_idx, "padding_idx")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be in [-{self.num_embeddings}, {self.num_embeddings}), got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = resolve_dtype(dtype)
        w = make_rng(rng).standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)

    def forward(self, ids):
        y, self._cache = F.embedding_forward(ids, self.weight.data, self.padding_idx)
        return y

    def backward(self, dy):
        F.embedding_backward(dy, self._saved(), dweight_out=self.weight.grad)
        return None

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
