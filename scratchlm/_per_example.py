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


def accumulate_sample(p, sample) -> None:
    """Add ``sample`` (batch, *p.shape) to ``p.grad_sample`` (a trainable ``p`` only)."""
    if not p.requires_grad:
        return
    sample = np.asarray(sample, dtype=p.data.dtype)
    if p.grad_sample is None:
        p.grad_sample = sample
    elif p.grad_sample.shape != sample.shape:
        raise ValueError(f"per-example gradients of one parameter from two uses with different "
                         f"batches: {p.grad_sample.shape} and {sample.shape}")
    else:
        p.grad_sample = p.grad_sample + sample


def linear_samples(x, dy):
    """x (B, ..., in), dy (B, ..., out) -> per-example (dW (B, out, in), db (B, out)):
    dW_b = sum over b's positions t of dy_bt x_bt^T."""
    B = x.shape[0]
    x3 = x.reshape(B, -1, x.shape[-1])                                     # (B, T, in)
    d3 = dy.reshape(B, -1, dy.shape[-1])                                   # (B, T, out)
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
