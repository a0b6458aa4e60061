"""Per-example gradients: the switch the parametric layers' backward reads, and how they add to
``Parameter.grad_sample``. With no dependency on the rest of the package (``scratchlm.distributed.
dp`` documents and uses it).

Under :func:`per_example_gradients`, ``Linear``, ``Embedding``, ``LayerNorm`` and ``RMSNorm``
also keep, beside the summed ``p.grad``, each example's own gradient in ``p.grad_sample``
``(batch, *p.shape)`` -- the batch being the input's first axis -- adding up over the layer's
uses (a tied weight gets the sum of both). The sum over the batch of ``grad_sample`` is what the
backward adds to ``grad``. These are the gradients of the loss the backward started from: of a
mean over the batch, each example's gradient divided by the batch size.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

_state = threading.local()


def per_example_active() -> bool:
    return getattr(_state, "on", False)


@contextlib.contextmanager
def per_example_gradients():
    """Within: every supported layer's backward also fills ``p.grad_sample``."""
    before = per_example_active()
    _state.on = True
    try:
        yield
    finally:
        _state.on = before


class GhostSample:
    r"""A ``Linear`` weight's per-example gradients, kept as the factors they are made of:
    for each use, the input ``x`` (B, T, in) and the upstream gradient ``dy`` (B, T, out), so
    that :math:`G_b = \sum_{uses} \sum_t dy_{bt} x_{bt}^\top` is never formed.

    Its squared norms come from the factors (Goodfellow, 2015, for one position an example:
    :math:`\lVert x_b \rVert^2 \lVert dy_b \rVert^2`; over T positions, the "ghost norm"):

    .. math::

        \lVert G_b \rVert_F^2 = \sum_{u, v} \sum_{t, s}
            (x^u_{bt} \cdot x^v_{bs})\,(dy^u_{bt} \cdot dy^v_{bs}),

    and a weighted sum over the batch, :math:`\sum_b c_b G_b = \sum_u (c \odot dy^u)^\top
    x^u`, is one product per use. It costs :math:`O(B T^2 (in + out))` against materialising's
    :math:`O(B T\,in\,out)` time and :math:`B\,in\,out` memory, so a ``Linear`` keeps it when
    :math:`T (in + out) < in \cdot out`. ``shape`` is the materialised (B, out, in)."""

    def __init__(self, parts, dtype):
        self.parts, self.dtype = list(parts), np.dtype(dtype)
        x, dy = self.parts[0]
        self.shape = (x.shape[0], dy.shape[-1], x.shape[-1])

    def sq_norms(self) -> np.ndarray:
        """(B,) float64: each example's squared Frobenius norm."""
        total = np.zeros(self.shape[0], np.float64)
        for xu, du in self.parts:
            for xv, dv in self.parts:
                gx = np.matmul(xu.astype(np.float64), xv.astype(np.float64).transpose(0, 2, 1))
                gd = np.matmul(du.astype(np.float64), dv.astype(np.float64).transpose(0, 2, 1))
                total += np.einsum("bts,bts->b", gx, gd)                   # (B, T, T) each
        return total

    def weighted_sum(self, c) -> np.ndarray:
        """(out, in): sum_b c_b G_b."""
        c = np.asarray(c, self.dtype)
        return sum(np.einsum("bto,bti->oi", du * c[:, None, None], xu) for xu, du in self.parts)

    def dense(self) -> np.ndarray:
        """(B, out, in): every example's gradient, formed."""
        return sum(np.matmul(du.transpose(0, 2, 1), xu) for xu, du in self.parts).astype(
            self.dtype, copy=False)


def dense_sample(sample):
    """A ``grad_sample`` as an array (a :class:`GhostSample` formed)."""
    return sample.dense() if isinstance(sample, GhostSample) else sample


def accumulate_sample(p, sample) -> None:
    """Add ``sample`` (batch, *p.shape), or a :class:`GhostSample`, to ``p.grad_sample`` (a
    trainable ``p`` only). Two ghosts stay one (their uses listed); a ghost meeting an array
    (a weight tied to an embedding) is formed."""
    if not p.requires_grad:
        return
    if not isinstance(sample, GhostSample):
        sample = np.asarray(sample, dtype=p.data.dtype)
    old = p.grad_sample
    if old is None:
        p.grad_sample = sample
    elif old.shape != sample.shape:
        raise ValueError(f"per-example gradients of one parameter from two uses with different "
                         f"batches: {old.shape} and {sample.shape}")
    elif isinstance(old, GhostSample) and isinstance(sample, GhostSample):
        p.grad_sample = GhostSample(old.parts + sample.parts, old.dtype)
    else:
        p.grad_sample = dense_sample(old) + dense_sample(sample)


def linear_samples(x, dy, ghost=False):
    """x (B, ..., in), dy (B, ..., out) -> per-example (dW (B, out, in), db (B, out)):
    dW_b = sum over b's positions t of dy_bt x_bt^T. With ``ghost``, dW is a
    :class:`GhostSample` when that is the cheaper form."""
    B = x.shape[0]
    x3 = x.reshape(B, -1, x.shape[-1])                                     # (B, T, in)
    d3 = dy.reshape(B, -1, dy.shape[-1])                                   # (B, T, out)
    T, n_in, n_out = x3.shape[1], x3.shape[2], d3.shape[2]
    if ghost and T * (n_in + n_out) < n_in * n_out:
        return GhostSample([(x3, d3)], dy.dtype), d3.sum(axis=1)
    return np.matmul(d3.transpose(0, 2, 1), x3), d3.sum(axis=1)


def embedding_samples(ids, dy, num_embeddings, padding_idx):
    """ids (B, ...) -- or (...) looked up once for the whole batch (positions) -- and dy
    (B, ..., C) -> per-example dW (B, V, C): each example's rows of dy added at its ids."""
    B, C = dy.shape[0], dy.shape[-1]
    ids = np.broadcast_to(ids, dy.shape[:-1]).reshape(B, -1)               # (B, T)
    out = np.zeros((B * num_embeddings, C), dy.dtype)
    flat = (np.arange(B)[:, None] * num_embeddings + ids).reshape(-1)
    np.add.at(out, flat, dy.reshape(-1, C))
    out = out.reshape(B, num_embeddings, C)
    if padding_idx is not None:
        out[:, padding_idx] = 0
    return out
