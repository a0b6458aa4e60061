"""Scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need", eq. 1)."""

import math
from typing import NamedTuple

import numpy as np

from .. import _autocast
from .._checks import boolean, choice, float_array, probability, scalar, upstream
from ..kernels import attention as K
from ..kernels import flash_attention as FK
from ..kernels import get_backend, split_run
from ..kernels.checks import all_finite
from ..kernels.gemm import matmul

METHODS = ("auto", "tiled", "dense")

#: ``method="auto"`` takes the tiled kernels when both ``Tq`` and ``Tk`` are at least this, per
#: kernel route: the crossover measured forward + backward in float32 with ``Tq = Tk`` (8 heads of
#: 64, causal; the timings are in docs/benchmarks.md, "Attention: tiled or dense"). Below it the
#: dense path's few large products beat the tiles' fixed costs; above it its ``Tq x Tk`` arrays
#: cost more than the tiles' recomputation. ``Tq`` counts too: with a few queries (generation
#: against a KV cache, one query per step) those arrays are only ``Tq x Tk`` and the dense path
#: is several times faster than tiles holding a row or two.
TILED_FROM = {"numba": 128, "numpy": 640}

#: a tile's query rows and keys (bq, bk) per route. On the NumPy route a tile is one batched
#: product over all heads, and larger tiles spread the Python overhead of a tile over more work;
#: on the Numba route the tile products are our GEMM's, which 128 x 128 tiles keep busiest
#: (docs/benchmarks.md, "Attention: tiled or dense").
TILES = {"numba": (128, 128), "numpy": (128, 128)}

#: for short sequences (``Tq <= SHORT_T``) on the Numba route: the forward's and the backward's
#: tiles (bq, bk). With one or two tiles a row, a causal diagonal tile computes half its
#: entries for nothing; at T = 128 (W1's 128 heads of 32) forward 64 x 128 and backward 128 x 64
#: took 8.5-9.2 ms a layer against 9.6-10.5 with 128 x 128; at T = 512 they tie, at T = 2048
#: 128 x 128 wins (docs/benchmarks.md, "Attention: tiled or dense").
SHORT_T = 256
SHORT_TILES = {"numba": ((64, 128), (128, 64))}


def _tile_sizes(route, Tq):
    """(forward tiles, backward tiles) for ``Tq`` queries on ``route``."""
    short = SHORT_TILES.get(route)
    if short is not None and Tq <= SHORT_T:
        return short
    return TILES[route], TILES[route]


class AttentionCache(NamedTuple):
    q: np.ndarray                  # (..., Tq, d) queries
    k: np.ndarray                  # (..., Tk, d) keys
    v: np.ndarray                  # (..., Tk, dv) values
    probs: np.ndarray              # (..., Tq, Tk) P = softmax(S), before dropout
    drop: np.ndarray | None        # (..., Tq, Tk) dropout mask scaled by 1/(1-p); None without
    weights: np.ndarray            # (..., Tq, Tk) P * drop: the weights applied to V
    scale: float                   # s, the factor of Q K^T
    has_mask: bool                 # an attn_mask was given
    causal: bool                   # is_causal


class TiledAttentionCache(NamedTuple):
    """What the tiled path saves: the inputs, the output and one log-sum-exp per query row --
    ``O(T d)`` numbers, nothing of size ``Tq x Tk`` (``N`` = the leading axes' product)."""
    q: np.ndarray                  # (..., Tq, d) queries (rows contiguous: FK.heads_ok)
    k: np.ndarray                  # (..., Tk, d) keys (FK.heads_ok)
    v: np.ndarray                  # (..., Tk, dv) values (FK.heads_ok)
    out: np.ndarray                # (..., Tq, dv) O, the forward's output
    lse: np.ndarray                # (..., Tq) float64 L_i = log sum_j exp(S_ij); -inf: sees nothing
    scale: float                   # s, the factor of Q K^T
    causal: bool                   # is_causal
    mask: np.ndarray | None        # (Nm, 1 or Tq, Tk) bool attn_mask, its own leading axes; or None
    mask_rows: np.ndarray | None   # (N,) int64: mask[mask_rows[n]] is (batch, head) n's
    tiles: tuple                   # (bq, bk): the query rows and keys of the backward's tiles


def attention_forward(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                      training=True, rng=None, method="auto", _in16=False):
    r"""Attention over the last two axes, any leading (batch, head) axes:

    .. math::  P = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right),\qquad
               Y = \mathrm{dropout}(P)\,V

    The arguments are ``torch.nn.functional.scaled_dot_product_attention``'s, in its order
    (``query, key, value, attn_mask, dropout_p, is_causal``, then keyword-only ``scale``);
    ``training`` and ``rng`` (keyword-only too) are this library's.

    Args:
        q: ``(..., Tq, d)``.  k: ``(..., Tk, d)``.  v: ``(..., Tk, dv)``  (same leading axes).
        attn_mask: broadcastable to ``(..., Tq, Tk)``: boolean (True = may attend, as
            ``torch.nn.functional.scaled_dot_product_attention``) or float, added to the scaled
            scores (``-inf`` forbids). Integer masks are refused (as torch): an integer 0/1 mask
            added to the scores would silently mask nothing.
        is_causal: query i (the last Tq of Tk positions) sees keys ``j <= i + Tk - Tq``. With
            ``Tq == Tk`` this is torch's causal mask; with ``Tq < Tk`` (new queries after cached
            keys) the mask is aligned bottom-right (torch's ``causal_lower_right``), where torch's
            ``is_causal`` aligns it top-left. Combined with ``attn_mask`` both apply (torch
            refuses the pair).
        dropout_p, training, rng: dropout on the attention probabilities.
        scale: defaults to :math:`1/\sqrt{d}`.
        method: ``"dense"`` forms the ``(..., Tq, Tk)`` probabilities (below); ``"tiled"`` runs
            the tiled kernels with an online softmax (``kernels/flash_attention.py``,
            FlashAttention): memory linear in T, the cache a :class:`TiledAttentionCache` with
            no weights. It takes no dropout and no float mask (``ValueError``); where a score
            could overflow, or an input is not finite, it gives the dense path's result (which
            handles those exactly). ``"auto"`` (default) is ``"tiled"`` where it is allowed and
            ``Tq`` and ``Tk`` are both at least ``TILED_FROM[route]``, else ``"dense"``.
            Callers that need ``cache.weights`` (or pass ``dweights`` to the backward) ask for
            ``"dense"``; :func:`attention_weights` gives the probabilities of either cache.

    Under :func:`~scratchlm.compress.precision.autocast` (mixed precision), q, k and v are
    rounded to the 16-bit format first and ``y`` after (the scores, softmax and sums stay
    float32), and the cache is an :class:`Attention16Cache` around the inner one (``_in16`` is
    that inner call's marker, not for callers).

    A query that may attend to nothing gets zero output (PyTorch gives NaN there).
    On the dense path the scale, the causal mask and the softmax run as one fused Numba pass
    (``kernels/attention.py``).

    Scores past the dtype's max: when some :math:`q\cdot k` (or, with a float mask,
    :math:`s\,q\cdot k + M`) overflows, the probabilities are those of the exact scores, not of
    their overflow (:func:`_exact_probs`: float32 scores recomputed in float64, float64 ones with a
    power-of-two pre-scale of q and k), so a huge score wins its row (one-hot; equal shares among
    exact ties) and finite inputs never give NaN. Detection costs one scan of the scores.

    Returns:
        ``y`` ``(..., Tq, dv)`` and an :class:`AttentionCache` -- ``cache.weights`` holds the
        attention probabilities after dropout, ``(..., Tq, Tk)`` -- or, on the tiled path, a
        :class:`TiledAttentionCache`.
    """
    q = float_array(q, "q", min_ndim=2)
    k = float_array(k, "k", min_ndim=2)
    v = float_array(v, "v", min_ndim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"q, k, v must share leading axes, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k must be (..., Tk, {q.shape[-1]}) and v (..., Tk, dv) with the same Tk, "
                         f"got k {k.shape}, v {v.shape}")
    mode = None if _in16 else _autocast.active()
    if mode is not None:        # a tensor core: 16-bit q, k, v; scores, softmax and sums in
        q, k, v = (_autocast.to16(a, mode) for a in (q, k, v))      # float32; y rounded back
        y, inner = attention_forward(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                     training=training, rng=rng, method=method, _in16=True)
        # q, k, v are on the 16-bit grid already: kept in 2 bytes an entry, losslessly (the
        # tiled path's float32 output O, which its backward reads, is rounded to it too)
        packed = {f: _autocast.pack16(_autocast.to16(getattr(inner, f), mode), mode)
                  for f in _PACKED if f in inner._fields}
        return _autocast.to16(y, mode), Attention16Cache(inner._replace(**packed), mode)
    p = probability(dropout_p, "dropout_p", allow_one=False)
    is_causal = boolean(is_causal, "is_causal")
    training = boolean(training, "training")
    method = choice(method, "method", METHODS)
    Tq, d = q.shape[-2:]
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scalar(scale, "scale")
    lead = q.shape[:-2]
    mask = _mask_array(attn_mask, lead + (Tq, Tk))
    dropping = training and p > 0
    if method != "dense":
        refused = ("applies no dropout: pass dropout_p=0.0 or training=False" if dropping else
                   "takes only a boolean attn_mask (a float mask needs the dense path)"
                   if mask is not None and mask.dtype != bool else None)
        if refused and method == "tiled":
            raise ValueError(f"method='tiled' {refused}, or use method='auto' or 'dense'")
        wanted = method == "tiled" or min(Tq, Tk) >= TILED_FROM[get_backend()]
        if not refused and wanted:
            qc, kc, vc = map(_heads, (q, k, v))   # copied only when strided across a row
            if _scores_fit(qc, kc, vc, scale):
                return _tiled_forward(qc, kc, vc, mask, scale, is_causal)
    return _dense_forward(q, k, v, mask, p if dropping else 0.0, is_causal, scale, rng)


def _mask_array(attn_mask, shape):
    """``attn_mask`` checked: None, or a bool or float array (not broadcast) that broadcasts to
    ``shape`` ``(..., Tq, Tk)``; a float mask holds no NaN."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, (np.ndarray, list, tuple)):
        raise TypeError(f"attn_mask must be a bool or float numpy array, got "
                        f"{type(attn_mask).__name__}")
    mask = np.asarray(attn_mask)
    if mask.dtype != bool and mask.dtype.kind != "f":
        raise TypeError(f"attn_mask must be bool (True = may attend) or float (added to the "
                        f"scores), got {mask.dtype}: an integer mask is refused, as torch does")
    try:
        np.broadcast_to(mask, shape)
    except ValueError as exc:
        raise ValueError(f"attn_mask of shape {mask.shape} does not broadcast to the "
                         f"scores' shape {shape} (..., Tq, Tk)") from exc
    if mask.dtype != bool and np.isnan(mask).any():
        raise ValueError("attn_mask must not contain NaN")
    return mask


def _scores_fit(q, k, v, scale):
    r"""Whether the tiled kernels' assumptions hold: every input finite, and no score
    :math:`s\,q\cdot k` -- nor the difference of two, ``S - m`` -- can overflow. Bound:
    :math:`|q\cdot k| \le d \max|q| \max|k|`, kept under a quarter of the dtype's max (the
    difference of two scores is at most twice a score; the other half is room for rounding).
    Costs one read of q, k and v (the dense path reads the ``Tq x Tk`` scores instead)."""
    qmax, kmax = _max_abs(q), _max_abs(k)      # inf when not finite (q, k, v: FK.heads_ok)
    if not (math.isfinite(qmax) and math.isfinite(kmax) and math.isfinite(_max_abs(v))):
        return False
    dots = q.shape[-1] * qmax * kmax                                # a Python float: no overflow
    room = float(np.finfo(q.dtype).max) / 4
    return dots <= room and abs(scale) * dots <= room


#: entries per thread below which the overflow scan runs in the calling thread: it reads ~7
#: G entries/s, so a part of 2M entries takes ~0.3 ms against a split's ~50 us hand-off
_SCAN = 1 << 21


def _max_abs(a):
    """max |a| over a stack of heads (:func:`FK.heads_ok`), inf when some entry is not finite: a
    contiguous array's parts' maxima over the threads."""
    if not a.flags.c_contiguous:
        return FK.max_abs(a)
    flat = a.reshape(-1)
    return max(split_run(lambda lo, hi: FK.max_abs(flat[lo:hi]), flat.size, _SCAN), default=0.0)


def _like(a, shape):
    """An empty array of ``shape`` in ``a``'s memory order when the tiled kernels can write that
    layout (:func:`FK.heads_ok`), else C-contiguous."""
    out = np.empty_like(a, shape=shape)
    return out if FK.heads_ok(out) else np.empty(shape, a.dtype)


def _heads(a):
    """``a`` as the tiled kernels take it (:func:`FK.heads_ok`): itself -- a head split of a
    projection is read in place -- or a C-contiguous copy."""
    return a if FK.heads_ok(a) else np.ascontiguousarray(a)


def _tiled_forward(q, k, v, mask, scale, causal):
    r"""The tiled path (``kernels/flash_attention.py``): y and a :class:`TiledAttentionCache`.
    ``mask``: None or a checked bool array broadcasting to ``(..., Tq, Tk)``."""
    lead, (Tq, d), (Tk, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    N = math.prod(lead)
    q, k, v = map(_heads, (q, k, v))                             # copies only for odd strides
    mask_c, mask_rows = None, None
    if mask is not None:                    # keep the mask's own leading axes, not the batch's
        m = mask.reshape((1,) * (len(lead) + 2 - mask.ndim) + mask.shape)
        mlead, mq = m.shape[:-2], m.shape[-2]
        mask_c = np.ascontiguousarray(np.broadcast_to(m, mlead + (mq, Tk))).reshape(-1, mq, Tk)
        mask_rows = np.ascontiguousarray(np.broadcast_to(                             # (N,)
            np.arange(math.prod(mlead), dtype=np.int64).reshape(mlead), lead)).reshape(N)
    kernel_mask = mask_c if mask_c is not None else np.zeros((0, 1, 1), bool)
    kernel_rows = mask_rows if mask_rows is not None else np.zeros(1, np.int64)
    (bq, bk), backward_tiles = _tile_sizes(get_backend(), Tq)
    # y in q's memory order: for q a head split of a (B, T, H d) projection, y's memory is
    # (B, T, H, dv), so merging its heads back, y.transpose(0, 2, 1, 3).reshape(B, T, H dv), is
    # a view, not a copy
    y = _like(q, lead + (Tq, dv))                                               # (..., Tq, dv)
    lse = np.empty((N, Tq))                                                     # (N, Tq) float64
    split_run(lambda lo, hi: FK.flash_attention_forward(
        q, k, v, scale, causal, Tk - Tq, kernel_mask, kernel_rows, bq, bk, y, lse, lo, hi), N)
    cache = TiledAttentionCache(q, k, v, y, lse.reshape(lead + (Tq,)), scale, causal, mask_c,
                                mask_rows, backward_tiles)
    return y, cache


def _dense_forward(q, k, v, mask, p, is_causal, scale, rng):
    """The dense path: the ``(..., Tq, Tk)`` scores and probabilities, and an
    :class:`AttentionCache`. ``mask``: None or a checked array; ``p``: the dropout to apply."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    N = math.prod(q.shape[:-2])
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is detected just below
        scores = matmul(q, np.swapaxes(k, -1, -2))                            # (..., Tq, Tk)
    kernel_scale = scale
    exact_mask = None                                   # the mask for _exact_probs, if needed
    scores_ok = all_finite(np.ascontiguousarray(scores).reshape(-1))         # no q.k overflowed
    if mask is not None:
        finite = mask[np.isfinite(mask)] if mask.dtype != bool else None
        mask = np.broadcast_to(mask, scores.shape)
        exact_mask = mask
        if mask.dtype == bool:
            scores = np.where(mask, scores, -np.inf)
        else:
            if scores_ok:                  # s * q.k + M cannot overflow (checked in float64)?
                bound = (abs(scale) * max(float(scores.max()), -float(scores.min()))
                         + (float(np.abs(finite).max()) if finite.size else 0.0))
                scores_ok = bound <= float(np.finfo(scores.dtype).max)
            with np.errstate(over="ignore", invalid="ignore"):   # only when scores_ok is False
                scores = scores * scores.dtype.type(scale) + mask.astype(scores.dtype)
            kernel_scale = 1.0
    if scores_ok:
        probs = K.attention_softmax(np.ascontiguousarray(scores).reshape(N, Tq, Tk), kernel_scale,
                                    is_causal, Tk - Tq).reshape(scores.shape)   # (..., Tq, Tk)
    else:                                      # some score overflowed: the exact probabilities
        probs = _exact_probs(q, k, scale, exact_mask, is_causal)
    drop = None
    if p > 0:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy Generator when attention dropout is active")
        drop = (rng.random(probs.shape, dtype=probs.dtype) >= p).astype(probs.dtype) / probs.dtype.type(1 - p)
    weights = probs if drop is None else probs * drop
    y = matmul(weights, v)                                                    # (..., Tq, dv)
    cache = AttentionCache(q, k, v, probs, drop, weights, scale, mask is not None, is_causal)
    return y, cache


def _exact_probs(q, k, scale, mask, causal):
    r"""softmax(scale q.k^T + M) where q.k^T (or the sum) overflows q's dtype: the slow path.

    Each score is held as :math:`w\,2^E`: float32 inputs are multiplied in float64 (exact
    products, no overflow: :math:`|q\cdot k| \le d \cdot 1.2\times10^{77}`); float64 rows of q,
    and each (batch, head) slice of k, are first divided by a power of two at least their largest
    magnitude (exact), and those exponents go into E, as does the scale's exponent. The softmax
    needs only differences from the row maximum, :math:`(w - w^*)\,2^E`, which overflow only
    below ``-max``: weight 0. A masked entry (False, or ``-inf``) gets 0; a row with nothing
    allowed is all zeros, as in the kernel. Both routes take this NumPy code.

    q: (..., Tq, d), k: (..., Tk, d), mask: None, bool or float broadcast to (..., Tq, Tk).
    Returns probs (..., Tq, Tk) in q's dtype.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    m_s, e_s = math.frexp(scale)                       # scale = m_s 2^e_s, |m_s| in [0.5, 1)
    e_s = max(e_s, 0)                                  # E >= 0: the mask is only ever scaled down
    m_s = math.ldexp(scale, -e_s)
    qw, kw = q.astype(np.float64), k.astype(np.float64)
    E = np.full(q.shape[:-1] + (1,), e_s, dtype=np.int64)                       # (..., Tq, 1)
    if q.dtype == np.float64:
        a = np.maximum(np.frexp(np.abs(qw).max(axis=-1, keepdims=True))[1], 0)       # (..., Tq, 1)
        b = np.maximum(np.frexp(np.abs(kw).max(axis=(-2, -1), keepdims=True))[1], 0)  # (..., 1, 1)
        qw, kw = np.ldexp(qw, -a), np.ldexp(kw, -b)                          # |entries| < 1
        E = E + a + b
    w = (qw @ np.swapaxes(kw, -1, -2)) * m_s                                  # (..., Tq, Tk)
    if mask is not None:
        if mask.dtype == bool:
            w = np.where(mask, w, -np.inf)
        else:
            w = w + np.ldexp(mask.astype(np.float64), -E)
    if causal:
        allowed = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
        w = np.where(allowed, w, -np.inf)
    star = w.max(axis=-1, keepdims=True)
    empty = star == -np.inf
    with np.errstate(over="ignore"):                   # below -max: -inf, exp(-inf) = 0
        e = np.exp(np.ldexp(w - np.where(empty, 0.0, star), E))
    e = np.where(w == -np.inf, 0.0, e)
    z = e.sum(axis=-1, keepdims=True)
    return (e / np.where(z == 0, 1.0, z)).astype(q.dtype)


def _grad_targets(out, cache):
    """``attention_backward``'s ``out``: None, or three writeable arrays shaped and typed as the
    forward's q, k and v, none overlapping another or the cache's arrays."""
    if out is None:
        return None
    inner = cache.inner if isinstance(cache, Attention16Cache) else cache
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError(f"out must be a tuple (dq, dk, dv) of numpy arrays, got "
                        f"{type(out).__name__}")
    saved = [a for a in inner if isinstance(a, np.ndarray)]
    for i, (name, o, like) in enumerate(zip(("dq", "dk", "dv"), out, (inner.q, inner.k, inner.v))):
        dtype = np.float32 if isinstance(cache, Attention16Cache) else like.dtype
        if not (isinstance(o, np.ndarray) and o.shape == like.shape and o.dtype == dtype
                and o.flags.writeable):
            raise ValueError(f"out's {name} must be a writeable {np.dtype(dtype)} array of "
                             f"shape {like.shape}, got {getattr(o, 'dtype', type(o).__name__)} "
                             f"{np.shape(o)}")
        if any(_overlap(o, a) for a in saved + [x for j, x in enumerate(out) if j != i]):
            raise ValueError(f"out's {name} must not overlap the other gradients or the "
                             f"forward's saved arrays")
    return tuple(out)


def _overlap(a, b):
    """Whether a and b may share an entry: exact for the usual strided views (the head splits of
    one buffer interleave without overlapping), and True when that is too hard to decide."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except np.exceptions.TooHardError:
        return True


def _deliver(grads, targets):
    """The gradients, written into ``targets`` (when given) unless already there."""
    if targets is None:
        return grads
    for g, t in zip(grads, targets):
        if g is not t:
            t[...] = g
    return targets


def attention_backward(dy, cache: AttentionCache | TiledAttentionCache, dweights=None, *,
                       out=None):
    r"""From :math:`Y = \tilde P V`, :math:`\tilde P = P \odot D` (dropout), :math:`P =
    \mathrm{softmax}(S)`, :math:`S = s\,QK^\top (+M)`:

    .. math::  dV = \tilde P^\top dY,\quad d\tilde P = dY\,V^\top,\quad dP = d\tilde P \odot D,
               \quad dS = P \odot (dP - \textstyle\sum_j dP \odot P),\quad
               dQ = s\,dS\,K,\quad dK = s\,dS^\top Q

    ``dweights`` (``(..., Tq, Tk)``, optional) is an upstream gradient for ``cache.weights``.
    Returns ``(dq, dk, dv, None)`` -- none for the mask. ``out=(dq, dk, dv)``: arrays to write
    the gradients into (shaped as q, k, v; not overlapping each other or the forward's arrays),
    which are then returned: GPT passes the head-split views of one ``(B, T, 3C)`` buffer, so
    the tiled kernels write the fused projection's gradient in place and nothing is
    concatenated.

    A :class:`TiledAttentionCache` (the forward's tiled path) takes the tiled backward, the same
    equations tile by tile with :math:`P` recomputed from q, k and the saved log-sum-exp
    (:func:`_tiled_backward`); it has no weights, so ``dweights`` is refused there.
    """
    if isinstance(cache, Attention16Cache):          # the forward ran under autocast
        r = cache.precision
        inner = cache.inner._replace(**{f: _autocast.unpack16(getattr(cache.inner, f), r)
                                        for f in _PACKED if f in cache.inner._fields})
        targets = _grad_targets(out, cache)
        dq, dk, dv, _ = attention_backward(_autocast.to16(dy, r), inner, dweights)
        grads = _autocast.to16(dq, r), _autocast.to16(dk, r), _autocast.to16(dv, r)
        return (*_deliver(grads, targets), None)
    targets = _grad_targets(out, cache)
    if isinstance(cache, TiledAttentionCache):
        if dweights is not None:
            raise ValueError("dweights needs the attention weights, which the tiled path never "
                             "forms: run the forward with method='dense'")
        return (*_deliver(_tiled_backward(dy, cache, targets)[:3], targets), None)
    q, k, v, probs, drop, w = cache.q, cache.k, cache.v, cache.probs, cache.drop, cache.weights
    upstream(dy, q.shape[:-1] + (v.shape[-1],), q.dtype)
    dv = matmul(np.swapaxes(w, -1, -2), dy)                  # (..., Tk, dv): from y = weights @ v
    dw = matmul(dy, np.swapaxes(v, -1, -2))                                   # (..., Tq, Tk)
    if dweights is not None:
        dw = dw + upstream(dweights, w.shape, w.dtype, name="dweights")
    dprobs = dw if drop is None else dw * drop                     # from weights = probs * drop
    Tq, Tk = probs.shape[-2:]
    ds = K.attention_softmax_backward(                                        # through P = softmax(sS)
        np.ascontiguousarray(dprobs).reshape(-1, Tq, Tk), probs.reshape(-1, Tq, Tk),
        cache.scale, cache.causal, Tk - Tq).reshape(probs.shape)              # (..., Tq, Tk)
    dq = matmul(ds, k)                                       # (..., Tq, d): from scores = q @ k^T
    dk = matmul(np.swapaxes(ds, -1, -2), q)                                   # (..., Tk, d)
    return (*_deliver((dq, dk, dv), targets), None)


def _tiled_backward(dy, cache: TiledAttentionCache, targets=None):
    r"""The backward of :func:`_tiled_forward` (``kernels/flash_attention.py``), per tile:

    .. math::  D = \mathrm{rowsum}(dY \odot O),\quad P = e^{sQK^\top - L},\quad
               dV \mathrel{+}= P^\top dY,\quad dP = dY\,V^\top,\quad dS = P \odot (dP - D),
               \quad dQ \mathrel{+}= s\,dS\,K,\quad dK \mathrel{+}= s\,dS^\top Q
    """
    q, k, v, out = cache.q, cache.k, cache.v, cache.out
    lead, (Tq, d), (Tk, dvn) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    N = math.prod(lead)
    dy = _heads(upstream(dy, out.shape, q.dtype))                        # (..., Tq, dv)
    mask = cache.mask if cache.mask is not None else np.zeros((0, 1, 1), bool)
    rows = cache.mask_rows if cache.mask_rows is not None else np.zeros(1, np.int64)
    bq, bk = cache.tiles
    if targets is not None and all(FK.heads_ok(t) for t in targets):
        dq, dk, dv = targets                          # the caller's: written in place
    else:                                             # (..., T, d|dv) in q's, k's, v's order
        dq, dk, dv = (_like(a, a.shape) for a in (q, k, v))
    split_run(lambda lo, hi: FK.flash_attention_backward(
        q, k, v, out, dy, cache.lse.reshape(N, Tq), cache.scale, cache.causal, Tk - Tq, mask,
        rows, bq, bk, dq, dk, dv, lo, hi), N)
    return dq, dk, dv, None                                                    # (..., T, d|dv)


def attention_weights(cache: AttentionCache | TiledAttentionCache) -> np.ndarray:
    r"""The attention weights ``(..., Tq, Tk)`` of a forward, from either cache: a dense
    :class:`AttentionCache` holds them (``cache.weights``, after dropout); for a
    :class:`TiledAttentionCache` they are recomputed from q, k and the saved log-sum-exp,
    :math:`P = e^{sQK^\top - L}` (0 where masked) -- a ``Tq x Tk`` array per (batch, head), for
    inspecting attention (attention maps), not for training."""
    if isinstance(cache, Attention16Cache):
        r = cache.precision
        cache = cache.inner._replace(**{f: _autocast.unpack16(getattr(cache.inner, f), r)
                                        for f in _PACKED if f in cache.inner._fields})
    if isinstance(cache, AttentionCache):
        return cache.weights
    if not isinstance(cache, TiledAttentionCache):
        raise TypeError(f"cache must be an AttentionCache or a TiledAttentionCache, got "
                        f"{type(cache).__name__}")
    q, k, L = cache.q, cache.k, cache.lse[..., None]                          # L: (..., Tq, 1)
    Tq, Tk = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    s = (q @ np.swapaxes(k, -1, -2)) * q.dtype.type(cache.scale)               # (..., Tq, Tk)
    allowed = np.isfinite(L)                                                    # (..., Tq, 1)
    if cache.causal:
        allowed = allowed & (np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq))
    if cache.mask is not None:
        allowed = allowed & cache.mask[cache.mask_rows].reshape(lead + cache.mask.shape[1:])
    with np.errstate(invalid="ignore"):
        return np.exp(np.where(allowed, s - L, -np.inf)).astype(q.dtype)     # (..., Tq, Tk)


# ------------------------------------------------------------------------------------------------
# grouped-query attention (Ainslie et al., 2023, "GQA"; Shazeer, 2019, multi-query)
# ------------------------------------------------------------------------------------------------
#: the fields of an attention cache that autocast keeps in 2 bytes an entry
_PACKED = ("q", "k", "v", "out")


class Attention16Cache(NamedTuple):
    """An attention run under autocast: the inner cache, its ``_PACKED`` fields in 16 bits
    (float16, or bfloat16's bits as uint16)."""
    inner: AttentionCache | TiledAttentionCache
    precision: str                                # "fp16" or "bf16"


class GroupedAttentionCache(NamedTuple):
    inner: AttentionCache | TiledAttentionCache   # the attention over the repeated heads
    groups: int                                   # query heads per key/value head (n_rep)


def grouped_query_attention_forward(q, k, v, is_causal=False, *, scale=None, method="auto"):
    r"""Attention where ``Hkv`` key/value heads serve ``Hq = groups * Hkv`` query heads: query
    head ``h`` attends with key/value head ``h // groups`` (``transformers``' ``repeat_kv``).

    .. math::  Y_h = \mathrm{softmax}\!\left(s\,Q_h K_{\lfloor h/g\rfloor}^\top + M\right)
               V_{\lfloor h/g\rfloor}

    ``q`` ``(B, Hq, Tq, d)``, ``k`` ``(B, Hkv, Tk, d)``, ``v`` ``(B, Hkv, Tk, dv)``. ``Hkv = 1``
    is multi-query attention, ``Hkv = Hq`` ordinary multi-head attention. The key/value heads
    are repeated (``(B, Hq, Tk, d)``, what the reference does too) and :func:`attention_forward`
    runs on them, so ``method`` and the causal alignment are its. Returns ``y`` ``(B, Hq, Tq,
    dv)`` and a :class:`GroupedAttentionCache`."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray) or a.ndim != 4:
            raise ValueError(f"{name} must be a 4-D (B, heads, T, d) array, got {np.shape(a)}")
    Hq, Hkv = q.shape[1], k.shape[1]
    if v.shape[1] != Hkv or Hkv == 0 or Hq % Hkv:
        raise ValueError(f"the key/value heads ({Hkv}, v has {v.shape[1]}) must divide the query "
                         f"heads ({Hq})")
    g = Hq // Hkv
    kr = np.repeat(k, g, axis=1) if g > 1 else k                        # (B, Hq, Tk, d)
    vr = np.repeat(v, g, axis=1) if g > 1 else v                        # (B, Hq, Tk, dv)
    y, inner = attention_forward(q, kr, vr, is_causal=is_causal, scale=scale, method=method)
    return y, GroupedAttentionCache(inner, g)


def grouped_query_attention_backward(dy, cache: GroupedAttentionCache):
    r"""From ``K_rep[:, h] = K[:, h // g]``: the gradient of a shared key/value head is the sum
    over the ``g`` query heads that read it, :math:`dK_j = \sum_{h:\lfloor h/g\rfloor=j} dK^{rep}_h`.
    Returns ``(dq, dk, dv)``."""
    dq, dkr, dvr, _ = attention_backward(dy, cache.inner)
    g = cache.groups
    if g == 1:
        return dq, dkr, dvr
    B, H, Tk, d = dkr.shape
    dk = dkr.reshape(B, H // g, g, Tk, d).sum(axis=2)                    # (B, Hkv, Tk, d)
    dv = dvr.reshape(B, H // g, g, Tk, dvr.shape[-1]).sum(axis=2)        # (B, Hkv, Tk, dv)
    return dq, dk, dv
