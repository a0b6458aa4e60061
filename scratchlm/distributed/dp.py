r"""Differentially private SGD (Abadi et al., 2016), from the explicit backward.

A step: a batch drawn by **Poisson sampling** (each of the :math:`n` examples present with
probability :math:`q`, so its size varies); each example's gradient :math:`g_i` -- which an
explicit backward has in hand, one outer product per ``Linear`` use, whose norm comes from its
factors where that is cheaper (:class:`~scratchlm._per_example.GhostSample`, Goodfellow 2015);
its joint norm over every trainable parameter **clipped** to
:math:`C`; the clipped gradients **summed**, **Gaussian noise** :math:`\mathcal N(0, \sigma^2
C^2)` added to every coordinate, and the result divided by the expected batch size :math:`qn`
(Opacus's mean reduction):

.. math::

    \tilde g = \frac{1}{qn}\Big(\sum_{i \in \text{batch}} g_i \min\big(1, \tfrac{C}{\lVert g_i
    \rVert + 10^{-6}}\big) + \mathcal N(0, \sigma^2 C^2 I)\Big).

Any optimizer then takes :math:`\tilde g` as its gradient. The
:class:`~scratchlm.distributed.accountant.RDPAccountant` turns :math:`(q, \sigma)` and the
number of steps into :math:`\varepsilon` at a chosen :math:`\delta`.

The per-example gradient of example :math:`i` is of its own loss, the mean over its tokens. The
model's loss is the mean over the batch, whose backward gives :math:`g_i / B`, so
:func:`private_gradients` multiplies by the batch size :math:`B` first. That is exact when
every example has the same number of loss terms (language-model windows, images). Data
parallel: each rank clips and sums its own examples, the sums are added over the ranks, and every
rank adds the *same* noise (one generator, the same seed and draws everywhere), so the result
is one process's.
"""

from __future__ import annotations

import numpy as np

from .._per_example import GhostSample

__all__ = ["private_gradients", "per_example_norms", "SUPPORTED"]

#: the layers whose backward computes per-example gradients
SUPPORTED = ("Linear", "Embedding", "LayerNorm", "RMSNorm", "MultiheadAttention")


def _trainable(model):
    seen, out = set(), []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def per_example_norms(model, batch_size: int) -> np.ndarray:
    """``(B,)`` float64: each example's gradient norm over every trainable parameter, from the
    ``grad_sample`` a backward under ``per_example_gradients()`` left (times ``batch_size``:
    the gradients of each example's own loss). A trainable parameter without one is an error
    naming it."""
    sq = np.zeros(batch_size, np.float64)
    for name, p in _trainable(model):
        if p.grad_sample is None:
            raise ValueError(f"{name} has no per-example gradient: DP-SGD supports models "
                             f"whose trainable parameters live in {', '.join(SUPPORTED)} "
                             f"layers (freeze others with requires_grad=False)")
        if isinstance(p.grad_sample, GhostSample):                 # from its factors
            sq += p.grad_sample.sq_norms() * float(batch_size) ** 2
            continue
        g = p.grad_sample.reshape(batch_size, -1).astype(np.float64) * batch_size
        sq += np.einsum("bi,bi->b", g, g)
    return np.sqrt(sq)


def private_gradients(model, batch_size: int, clip: float, noise: float, rng,
                      expected_batch: float, sum_ranks=None) -> dict:
    """Replace every trainable ``p.grad`` by DP-SGD's noisy clipped mean (module docstring),
    from the ``grad_sample`` of the step's backward over ``batch_size`` examples (0: an empty
    Poisson batch, noise only). ``rng`` draws the noise (the same generator state on every
    rank); ``sum_ranks(params)``, data parallel, sums the clipped sums over the ranks in place.
    Clears ``grad_sample``. Returns ``{"clipped": fraction of examples clipped, "norm": their
    median norm}``."""
    params = [p for _, p in _trainable(model)]
    if batch_size:
        norms = per_example_norms(model, batch_size)
        factor = np.minimum(1.0, clip / (norms + 1e-6)) * batch_size         # (B,)
        for p in params:
            if isinstance(p.grad_sample, GhostSample):
                p.grad[...] = p.grad_sample.weighted_sum(factor)            # sum_i c_i g_i
                continue
            g = p.grad_sample.reshape(batch_size, -1)
            p.grad[...] = (factor.astype(g.dtype) @ g).reshape(p.shape)     # sum_i c_i g_i
    else:
        norms = np.zeros(0)
        for p in params:
            p.grad[...] = 0
    for p in params:
        p.grad_sample = None
    if sum_ranks is not None:
        sum_ranks(params)
    for p in params:                         # the same draws on every rank, in one order
        p.grad += rng.normal(0.0, noise * clip, p.shape).astype(p.grad.dtype)
        p.grad /= p.grad.dtype.type(expected_batch)
    return {"clipped": float(np.mean(norms > clip)) if norms.size else 0.0,
            "norm": float(np.median(norms)) if norms.size else 0.0}
