"""Losses, each a forward/backward pair with torch.nn's reductions and edge cases.

``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'``. A reduced loss is a Python float;
``'none'`` gives an array (per example). Every backward takes ``dloss`` -- a number for reduced
losses, an array of the loss's shape for ``'none'`` -- and returns one gradient per input.
"""

import math
from typing import NamedTuple

import numpy as np

from .._checks import (choice, float_array, index_array, integer, probability, same_shape_and_dtype,
                       scalar, upstream)
from .activation import GRAIN
from ..kernels import bce as KB, softmax as K, split_run
from ..kernels.checks import all_finite

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_item, reduction, count=None):
    """per_item -> float (mean over ``count`` items, or sum) or the array itself."""
    if reduction == "none":
        return per_item
    with np.errstate(over="ignore"):         # a float64 sum past the max: inf (the mean: below)
        total = float(per_item.sum(dtype=np.float64))
    if reduction == "sum":
        return total
    n = per_item.size if count is None else count
    if n and not math.isfinite(total):   # float64 items whose sum overflows: the mean may not
        k = 2.0 ** math.ceil(math.log2(per_item.size))
        return float((per_item * (1.0 / k)).sum(dtype=np.float64)) / n * k
    return total / n if n else float("nan")


def _upstream(dloss, reduction, shape, dtype, count=None):
    """The gradient reaching each item from ``dloss``: ``dloss/n`` for mean, ``dloss`` for sum,
    elementwise for none. Shape ``shape``."""
    if reduction == "none":
        if shape == () and not isinstance(dloss, np.ndarray):
            return np.asarray(scalar(dloss, "dloss"), dtype=dtype)   # an unbatched loss is 0-d
        return upstream(dloss, shape, dtype, name="dloss")
    d = scalar(dloss, f"dloss (for reduction={reduction!r})")
    if reduction == "mean":
        n = int(np.prod(shape)) if count is None else count
        d = d / n if n else 0.0
    return np.full(shape, d, dtype=dtype)


def _class_target(target, x, ignore_index, loss):
    """Class-index targets for ``x`` (N, C, ...): ``ignore_index`` an int (as torch); a float
    target the shape of ``x`` -- torch's class probabilities -- is refused by name."""
    ignore_index = integer(ignore_index, "ignore_index")
    if isinstance(target, np.ndarray) and target.dtype.kind == "f" and target.shape == x.shape:
        raise TypeError(f"target must hold class indices (an integer array); {loss} with class "
                        f"probabilities (a float target of the input's shape {x.shape}) is not "
                        f"implemented")
    C = x.shape[0] if x.ndim == 1 else x.shape[1]
    return index_array(target, "target", C, ignore_index=ignore_index), ignore_index


def _class_rows(x, target, name_x="input"):
    """Move the class axis (1, or 0 for an unbatched (C,) input) last: -> (R, C) and (R,)."""
    if x.ndim == 1:
        if np.ndim(target) != 0:
            raise ValueError(f"target must be a scalar class index for a 1-D {name_x}, got shape {np.shape(target)}")
        return x[None, :], np.asarray(target).reshape(1), ()
    want = (x.shape[0],) + x.shape[2:]
    if np.shape(target) != want:
        raise ValueError(f"target must have shape {want} for {name_x} of shape {x.shape} "
                         f"(N, C, d1, ...), got {np.shape(target)}")
    rows = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])  # (N*d..., C)
    return rows, np.asarray(target).reshape(-1), want


def _unrows(drows, x_shape):
    """Inverse of ``_class_rows`` for gradients: (R, C) -> x_shape."""
    if len(x_shape) == 1:
        return drows.reshape(x_shape)
    moved = (x_shape[0],) + x_shape[2:] + (x_shape[1],)
    return np.moveaxis(drows.reshape(moved), -1, 1)


# --------------------------------------------------------------------------------------------
class CrossEntropyCache(NamedTuple):
    rows: np.ndarray             # (R, C) the logits, class axis last (R = N * d1 * ...)
    target: np.ndarray           # (R,) class indices or ignore_index
    lse: np.ndarray              # (R, 2) float64: each row's max m and log sum exp(x - m)
    x_shape: tuple               # the input's shape
    out_shape: tuple             # the per-item loss's shape: (N, d1, ...), or () unbatched
    ignore_index: int
    reduction: str
    label_smoothing: float       # epsilon
    count: int                   # rows not ignored: the mean's divisor


def cross_entropy_forward(input, target, ignore_index: int = -100, reduction: str = "mean",
                          label_smoothing: float = 0.0):
    r"""Cross-entropy from logits, fused with log-softmax (one Numba pass per row).

    With :math:`q = (1-\varepsilon)\,\mathrm{onehot}(t) + \varepsilon / C` (label smoothing
    :math:`\varepsilon`, Szegedy et al., 2016):

    .. math:: \ell_n = -\sum_c q_c \log\mathrm{softmax}(x_n)_c
              = \mathrm{lse}(x_n) - (1-\varepsilon)\,x_{n,t_n} - \tfrac{\varepsilon}{C}\sum_c x_{n,c}

    Rows whose target is ``ignore_index`` contribute 0 and are not counted by ``'mean'``; if every
    row is ignored the mean is NaN (as torch) and the gradient is zero.

    Extreme logits: each row's loss is computed in float64 (``kernels/softmax.py``), so logits
    anywhere in float32's range give a finite ``'mean'``/``'sum'``; ``'none'`` returns the rows
    rounded to the input's dtype (``inf`` only for a row loss past its max, e.g. a target logit
    of -3e38 beside a logit of 3e38).

    Args:
        input: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)`` logits.
        target: ``(N,)``, ``()`` or ``(N, d1, ...)`` class indices in ``[0, C)`` or ``ignore_index``.
    """
    x = float_array(input, "input", min_ndim=1)
    choice(reduction, "reduction", REDUCTIONS)
    eps = probability(label_smoothing, "label_smoothing")
    target, ignore_index = _class_target(target, x, ignore_index, "cross-entropy")
    rows, t, out_shape = _class_rows(x, target)                                  # (R, C), (R,)
    per_row, lse = K.cross_entropy_forward(rows, t, int(ignore_index), eps)  # (R,), (R, 2) f64
    count = int((t != ignore_index).sum())
    if reduction == "none":              # the float64 row losses, rounded once (inf only past max)
        with np.errstate(over="ignore"):
            per_row = per_row.astype(x.dtype)
    loss = _reduce(per_row.reshape(out_shape), reduction, count)   # sum/mean: of the float64 rows
    return loss, CrossEntropyCache(rows, t, lse, x.shape, out_shape, ignore_index, reduction,
                                   eps, count)


def cross_entropy_backward(dloss, cache: CrossEntropyCache):
    r"""From :math:`\ell = \mathrm{lse}(x) - (1-\varepsilon)x_t - \tfrac{\varepsilon}{C}\sum_c x_c`:

    .. math:: \partial\ell/\partial x_c = \mathrm{softmax}(x)_c - (1-\varepsilon)[c=t] - \varepsilon/C

    Returns ``(dinput, None)``.
    """
    c = cache
    g = _upstream(dloss, c.reduction, c.out_shape, c.rows.dtype, c.count).reshape(-1)  # (R,)
    drows = K.cross_entropy_backward(np.ascontiguousarray(g), c.rows, c.target, c.lse,
                                     int(c.ignore_index), c.label_smoothing)          # (R, C)
    return _unrows(drows, c.x_shape), None


# --------------------------------------------------------------------------------------------
class NLLCache(NamedTuple):
    rows_shape: tuple            # (R, C) the input with its class axis last
    dtype: np.dtype              # the input's dtype
    safe_target: np.ndarray      # (R,) the targets, ignored ones replaced by 0
    keep: np.ndarray             # (R,) bool: target != ignore_index
    x_shape: tuple               # the input's shape
    out_shape: tuple             # the per-item loss's shape
    reduction: str
    count: int                   # rows not ignored: the mean's divisor


def nll_forward(input, target, ignore_index: int = -100, reduction: str = "mean"):
    r"""Negative log-likelihood of log-probabilities: :math:`\ell_n = -x_{n, t_n}`.

    Shapes as :func:`cross_entropy_forward`; ``input`` holds log-probabilities (e.g. the output
    of ``log_softmax``).
    """
    x = float_array(input, "input", min_ndim=1, finite=False)
    if np.isnan(x).any() or np.isposinf(x).any():
        raise ValueError("input must hold log-probabilities: no NaN or +inf (-inf, log 0, is allowed)")
    choice(reduction, "reduction", REDUCTIONS)
    target, ignore_index = _class_target(target, x, ignore_index, "the NLL loss")
    rows, t, out_shape = _class_rows(x, target)                                   # (R, C), (R,)
    keep = t != ignore_index
    safe_t = np.where(keep, t, 0)
    per_row = np.where(keep, -rows[np.arange(rows.shape[0]), safe_t], 0).astype(x.dtype)   # (R,)
    count = int(keep.sum())
    loss = _reduce(per_row.reshape(out_shape), reduction, count)
    return loss, NLLCache(rows.shape, x.dtype, safe_t, keep, x.shape, out_shape, reduction, count)


def nll_backward(dloss, cache: NLLCache):
    r"""From :math:`\ell_n = -x_{n,t_n}`: :math:`\partial\ell_n/\partial x_{n,c} = -[c = t_n]`.
    Returns ``(dinput, None)``."""
    c = cache
    g = _upstream(dloss, c.reduction, c.out_shape, c.dtype, c.count).reshape(-1)    # (R,)
    drows = np.zeros(c.rows_shape, dtype=c.dtype)                                   # (R, C)
    r = np.nonzero(c.keep)[0]
    drows[r, c.safe_target[r]] = -g[r]                     # from per_row = -rows[r, t]
    return _unrows(drows, c.x_shape), None


# --------------------------------------------------------------------------------------------
class BCEWithLogitsCache(NamedTuple):
    x: np.ndarray                # (...) the logits
    y: np.ndarray                # (...) the target
    reduction: str


def bce_with_logits_forward(input, target, reduction: str = "mean"):
    r"""Binary cross-entropy on logits, in the form that never overflows:

    .. math:: \ell = -[y \log\sigma(x) + (1-y)\log(1-\sigma(x))]
              = \max(x, 0) - x\,y + \log(1 + e^{-|x|})

    For targets in [0, 1] no term exceeds ``|x| + log 2``, so every finite logit gives a finite
    loss. Targets outside [0, 1] can make ``x y`` overflow the dtype: ``'none'`` then holds
    ``inf`` (the value is past the max), while ``'mean'``/``'sum'`` of a float32 input are
    recomputed in float64 (exact products) whenever the float32 items do not sum to a finite value.

    Args:
        input: logits, any shape.  target: same shape, same dtype (usually in [0, 1]).
    """
    x = float_array(input, "input")
    y = float_array(target, "target")
    choice(reduction, "reduction", REDUCTIONS)
    same_shape_and_dtype(y, "target", x, "input")
    with np.errstate(over="ignore"):                  # past the max only with targets outside [0, 1]
        per = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))         # (...,)
    loss = _reduce(per, reduction)
    if reduction != "none" and not np.isfinite(loss) and x.dtype == np.float32:
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        loss = _reduce(np.maximum(x64, 0) - x64 * y64 + np.log1p(np.exp(-np.abs(x64))), reduction)
    return loss, BCEWithLogitsCache(x, y, reduction)


def bce_with_logits_backward(dloss, cache: BCEWithLogitsCache):
    r"""From :math:`\ell = \max(x,0) - xy + \log(1+e^{-|x|})`:
    :math:`\partial\ell/\partial x = \sigma(x) - y`, :math:`\partial\ell/\partial y = -x`.
    Returns ``(dinput, dtarget)``."""
    x, y = cache.x, cache.y
    g = _upstream(dloss, cache.reduction, x.shape, x.dtype)
    dx = np.empty(x.shape, x.dtype)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (x, y, g)]            # (n,) each
    out = dx.reshape(-1)
    split_run(lambda lo, hi: KB.bce_logits_backward(*(a[lo:hi] for a in flat), out[lo:hi]),
              out.size, GRAIN)                                                  # g (sigmoid(x) - y)
    with np.errstate(over="ignore"):                  # past the max only where the true value is
        return (dx if dx.ndim else dx[()]), (-g * x).astype(x.dtype)     # 0-d: scalars, as before


# --------------------------------------------------------------------------------------------
class MSECache(NamedTuple):
    diff: np.ndarray             # (...) input - target (float64 if it overflows float32)
    reduction: str
    dtype: np.dtype = None       # the inputs' dtype (that of diff unless diff was widened)


def mse_forward(input, target, reduction: str = "mean"):
    r"""Mean squared error, :math:`\ell = (x - y)^2` element-wise, then reduced.

    Float32 values whose difference or square passes float32's max: ``'none'`` holds ``inf``
    there (the value is past the max); ``'mean'``/``'sum'`` and the gradient use the difference in
    float64 (exact), so they stay finite wherever they are representable."""
    x = float_array(input, "input")
    y = float_array(target, "target")
    choice(reduction, "reduction", REDUCTIONS)
    same_shape_and_dtype(y, "target", x, "input")
    with np.errstate(over="ignore"):                  # past the max: inf, handled below
        diff = x - y
        sq = diff * diff
    loss = _reduce(sq, reduction)
    overflowed = (not all_finite(np.ascontiguousarray(diff).reshape(-1)) if reduction == "none"
                  else not np.isfinite(loss))       # a finite reduced loss: every diff is finite
    if overflowed and x.dtype == np.float32:
        diff = x.astype(np.float64) - y                                       # exact
        if reduction != "none":
            loss = _reduce(diff * diff, reduction)
    return loss, MSECache(diff, reduction, x.dtype)


def mse_backward(dloss, cache: MSECache):
    r"""From :math:`\ell = (x-y)^2`: :math:`\partial\ell/\partial x = 2(x-y) = -\partial\ell/\partial y`.
    Returns ``(dinput, dtarget)``."""
    diff = cache.diff
    dtype = diff.dtype if cache.dtype is None else cache.dtype
    g = _upstream(dloss, cache.reduction, diff.shape, dtype)
    with np.errstate(over="ignore"):                  # past the max only where the true value is
        d = (2 * g * diff).astype(dtype, copy=False)
    return d, -d


# --------------------------------------------------------------------------------------------
class GaussianKLCache(NamedTuple):
    mu: np.ndarray               # (..., latent_dim)
    var: np.ndarray              # (..., latent_dim) exp(logvar)
    reduction: str


def gaussian_kl_forward(mu, logvar, reduction: str = "mean"):
    r"""KL divergence of a diagonal Gaussian from the standard normal (Kingma & Welling, 2014,
    appendix B), summed over the last (latent) axis:

    .. math:: \mathrm{KL}\big(\mathcal N(\mu, e^{\lambda})\,\|\,\mathcal N(0, I)\big)
              = -\tfrac12 \sum_j \big(1 + \lambda_j - \mu_j^2 - e^{\lambda_j}\big)

    ``'mean'`` averages that per-example KL over the leading (batch) axes, ``'sum'`` adds it,
    ``'none'`` returns it per example (shape ``mu.shape[:-1]``). Clamp ``logvar`` upstream (the
    VAE does) if it may exceed ~88 in float32.

    Args:
        mu, logvar: ``(..., latent_dim)``, same shape and dtype.
    """
    mu = float_array(mu, "mu", min_ndim=1)
    logvar = float_array(logvar, "logvar", min_ndim=1)
    choice(reduction, "reduction", REDUCTIONS)
    same_shape_and_dtype(logvar, "logvar", mu, "mu")
    var = np.exp(logvar)
    per = -0.5 * (1 + logvar - mu * mu - var).sum(axis=-1)                   # (...,)
    return _reduce(per, reduction), GaussianKLCache(mu, var, reduction)


def gaussian_kl_backward(dloss, cache: GaussianKLCache):
    r"""From the KL above: :math:`\partial/\partial\mu_j = \mu_j`,
    :math:`\partial/\partial\lambda_j = \tfrac12(e^{\lambda_j} - 1)`. Returns ``(dmu, dlogvar)``."""
    mu, var = cache.mu, cache.var
    g = _upstream(dloss, cache.reduction, mu.shape[:-1], mu.dtype)[..., None]    # (..., 1)
    return (g * mu).astype(mu.dtype), (g * 0.5 * (var - 1)).astype(mu.dtype)
