r"""Tiled attention with an online softmax (FlashAttention: Dao et al., 2022), forward and backward.

Per (batch, head) ``n`` and query row ``i``, with :math:`s` the scale and keys ``j`` allowed by
the masks (below):

.. math::  S_{ij} = s\, q_i \cdot k_j,\qquad P_{ij} = e^{S_{ij} - L_i},\qquad
           L_i = \log \textstyle\sum_{j\ \mathrm{allowed}} e^{S_{ij}},\qquad
           O_i = \textstyle\sum_j P_{ij} v_j

**Forward.** Queries come in blocks of ``bq`` rows; for each block the keys stream past in blocks
of ``bk``, and each row keeps a running max :math:`m`, a running sum :math:`\ell` and an
unnormalised output :math:`\tilde O`. For a key block with scores :math:`S` (``bq x bk``):

.. math::  m' = \max(m, \max_j S_{ij}),\quad \tilde P_{ij} = e^{S_{ij} - m'},\quad
           \ell' = e^{m - m'}\ell + \textstyle\sum_j \tilde P_{ij},\quad
           \tilde O' = e^{m - m'}\tilde O + \tilde P V

and after the last block :math:`O = \tilde O / \ell`, :math:`L = m + \log \ell`. Only ``O`` and
``L`` are written: nothing of size ``Tq x Tk`` exists, only one ``bq x bk`` tile per thread.

**Backward** (:math:`dO` upstream), from the same tiles, each recomputed from ``q``, ``k`` and
``L`` -- :math:`P = e^{sQK^\top - L}` exactly, since ``L`` is the whole row's log-sum:

.. math::  D_i = \textstyle\sum_c dO_{ic} O_{ic},\quad dV \mathrel{+}= P^\top dO,\quad
           dP = dO\,V^\top,\quad dS = P \odot (dP - D),\quad
           dQ \mathrel{+}= s\,dS\,K,\quad dK \mathrel{+}= s\,dS^\top Q

(``D`` is :math:`\sum_j dP_{ij} P_{ij}`, the softmax backward's row dot, read off the output:
:math:`\sum_j P_{ij}\, dO_i \cdot v_j = dO_i \cdot O_i`.) The backward loops over key blocks
outside and query blocks inside, so each key block's ``dK``, ``dV`` are summed in a tile;
``dQ`` is added to in place (one thread owns every row of its heads).

**Masks.** Key ``j`` is allowed for query ``i`` unless

* ``causal`` and ``j > i + offset`` (``offset = Tk - Tq``: the queries are the last Tq
  positions, bottom-right aligned as ``kernels/attention.py``), or
* ``mask`` is given and ``mask[mask_rows[n], i or 0, j]`` is False: ``mask`` is
  ``(Nm, 1 or Tq, Tk)`` boolean (a key-padding mask has one row), ``mask_rows`` maps each
  ``n`` to its slice. An empty ``mask`` (``Nm = 0``) means no mask.

A key block that the causal mask hides from every row of a query block is never computed (about
half the tiles). Masked scores are set to ``-inf`` before the row max is taken, so their
:math:`\tilde P` is ``exp(-inf) = 0``. A row whose allowed scores so far are all masked keeps
``m = -inf`` and is left untouched by the block (``-inf - (-inf)`` would be NaN); a row with
nothing allowed at all ends with :math:`\ell = 0`: output 0, ``L = -inf``, and the backward skips
it (zero gradients), as the dense kernel gives.

**What the kernels assume** (the caller, ``functional/attention.py``, checks it first): every
stack of heads with its last axis contiguous and no negative stride (:func:`heads_ok`: a head
split of a projection is read and written in place), one float dtype, finite inputs and scores that cannot overflow
(:math:`|s|\,\max|q|\,\max|k|\,d` well under the dtype's max: the caller falls back to the dense
path otherwise, which handles overflow exactly), ``1 <= bq, bk``. Scores, tiles and products are
in the input dtype; ``m``, ``\ell``, ``L`` and ``D`` in float64 (one number per row, so the cost
is nil; ``L`` in float32 would carry an absolute error of :math:`|L|\cdot 6\times10^{-8}` into
every recomputed :math:`P`, more than the scores' own rounding once :math:`|L|` is large). The
NumPy twin forms ``dS`` in the input dtype, with ``D`` rounded to it, as the dense kernel does;
the Numba kernel forms each entry in float64 registers. ``D`` read off ``O`` and ``dP`` from a
tile product round differently, so in a saturated (one-hot) row ``dP - D`` is a rounding error
where the dense path's is exactly 0: as large as the roundings in every other row's ``dS``
(relative to ``|dO| |V|``), which ``K`` and ``Q`` then scale alike on both paths.

**Routes.** The Numba kernels run over ``n`` in ``[lo, hi)`` (the caller splits the heads over
threads with :func:`scratchlm.kernels.split_run`; the kernels are ``nogil``), each stack of heads
given as its flat buffer, one offset per head and a row stride; a tile's rows run over its
whole width (keys a causal row may not see are ``-inf``) and one ``exp`` call covers the tile;
the tile products are our GEMM (``gemm._gemm_in``: its packing and micro-kernel, on the flat arrays with a row and
a column offset per tile, scratch allocated once per call) into preallocated tiles, so no BLAS
thread pool runs beside the ``split_run`` threads; the exponentials ``vmath``'s
vectorised ``exp``, the rest plain loops compiled with the ``FAST`` flags (row sums reordered;
NaN and inf keep their meaning). The NumPy twins loop over the same tiles with every head of
``[lo, hi)`` at once inside a tile (batched ``@``), so they never hold a ``Tq x Tk`` array
either.
"""

import math

import numpy as np
from numba import njit

from . import FAST, dispatch
from .gemm import _batch_offsets, _gemm_in, workspace
from .vmath import exp_nonpos_inplace


# ------------------------------------------------------------------------------------------------
# input scan for the overflow bound
# ------------------------------------------------------------------------------------------------
def max_abs_numpy(x):
    """x: a float array -> max |x| as a Python float, ``inf`` when any entry is NaN or +-inf.
    (The Numba twin takes a 1-D contiguous array or a stack of heads with :func:`heads_ok`.)"""
    m = float(np.abs(x).max()) if x.size else 0.0
    return m if math.isfinite(m) else math.inf


#: per float width: the unsigned view, the mask that clears the sign bit, and the smallest bits
#: of a non-finite magnitude (the exponent field all ones: +inf, then the NaNs)
_MAGNITUDE = {4: (np.uint32, np.uint32(0x7FFFFFFF), 0x7F800000),
              8: (np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF), 0x7FF0000000000000)}


@njit(cache=True, error_model="numpy", nogil=True)
def _max_magnitude_bits(bits, mask):
    # bits: (n,) the raw bits of float entries (uint32 or uint64) -> max of (bits & mask).
    # Clearing the sign bit gives |x|'s bits, and non-negative IEEE floats order as their bits
    # do, with +inf above every finite value and the NaNs above +inf. An integer maximum
    # vectorises (a float one does not without ``nnan``: sixteen float lanes in an array ran
    # one element at a time, 1.9 G entries/s against 7.4 here).
    top = bits.dtype.type(0)
    for i in range(bits.shape[0]):
        top = max(top, bits.dtype.type(bits[i] & mask))
    return top


@njit(cache=True, error_model="numpy", nogil=True)
def _max_magnitude_rows(bits, base, rs, T, c, mask):
    # as _max_magnitude_bits over a stack of heads: head n's row i is bits[base[n] + i rs:][:c]
    top = bits.dtype.type(0)
    for n in range(base.shape[0]):
        for i in range(T):
            row = bits[base[n] + i * rs:][:c]
            for j in range(c):
                top = max(top, bits.dtype.type(row[j] & mask))
    return top


def max_abs_numba(x):
    """The Numba twin of :func:`max_abs_numpy` (same contract): the largest magnitude read off
    the entries' bits."""
    utype, mask, non_finite = _MAGNITUDE[x.dtype.itemsize]
    if x.flags.c_contiguous:
        top = int(_max_magnitude_bits(x.reshape(-1).view(utype), mask))
    elif x.size == 0:
        top = 0
    elif x.ndim < 2 or not heads_ok(x):
        return max_abs_numba(np.ascontiguousarray(x))
    else:
        rows = _longest_rows(x)              # a head split of (B, T, H d): B T rows of H d
        flat, base, rs = _as_heads(rows)
        top = int(_max_magnitude_rows(flat.view(utype), base, rs, *rows.shape[-2:], mask))
    if top >= non_finite:
        return math.inf
    return float(np.array(top, utype).view(x.dtype))


max_abs = dispatch(max_abs_numba, max_abs_numpy)


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True, inline="always", fastmath=FAST)
def _row_max(row, end, lanes):
    # row: (>= end,) -> max(row[:end]) (-inf when empty); lanes: (16,) scratch. Sixteen running
    # maxima, one per lane, which LLVM turns into vector maxima (one running max is a chain of
    # dependent compares it does not vectorise without ``nnan``); the rows hold no NaN here.
    ninf = row.dtype.type(-np.inf)
    lanes[:] = ninf
    c = 0
    while c + 16 <= end:
        for u in range(16):
            x = row[c + u]
            lanes[u] = x if x > lanes[u] else lanes[u]
        c += 16
    mx = ninf
    for u in range(16):
        mx = lanes[u] if lanes[u] > mx else mx
    for u in range(c, end):
        mx = row[u] if row[u] > mx else mx
    return mx


# ------------------------------------------------------------------------------------------------
# stacks of heads, any strides
# ------------------------------------------------------------------------------------------------
def heads_ok(a):
    """Whether the kernels take the stack ``a`` ``(..., T, c)`` as it is: its last axis
    contiguous and no stride negative (a head split of a ``(B, T, H d)`` projection,
    ``x.reshape(B, T, H, d).transpose(0, 2, 1, 3)``, is; the caller copies anything else)."""
    # (a zero stride -- a broadcast axis -- is refused: the kernels index each head's rows and
    # entries as distinct, and an output laid out like it would overlap itself)
    return a.strides[-1] == a.itemsize and all(
        (st > 0 or n == 1) and st >= 0 and st % a.itemsize == 0
        for n, st in zip(a.shape, a.strides))


def _as_heads(a):
    """A stack ``a`` ``(..., T, c)`` with :func:`heads_ok` as ``(flat, base, rs)``:
    ``a[n][i, j] == flat[base[n] + i * rs + j]``, ``n`` the C-order index over the leading axes,
    ``flat`` a 1-D view from ``a``'s first entry (no copy)."""
    item = a.itemsize
    steps = tuple(st // item for st in a.strides)
    span = sum((n - 1) * st for n, st in zip(a.shape, steps)) + 1 if a.size else 0
    flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,))
    lead = a.shape[:-2]
    base = (_batch_offsets(lead, steps[:-2]) if math.prod(lead) <= 4096 else
            _batch_offsets.__wrapped__(lead, steps[:-2]))                # (too big to keep)
    return flat, base, steps[-2]


def _longest_rows(a):
    """A view of ``a``'s entries (in another order) whose rows are as long as the memory allows:
    the axes sorted by stride, those that run into each other merged. A max over every entry
    then runs over long rows (a head split's rows of d entries are short loops)."""
    order = sorted(range(a.ndim), key=lambda ax: -a.strides[ax])
    shape, steps = [a.shape[order[0]]], [a.strides[order[0]]]
    for ax in order[1:]:
        if steps[-1] == a.shape[ax] * a.strides[ax]:      # runs on from the previous axis
            shape[-1] *= a.shape[ax]
            steps[-1] = a.strides[ax]
        else:
            shape.append(a.shape[ax])
            steps.append(a.strides[ax])
    if len(shape) == 1:
        shape, steps = [1] + shape, [0] + steps
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=steps)


def _stack(a, lo, hi):
    """Heads ``lo:hi`` of the stack ``a`` ``(..., T, c)`` as one ``(hi - lo, T, c)`` array (a
    copy when the leading axes do not merge)."""
    return a.reshape((-1,) + a.shape[-2:])[lo:hi]


def _put(a, lo, hi, values):
    """``a``'s heads ``lo:hi`` = ``values`` ``(hi - lo, T, c)``, whatever ``a``'s strides."""
    lead = a.shape[:-2]
    for n in range(lo, hi):
        a[np.unravel_index(n, lead) if lead else ()] = values[n - lo]


def _allowed_numpy(i0, i1, j0, j1, causal, offset, mask, mask_rows, lo, hi):
    """(hi - lo or 1, i1 - i0, j1 - j0) bool: which keys ``j0:j1`` the queries ``i0:i1`` may see,
    or None when all of them."""
    allowed = None
    if causal:
        allowed = (np.arange(j0, j1)[None, :] <= np.arange(i0, i1)[:, None] + offset)[None]
    if mask.shape[0]:
        rows = slice(i0, i1) if mask.shape[1] > 1 else slice(0, 1)
        m = mask[mask_rows[lo:hi], rows, j0:j1]                       # (hi - lo, bq or 1, bk)
        allowed = m if allowed is None else allowed & m
    return allowed


def flash_attention_forward_numpy(q, k, v, scale, causal, offset, mask, mask_rows, bq, bk,
                                  out, lse, lo, hi):
    """Tiled attention for heads ``lo:hi``: writes their ``out`` and ``lse[lo:hi]``.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv), out: (..., Tq, dv): stacks of N heads
    (the leading axes, C order), one float dtype, any strides (the Numba route needs
    :func:`heads_ok`); ``mask`` (Nm, 1 or Tq, Tk) bool (Nm = 0: none) with ``mask_rows`` (N,)
    int64; lse: (N, Tq) float64, ``-inf`` for a row with nothing allowed."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    dt = q.dtype.type
    sc = dt(scale)
    q, k, v = (_stack(a, lo, hi) for a in (q, k, v))                  # (n, T, d|dv) heads lo:hi
    o = np.empty((hi - lo, Tq, v.shape[2]), q.dtype)                         # (n, Tq, dv)
    for i0 in range(0, Tq, bq):
        i1 = min(Tq, i0 + bq)
        qi = q[:, i0:i1]                                                       # (n, bq, d)
        m = np.full((hi - lo, i1 - i0), -np.inf)                               # (n, bq) float64
        ell = np.zeros((hi - lo, i1 - i0))
        acc = np.zeros((hi - lo, i1 - i0, v.shape[2]), q.dtype)                # (n, bq, dv)
        stop = min(Tk, i1 + offset) if causal else Tk       # keys from stop on: masked for all
        for j0 in range(0, max(stop, 0), bk):
            j1 = min(stop, j0 + bk)
            s = (qi @ np.swapaxes(k[:, j0:j1], 1, 2)) * sc                     # (n, bq, bk)
            allowed = _allowed_numpy(i0, i1, j0, j1, causal, offset, mask, mask_rows, lo, hi)
            if allowed is not None:
                s = np.where(allowed, s, dt(-np.inf))
            m_new = np.maximum(m, s.max(axis=-1))                              # (n, bq)
            base = np.where(m_new == -np.inf, 0.0, m_new)   # rows with nothing yet: no shift
            p = np.exp(s - base[..., None].astype(q.dtype))         # m' = -inf: every p is 0
            alpha = np.exp(m - base)                                           # e^{m - m'}
            ell = alpha * ell + p.sum(axis=-1, dtype=np.float64)
            acc = acc * alpha[..., None].astype(q.dtype) + p @ v[:, j0:j1]     # (n, bq, dv)
            m = m_new
        some = ell > 0
        safe = np.where(some, ell, 1.0)
        o[:, i0:i1] = np.where(some[..., None], acc / safe[..., None].astype(q.dtype), 0)
        with np.errstate(divide="ignore"):
            lse[lo:hi, i0:i1] = np.where(some, m + np.log(safe), -np.inf)
    _put(out, lo, hi, o)


def flash_attention_forward_numba(q, k, v, scale, causal, offset, mask, mask_rows, bq, bk,
                                  out, lse, lo, hi):
    """The Numba twin of :func:`flash_attention_forward_numpy` (same arguments; q, k, v and out
    with :func:`heads_ok`): each stack is handed to the kernel as its flat buffer, one offset
    per head and a row stride, so a head split of a projection is read and written in place."""
    (qf, qb, qrs), (kf, kb, krs), (vf, vb, vrs), (of, ob, ors) = map(_as_heads, (q, k, v, out))
    _forward(qf, qb, qrs, kf, kb, krs, vf, vb, vrs, q.shape[-2], k.shape[-2], q.shape[-1],
             v.shape[-1], scale, causal, offset, mask, mask_rows, bq, bk, of, ob, ors, lse, lo,
             hi)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def _forward(qf, qb, qrs, kf, kb, krs, vf, vb, vrs, Tq, Tk, d, dv, scale, causal, offset, mask,
             mask_rows, bq, bk, of, ob, ors, lse, lo, hi):
    # head n's q[i, c] is qf[qb[n] + i * qrs + c] (Tq x d); k, v (Tk x d|dv) and out (Tq x dv)
    # alike -> out and lse[lo:hi] (n, Tq) of heads lo:hi
    dt = qf.dtype.type
    sc = dt(scale)
    ninf = dt(-np.inf)
    has_mask = mask.shape[0] > 0
    per_query = mask.shape[1] > 1
    s_buf = np.empty(bq * bk, qf.dtype)                 # the score tile, then P~ in place
    acc = np.empty((bq, dv), qf.dtype)                  # O~ of the query block
    accf = acc.reshape(-1)
    idx = np.arange(max(bq, bk, d, dv))                 # tile offsets: idx[:rows] * row stride
    bp, ap, tile, tile_rows, ends = workspace(max(bq, bk), max(bk, d, dv), qf)
    m = np.empty(bq)                                    # running max (float64)
    m_new = np.empty(bq)                                # the max after this key block
    ell = np.empty(bq)                                  # running sum (float64)
    bits = np.empty(bq * bk, np.int32)
    lanes = np.empty(16, qf.dtype)
    for n in range(lo, hi):
        mn = mask_rows[n] if has_mask else 0
        for i0 in range(0, Tq, bq):
            i1 = min(Tq, i0 + bq)
            nq = i1 - i0
            m[:nq] = -np.inf
            ell[:nq] = 0.0
            acc[:nq] = 0.0
            stop = min(Tk, i1 + offset) if causal else Tk     # keys from stop on: masked for all
            for j0 in range(0, max(stop, 0), bk):
                j1 = min(stop, j0 + bk)
                nk = j1 - j0
                s = s_buf[:nq * nk].reshape((nq, nk))
                _gemm_in(qf[qb[n] + i0 * qrs:], idx[:nq] * qrs, idx[:d],          # S/s = Q K^T
                         kf[kb[n] + j0 * krs:], idx[:d], idx[:nk] * krs,
                         s_buf, idx[:nq] * nk, idx[:nk], False, bp, ap, tile, tile_rows, ends)
                # each row over the whole tile width (a causal row's keys past its own are
                # -inf): loops of a fixed length vectorise without a scalar remainder, and one
                # exp call over the tile replaces one per row
                for r in range(nq):
                    i = i0 + r
                    row = s[r]
                    end = min(nk, i + offset + 1 - j0) if causal else nk   # allowed: c < end
                    for c in range(nk):
                        v = row[c] * sc
                        row[c] = v if c < end else ninf
                    if has_mask:
                        mi = i if per_query else 0
                        for c in range(max(end, 0)):
                            if not mask[mn, mi, j0 + c]:
                                row[c] = ninf
                    mx = _row_max(row, nk, lanes)
                    m_new[r] = max(m[r], mx)    # -inf: nothing allowed so far, P~ = 0
                    mnew = dt(m_new[r]) if mx != ninf else dt(0.0)  # exact: a max of dt values
                    for c in range(nk):
                        row[c] = row[c] - mnew          # masked: -inf, exp(-inf) = 0
                exp_nonpos_inplace(s_buf[:nq * nk], bits[:nq * nk])
                for r in range(nq):
                    if m_new[r] == -np.inf:
                        continue
                    row = s[r]
                    total = 0.0                                                      # float64
                    for c in range(nk):
                        total += row[c]
                    alpha = math.exp(m[r] - m_new[r])   # e^{m - m'}: 0 while m = -inf
                    ell[r] = alpha * ell[r] + total
                    m[r] = m_new[r]
                    if alpha != 1.0:
                        a = dt(alpha)
                        for c in range(dv):
                            acc[r, c] *= a
                _gemm_in(s_buf, idx[:nq] * nk, idx[:nk],                           # O~ += P~ V
                         vf[vb[n] + j0 * vrs:], idx[:nk] * vrs, idx[:dv],
                         accf, idx[:nq] * dv, idx[:dv], True, bp, ap, tile, tile_rows, ends)
            for r in range(nq):
                o = of[ob[n] + (i0 + r) * ors:][:dv]                        # out[n, i0 + r, :]
                if ell[r] == 0.0:                       # nothing allowed: 0, as the dense kernel
                    o[:] = 0.0
                    lse[n, i0 + r] = -np.inf
                else:
                    inv = dt(1.0 / ell[r])
                    for c in range(dv):
                        o[c] = acc[r, c] * inv
                    lse[n, i0 + r] = m[r] + math.log(ell[r])


# ------------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------------
def flash_attention_backward_numpy(q, k, v, out, dout, lse, scale, causal, offset, mask,
                                   mask_rows, bq, bk, dq, dk, dv, lo, hi):
    """The backward of :func:`flash_attention_forward_numpy` for heads ``lo:hi``: writes their
    ``dq`` (..., Tq, d), ``dk`` (..., Tk, d), ``dv`` (..., Tk, dv).

    out, dout: (..., Tq, dv); lse: (N, Tq) float64 from the forward; stacks of heads with any
    strides, the rest as the forward."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    dt = q.dtype.type
    sc = dt(scale)
    grads = dq, dk, dv
    q, k, v, out, dout = (_stack(a, lo, hi) for a in (q, k, v, out, dout))  # heads lo:hi
    dq, dk, dv = (np.empty(a.shape, a.dtype) for a in (q, k, v))
    D = np.einsum("nic,nic->ni", dout, out, dtype=np.float64)  # (n, Tq) <dO_i, O_i>
    dq[:] = 0.0
    for j0 in range(0, Tk, bk):
        j1 = min(Tk, j0 + bk)
        kj, vj = k[:, j0:j1], v[:, j0:j1]                                      # (n, bk, d|dv)
        dk_j = np.zeros(kj.shape, q.dtype)
        dv_j = np.zeros(vj.shape, q.dtype)
        first = max(0, j0 - offset) if causal else 0        # earlier queries see none of j0:j1
        for i0 in range(first, Tq, bq):
            i1 = min(Tq, i0 + bq)
            qi, doi = q[:, i0:i1], dout[:, i0:i1]                              # (n, bq, d|dv)
            s = (qi @ np.swapaxes(kj, 1, 2)) * sc             # (n, bq, bk) S, as the forward
            L = lse[lo:hi, i0:i1, None]                                        # (n, bq, 1)
            ok = np.isfinite(L)                               # L = -inf: nothing allowed, P = 0
            allowed = _allowed_numpy(i0, i1, j0, j1, causal, offset, mask, mask_rows, lo, hi)
            if allowed is not None:
                ok = ok & allowed
            with np.errstate(invalid="ignore"):
                p = np.exp(np.where(ok, s - L, -np.inf).astype(q.dtype))   # (n, bq, bk) P = e^(S-L)
            # (the inputs are finite here -- the tiled path is taken only then -- yet OpenBLAS's
            # small-matrix kernels have now and then left the invalid flag set on finite
            # operands, which NumPy reports as a warning: a NaN would still show in the result)
            with np.errstate(invalid="ignore"):
                dv_j += np.swapaxes(p, 1, 2) @ doi       # (n, bk, dv): from O = P V
                dp = doi @ np.swapaxes(vj, 1, 2)                               # (n, bq, bk)
                # dS = s P (dP - D): from P = softmax(S)
                ds = (p * dp - p * D[:, i0:i1, None].astype(q.dtype)) * sc            # (n, bq, bk)
                dq[:, i0:i1] += ds @ kj                                        # (n, bq, d)
                dk_j += np.swapaxes(ds, 1, 2) @ qi                             # (n, bk, d)
        dk[:, j0:j1] = dk_j
        dv[:, j0:j1] = dv_j
    for grad, values in zip(grads, (dq, dk, dv)):
        _put(grad, lo, hi, values)


def flash_attention_backward_numba(q, k, v, out, dout, lse, scale, causal, offset, mask,
                                   mask_rows, bq, bk, dq, dk, dv, lo, hi):
    """The Numba twin of :func:`flash_attention_backward_numpy` (same arguments, every stack
    with :func:`heads_ok`), on flat buffers as :func:`flash_attention_forward_numba`."""
    stacks = map(_as_heads, (q, k, v, out, dout, dq, dk, dv))
    (qf, qb, qrs), (kf, kb, krs), (vf, vb, vrs), (of, ob, ors), (gf, gb, grs), *grads = stacks
    _backward(qf, qb, qrs, kf, kb, krs, vf, vb, vrs, of, ob, ors, gf, gb, grs, q.shape[-2],
              k.shape[-2], q.shape[-1], v.shape[-1], lse, scale, causal, offset, mask, mask_rows,
              bq, bk, *grads[0], *grads[1], *grads[2], lo, hi)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def _backward(qf, qb, qrs, kf, kb, krs, vf, vb, vrs, of, ob, ors, gf, gb, grs, Tq, Tk, d, dvn,
              lse, scale, causal, offset, mask, mask_rows, bq, bk, dqf, dqb, dqrs, dkf, dkb,
              dkrs, dvf, dvb, dvrs, lo, hi):
    # head n's q[i, c] is qf[qb[n] + i * qrs + c]; k, v, out, dout (gf) and the gradients dq,
    # dk, dv alike; lse: (N, Tq) float64 -> dq, dk, dv of heads lo:hi
    dt = qf.dtype.type
    sc = dt(scale)
    sc64 = float(sc)
    has_mask = mask.shape[0] > 0
    per_query = mask.shape[1] > 1
    D = np.empty(Tq)                                    # <dO_i, O_i>, float64
    p_buf = np.empty(bq * bk, qf.dtype)                 # P of the tile
    ds_buf = np.empty(bq * bk, qf.dtype)                # dP, then dS in place
    dk_j = np.empty((bk, d), qf.dtype)
    dv_j = np.empty((bk, dvn), qf.dtype)
    dk_jf, dv_jf = dk_j.reshape(-1), dv_j.reshape(-1)
    idx = np.arange(max(bq, bk, d, dvn))                # tile offsets: idx[:rows] * row stride
    bp, ap, tile, tile_rows, ends = workspace(max(bq, bk), max(bq, bk, d, dvn), qf)
    bits = np.empty(bq * bk, np.int32)
    ninf = dt(-np.inf)
    for n in range(lo, hi):
        mn = mask_rows[n] if has_mask else 0
        for i in range(Tq):
            o, g = of[ob[n] + i * ors:][:dvn], gf[gb[n] + i * grs:][:dvn]
            acc = 0.0
            for c in range(dvn):
                acc += g[c] * o[c]
            D[i] = acc
            dqf[dqb[n] + i * dqrs:][:d] = 0.0
        for j0 in range(0, Tk, bk):
            j1 = min(Tk, j0 + bk)
            nk = j1 - j0
            dk_j[:nk] = 0.0
            dv_j[:nk] = 0.0
            first = max(0, j0 - offset) if causal else 0    # earlier queries see none of j0:j1
            for i0 in range(first, Tq, bq):
                i1 = min(Tq, i0 + bq)
                nq = i1 - i0
                p = p_buf[:nq * nk].reshape((nq, nk))
                _gemm_in(qf[qb[n] + i0 * qrs:], idx[:nq] * qrs, idx[:d],  # (nq, nk): S / s,
                         kf[kb[n] + j0 * krs:], idx[:d], idx[:nk] * krs,  # as the forward's
                         p_buf, idx[:nq] * nk, idx[:nk], False, bp, ap, tile, tile_rows, ends)
                for r in range(nq):                     # whole rows, as the forward's
                    i = i0 + r
                    row = p[r]
                    L = lse[n, i]
                    end = min(nk, i + offset + 1 - j0) if causal else nk   # allowed: c < end
                    end = max(end, 0)
                    if L == -np.inf:                    # nothing allowed in the row: P = 0
                        end = 0
                    for c in range(nk):                 # P = e^{S - L}, S rounded as forward's
                        x = dt((row[c] * sc) - L)
                        row[c] = x if c < end else ninf
                    if has_mask:
                        mi = i if per_query else 0
                        for c in range(end):
                            if not mask[mn, mi, j0 + c]:
                                row[c] = ninf
                exp_nonpos_inplace(p_buf[:nq * nk], bits[:nq * nk])
                _gemm_in(p_buf, idx[:nk], idx[:nq] * nk,        # (nk, dv): dV += P^T dO, from
                         gf[gb[n] + i0 * grs:], idx[:nq] * grs, idx[:dvn],          # O = P V
                         dv_jf, idx[:nk] * dvn, idx[:dvn], True, bp, ap, tile, tile_rows, ends)
                ds = ds_buf[:nq * nk].reshape((nq, nk))
                _gemm_in(gf[gb[n] + i0 * grs:], idx[:nq] * grs, idx[:dvn],  # (nq, nk): dP =
                         vf[vb[n] + j0 * vrs:], idx[:dvn], idx[:nk] * vrs,   # dO V^T
                         ds_buf, idx[:nq] * nk, idx[:nk], False, bp, ap, tile, tile_rows, ends)
                for r in range(nq):                     # dS = s P (dP - D): from P = softmax(S)
                    Di = D[i0 + r]
                    for c in range(nk):
                        pc = float(p[r, c])
                        ds[r, c] = dt(sc64 * (pc * float(ds[r, c]) - pc * Di))
                _gemm_in(ds_buf, idx[:nq] * nk, idx[:nk],       # (nq, d): dQ += s dS K, from
                         kf[kb[n] + j0 * krs:], idx[:nk] * krs, idx[:d],     # S = s Q K^T
                         dqf[dqb[n] + i0 * dqrs:], idx[:nq] * dqrs, idx[:d], True,
                         bp, ap, tile, tile_rows, ends)
                _gemm_in(ds_buf, idx[:nk], idx[:nq] * nk,       # (nk, d): dK += s dS^T Q
                         qf[qb[n] + i0 * qrs:], idx[:nq] * qrs, idx[:d],
                         dk_jf, idx[:nk] * d, idx[:d], True, bp, ap, tile, tile_rows, ends)
            for r in range(nk):                         # dk[n, j0 + r], dv[n, j0 + r]
                dkf[dkb[n] + (j0 + r) * dkrs:][:d] = dk_j[r]
                dvf[dvb[n] + (j0 + r) * dvrs:][:dvn] = dv_j[r]


flash_attention_forward = dispatch(flash_attention_forward_numba, flash_attention_forward_numpy)
flash_attention_backward = dispatch(flash_attention_backward_numba, flash_attention_backward_numpy)
