r"""The losses word vectors are trained on, written out with their gradients: word2vec's
logistic loss over (input, target) pairs, and GloVe's weighted least squares.

The trainers (:mod:`scratchlm.kernels.word2vec`, :mod:`scratchlm.kernels.glove`) take SGD or
AdaGrad steps on these losses one example at a time, inside Numba kernels; the pairs here compute
the same losses and gradients for a whole batch, so they can be read and gradient-checked.
"""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, index_array, scalar


# ------------------------------------------------------------------------------------------------
# word2vec: skip-gram and CBOW, negative sampling and hierarchical softmax
# ------------------------------------------------------------------------------------------------
class Word2VecCache(NamedTuple):
    h: np.ndarray              # (B, D) the input vectors: the mean of each row's context vectors
    out_rows: np.ndarray       # (B, K, D) the target rows of syn1, as read
    context: np.ndarray        # (B, C) int64 context ids
    context_mask: np.ndarray   # (B, C) bool, which context slots count
    count: np.ndarray          # (B,) context slots that count (>= 1)
    targets: np.ndarray        # (B, K) int64 target rows of syn1
    target_mask: np.ndarray    # (B, K) bool, which target slots count
    residual: np.ndarray       # (B, K) sigma(s) - label, zero where masked
    syn0_shape: tuple          # (V, D)
    syn1_shape: tuple          # (V_out, D)


def _mask(mask, shape, name):
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != shape:
        raise ValueError(f"{name} must be a bool array of shape {shape}, got {mask.dtype} of "
                         f"shape {mask.shape}")
    return mask


def word2vec_forward(syn0, syn1, context, targets, labels, context_mask=None, target_mask=None):
    r"""word2vec's loss for a batch of ``B`` predictions (Mikolov et al., 2013a, 2013b).

    Each row :math:`b` has an input vector, the mean of its context words' input vectors,

    .. math:: h_b = \frac{1}{|C_b|} \sum_{c \in C_b} \mathrm{syn0}_c

    (one context word for skip-gram, the whole window for CBOW), and ``K`` targets
    :math:`t_{bk}` with labels :math:`l_{bk} \in \{0, 1\}` scored by the output vectors
    :math:`u = \mathrm{syn1}_t`:

    .. math:: L = -\sum_{b,k} m_{bk}\,\big[\, l_{bk} \log\sigma(s_{bk})
              + (1 - l_{bk}) \log\sigma(-s_{bk}) \,\big], \qquad s_{bk} = h_b \cdot u_{t_{bk}}.

    Negative sampling: the first target is the centre word (label 1), the others noise words
    (label 0), ``syn1`` is ``syn1neg``. Hierarchical softmax: the targets are the inner nodes on
    the centre word's path in the Huffman tree, labels ``1 - code``, ``syn1`` the node table;
    :math:`m` masks the padding of shorter paths. The loss is a sum (the trainer takes one SGD
    step per row, on that row's terms).

    Args:
        syn0: ``(V, D)`` input vectors. syn1: ``(V_out, D)`` output vectors.
        context: ``(B, C)`` int ids into ``syn0``; context_mask ``(B, C)`` bool (default all),
            at least one true per row.
        targets: ``(B, K)`` int ids into ``syn1``; labels ``(B, K)`` 0 or 1; target_mask
            ``(B, K)`` bool (default all).

    Returns:
        ``loss`` (a float of syn0's dtype) and a :class:`Word2VecCache`.
    """
    syn0 = float_array(syn0, "syn0", ndim=2)
    syn1 = float_array(syn1, "syn1", ndim=2)
    if syn1.dtype != syn0.dtype or syn1.shape[1] != syn0.shape[1]:
        raise ValueError(f"syn1 must be (V_out, {syn0.shape[1]}) of {syn0.dtype} like syn0, got "
                         f"{syn1.dtype} of shape {syn1.shape}")
    context = index_array(context, "context", syn0.shape[0], ndim=2, allow_empty=False)
    targets = index_array(targets, "targets", syn1.shape[0], ndim=2, allow_empty=False)
    if targets.shape[0] != context.shape[0]:
        raise ValueError(f"targets must have {context.shape[0]} rows (one per context row), got "
                         f"{targets.shape[0]}")
    labels = np.asarray(labels)
    if labels.shape != targets.shape or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1 in an array of shape {targets.shape}, got "
                         f"shape {labels.shape}")
    context_mask = _mask(context_mask, context.shape, "context_mask")
    target_mask = _mask(target_mask, targets.shape, "target_mask")
    count = context_mask.sum(axis=1)                                        # (B,)
    if np.any(count == 0):
        raise ValueError(f"every row needs a context word: context_mask row "
                         f"{int(np.argmin(count))} is all false")
    dt = syn0.dtype
    gathered = syn0[context] * context_mask[..., None]                     # (B, C, D)
    h = gathered.sum(axis=1) / count[:, None].astype(dt)                   # (B, C, D) -> (B, D)
    out_rows = syn1[targets]                                               # (B, K, D)
    s = np.einsum("bd,bkd->bk", h, out_rows)                               # (B, K)
    sign = np.where(labels == 1, 1, -1).astype(dt)                         # (B, K)
    z = sign * s                                                           # log sigma(z) terms
    log_sig = np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))              # (B, K), stable
    loss = -np.sum(log_sig * target_mask, dtype=dt)
    sig = np.where(s >= 0, 1 / (1 + np.exp(-np.abs(s))),
                   np.exp(-np.abs(s)) / (1 + np.exp(-np.abs(s))))          # sigma(s), stable
    residual = ((sig - labels.astype(dt)) * target_mask).astype(dt)        # dL/ds
    return dt.type(loss), Word2VecCache(h, out_rows, context, context_mask, count, targets,
                                        target_mask, residual, syn0.shape, syn1.shape)


def word2vec_backward(dloss, cache: Word2VecCache):
    r"""From :func:`word2vec_forward`: with :math:`r_{bk} = m_{bk}(\sigma(s_{bk}) - l_{bk})`
    (``dL/ds``),

    .. math:: \frac{\partial L}{\partial u_{t}} = \sum_{(b,k):\,t_{bk} = t} r_{bk}\, h_b,
              \qquad \frac{\partial L}{\partial h_b} = \sum_k r_{bk}\, u_{t_{bk}},
              \qquad \frac{\partial L}{\partial \mathrm{syn0}_c} =
              \sum_{(b,j):\,C_{bj} = c} \frac{1}{|C_b|}\frac{\partial L}{\partial h_b}.

    (The trainer's CBOW step adds :math:`\partial L/\partial h_b` itself, not divided by
    :math:`|C_b|`, to each context word, as word2vec.c does.)

    Returns ``(dsyn0, dsyn1, None, None, None, None, None)``: dense ``(V, D)`` and
    ``(V_out, D)`` gradients; the ids, labels and masks have none.
    """
    dt = cache.h.dtype
    g = dt.type(scalar(dloss, "dloss"))
    r = cache.residual * g                                                 # (B, K)
    B, K, D = cache.out_rows.shape
    dh = np.einsum("bk,bkd->bd", r, cache.out_rows)                        # (B, D)
    dsyn1 = np.zeros(cache.syn1_shape, dt)
    np.add.at(dsyn1, cache.targets.reshape(-1),
              (r[..., None] * cache.h[:, None, :]).reshape(B * K, D))      # (B*K, D) scattered
    per_slot = (dh / cache.count[:, None].astype(dt))[:, None, :] * cache.context_mask[..., None]
    dsyn0 = np.zeros(cache.syn0_shape, dt)
    np.add.at(dsyn0, cache.context.reshape(-1), per_slot.reshape(-1, D))   # (B*C, D) scattered
    return dsyn0, dsyn1, None, None, None, None, None


# ------------------------------------------------------------------------------------------------
# GloVe
# ------------------------------------------------------------------------------------------------
class GloVeCache(NamedTuple):
    w_rows: np.ndarray         # (N, D) W[rows]
    c_rows: np.ndarray         # (N, D) W~[cols]
    rows: np.ndarray           # (N,) int64 word ids
    cols: np.ndarray           # (N,) int64 context ids
    fdiff: np.ndarray          # (N,) f(x) (w.w~ + b + b~ - log x): dL/d(score)
    shapes: tuple              # the four parameters' shapes


def glove_weight(x, x_max=100.0, alpha=0.75):
    r""":math:`f(x) = \min(1, (x / x_{\max})^\alpha)` (Pennington et al., 2014, eq. 9)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x < x_max, (x / x_max) ** alpha, 1.0)


def glove_forward(weight, context_weight, bias, context_bias, rows, cols, x, x_max=100.0,
                  alpha=0.75):
    r"""GloVe's weighted least squares over ``N`` non-zero co-occurrences
    :math:`(i_n, j_n, X_n)` (Pennington et al., 2014, eq. 8, with glove.c's factor 1/2):

    .. math:: J = \tfrac12 \sum_n f(X_n)\,\big(w_{i_n} \cdot \tilde w_{j_n} + b_{i_n}
              + \tilde b_{j_n} - \log X_n\big)^2, \qquad
              f(x) = \min\!\big(1, (x / x_{\max})^{\alpha}\big).

    Args:
        weight, context_weight: ``(V, D)`` :math:`W` and :math:`\tilde W`; bias, context_bias:
            ``(V,)``. rows, cols: ``(N,)`` int ids; x: ``(N,)`` positive co-occurrence values.

    Returns ``J`` (a float of the weights' dtype) and a :class:`GloVeCache`.
    """
    weight = float_array(weight, "weight", ndim=2)
    dt = weight.dtype
    V, D = weight.shape
    context_weight = float_array(context_weight, "context_weight", ndim=2)
    bias = float_array(bias, "bias", ndim=1)
    context_bias = float_array(context_bias, "context_bias", ndim=1)
    for name, a, shape in (("context_weight", context_weight, (V, D)), ("bias", bias, (V,)),
                           ("context_bias", context_bias, (V,))):
        if a.shape != shape or a.dtype != dt:
            raise ValueError(f"{name} must be {shape} of {dt} like weight, got {a.dtype} of "
                             f"shape {a.shape}")
    rows = index_array(rows, "rows", V, ndim=1, allow_empty=False)
    cols = index_array(cols, "cols", V, ndim=1)
    x = float_array(x, "x", ndim=1).astype(np.float64)
    if cols.shape != rows.shape or x.shape != rows.shape:
        raise ValueError(f"rows, cols and x must have one shape, got {rows.shape}, {cols.shape} "
                         f"and {x.shape}")
    if np.any(x <= 0):
        raise ValueError(f"x must be positive (log x is fitted), got {float(x.min())}")
    w_rows, c_rows = weight[rows], context_weight[cols]                  # (N, D) each
    diff = (np.einsum("nd,nd->n", w_rows, c_rows) + bias[rows] + context_bias[cols]
            - np.log(x).astype(dt))                                       # (N,)
    f = glove_weight(x, x_max, alpha).astype(dt)                          # (N,)
    loss = dt.type(0.5) * np.sum(f * diff * diff, dtype=dt)
    shapes = (weight.shape, context_weight.shape, bias.shape, context_bias.shape)
    return dt.type(loss), GloVeCache(w_rows, c_rows, rows, cols, (f * diff).astype(dt), shapes)


def glove_backward(dloss, cache: GloVeCache):
    r"""From :func:`glove_forward`, with :math:`\delta_n = f(X_n)(\ldots)` the weighted residual:
    :math:`\partial J/\partial w_i = \sum_{n: i_n = i} \delta_n \tilde w_{j_n}`,
    :math:`\partial J/\partial \tilde w_j = \sum_{n: j_n = j} \delta_n w_{i_n}`,
    :math:`\partial J/\partial b_i = \sum_{n: i_n = i} \delta_n`, and the same for
    :math:`\tilde b_j`. Returns ``(dW, dW~, db, db~, None, None, None)``."""
    dt = cache.w_rows.dtype
    d = cache.fdiff * dt.type(scalar(dloss, "dloss"))                      # (N,)
    dW, dC = np.zeros(cache.shapes[0], dt), np.zeros(cache.shapes[1], dt)
    db, dc = np.zeros(cache.shapes[2], dt), np.zeros(cache.shapes[3], dt)
    np.add.at(dW, cache.rows, d[:, None] * cache.c_rows)                  # (N, D) scattered
    np.add.at(dC, cache.cols, d[:, None] * cache.w_rows)
    np.add.at(db, cache.rows, d)
    np.add.at(dc, cache.cols, d)
    return dW, dC, db, dc, None, None, None
