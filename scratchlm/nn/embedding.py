"""``Embedding``: a lookup table of token vectors (torch.nn.Embedding's names and init)."""

import numpy as np

from .. import functional as F
from .._checks import boolean, float_array, integer, make_rng, positive_int, resolve_dtype, scalar
from .._per_example import accumulate_sample, embedding_samples, per_example_active
from .module import Module, Parameter


class Embedding(Module):
    r""":math:`y = W[\mathrm{ids}]`.

    Args:
        num_embeddings: vocabulary size V.  embedding_dim: D.
        padding_idx: a row kept at zero that receives no gradient (negative counts from the end,
            as torch).
        max_norm, norm_type, scale_grad_by_freq, sparse: torch's, in torch's positions so that a
            positional call means the same; not implemented, so only their defaults (``None``,
            any ``norm_type``, ``False``, ``False``) are accepted -- anything else is refused,
            never silently ignored.
        dtype, rng: as :class:`~scratchlm.nn.Linear`.
        _weight, _freeze: torch's private pair behind :meth:`from_pretrained` (keyword-only
            here): a ``(V, D)`` array of ``dtype`` used as the table (copied; the padding row
            kept as given), and whether it is frozen.

    Parameters: ``weight`` ``(V, D)`` drawn from N(0, 1) (torch's default), padding row zeroed.
    Shapes: ids (any, integer) -> y ``ids.shape + (D,)``. ``backward`` returns ``None`` (ids have
    no gradient) and accumulates into ``weight.grad`` with a Numba scatter-add.
    """

    differentiable_inputs = ()

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, dtype=np.float32,
                 rng=None, *, _weight=None, _freeze=False):
        super().__init__()
        if max_norm is not None:
            scalar(max_norm, "max_norm")
            raise ValueError(f"max_norm is not implemented (torch renormalises the looked-up rows "
                             f"in place); pass max_norm=None, got {max_norm}")
        scalar(norm_type, "norm_type")                   # only used with max_norm
        if boolean(scale_grad_by_freq, "scale_grad_by_freq"):
            raise ValueError("scale_grad_by_freq=True is not implemented; pass False")
        if boolean(sparse, "sparse"):
            raise ValueError("sparse=True (sparse gradients) is not implemented; pass False")
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = integer(padding_idx, "padding_idx")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be in [-{self.num_embeddings}, {self.num_embeddings}), got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = resolve_dtype(dtype)
        freeze = boolean(_freeze, "_freeze")
        if _weight is not None:                          # torch: used as given, padding row too
            w = float_array(_weight, "_weight", ndim=2)
            if w.shape != (self.num_embeddings, self.embedding_dim):
                raise ValueError(f"_weight must have shape ({self.num_embeddings}, "
                                 f"{self.embedding_dim}) (num_embeddings, embedding_dim), got "
                                 f"{w.shape}")
            if w.dtype != self.dtype:
                raise TypeError(f"_weight has dtype {w.dtype} but dtype is {self.dtype}")
            self.weight = Parameter(w, requires_grad=not freeze)   # Parameter copies the data
            return
        w = make_rng(rng).standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w, requires_grad=not freeze)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False, sparse=False) -> "Embedding":
        """An Embedding whose table is ``embeddings`` ``(V, D)`` (float32 or float64, finite;
        the weight keeps that dtype), as ``torch.nn.Embedding.from_pretrained``: ``freeze=True``
        (the default) sets ``weight.requires_grad = False``; ``padding_idx``'s row is kept as
        given (not zeroed) and receives no gradient. Unlike torch, the array is copied, not
        shared. The other options are the constructor's (only their defaults are accepted).
        Word vectors: ``Embedding.from_pretrained(kv.vectors_for(vocab)[0], freeze=False)``."""
        embeddings = float_array(embeddings, "embeddings", ndim=2)
        return cls(embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm, norm_type,
                   scale_grad_by_freq, sparse, dtype=embeddings.dtype,
                   _weight=embeddings, _freeze=boolean(freeze, "freeze"))

    def forward(self, ids):
        y, self._cache = F.embedding_forward(ids, self.weight.data, self.padding_idx)
        return y

    def backward(self, dy):
        """``dy`` (..., C) for the looked-up ids (...); or with one more leading axis when the
        output was broadcast over a batch (positions looked up once, added to every example):
        the gradient then sums over that axis (and per example, each its own)."""
        cache = self._saved()
        if not self.weight.requires_grad:              # frozen: nothing to do (ids have no grad)
            return None
        batched = dy.ndim == cache.ids.ndim + 2
        F.embedding_backward(np.ascontiguousarray(dy.sum(axis=0)) if batched else dy, cache,
                             dweight_out=self.weight.grad)
        if per_example_active():                       # DP-SGD: each example's rows too
            accumulate_sample(self.weight, embedding_samples(
                cache.ids, dy, self.num_embeddings, self.padding_idx))
        return None

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
