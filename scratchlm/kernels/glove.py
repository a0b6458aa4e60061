r"""GloVe's two passes: counting co-occurrences, and AdaGrad over the counts (as glove.c).

**Counting** -- ``cooccur(words, starts, V, window, symmetric) -> (keys, counts)``. Every word at
position ``p`` of a sentence and each word ``d = 1 .. window`` places before it co-occur with
weight ``1/d`` (``X[left, right]``, and ``X[right, left]`` too when ``symmetric``), as glove.c's
``cooccur`` does. The weights are counted *exactly*: in units of ``1/L``, ``L = lcm(1 .. window)``,
``1/d`` is the integer ``L/d``, so each count is an int64 sum that no order of addition changes
(a float sum of thirds and sevenths would depend on it). ``keys`` ``(P,)`` int64 are
``row * V + col``, sorted; ``counts`` ``(P,)`` int64 the numerators; ``X = counts / L``.
The Numba kernel adds into an open-addressing hash table (linear probing), growing it when it is
half full; the NumPy twin builds every pair of the corpus at once (about ``2 window N`` keys) and
reduces them with ``np.unique``. Both give the same arrays.

**Training** -- ``glove_epoch(W, C, b, c, gW, gC, gb, gc, rows, cols, logx, fx, order, eta, clip)
-> cost``: for each non-zero ``n`` in ``order`` (``i = rows[n]``, ``j = cols[n]``), glove.c's
step on :math:`\tfrac12 f(X)(w_i\cdot\tilde w_j + b_i + \tilde b_j - \log X)^2`:

.. code-block:: text

    diff  = w_i . w~_j + b_i + b~_j - log X          (float64)
    cost += 1/2 f diff^2
    g     = eta f diff                               (rounded to the tables' dtype)
    u_k   = clip(g w~_jk),  v_k = clip(g w_ik)       (clip: to [-clip, clip], glove.c's 100)
    w_ik -= u_k / sqrt(G_ik);   G_ik += u_k^2        (every k from the old values, then applied)
    w~_jk -= v_k / sqrt(G~_jk); G~_jk += v_k^2
    b_i  -= g / sqrt(Gb_i);     Gb_i += g^2;   and the same for b~_j

AdaGrad with the accumulators starting at 1 and the learning rate inside the accumulated squares,
exactly as glove.c writes it (its ``gradsq``). ``logx`` and ``fx`` :math:`= f(X)` are computed
once, in NumPy, and shared by both routes; the dot product is :func:`~scratchlm.kernels.word2vec.
dot_numba`'s fixed order. With one thread the two routes agree bit for bit. The Numba kernel
releases the GIL: threads run parts of ``order`` at once (Hogwild), as glove.c's threads do.
"""

import math

import numpy as np
from numba import njit

from . import dispatch
from .word2vec import dot_numba, dot_numpy

#: the largest window: lcm(1 .. 20) = 232,792,560 units per co-occurrence, so an int64 count
#: holds 3.9e10 co-occurrences of one pair
MAX_WINDOW = 20


def units(window: int) -> int:
    """``L = lcm(1 .. window)``: one co-occurrence at distance ``d`` counts ``L // d``."""
    return math.lcm(*range(1, window + 1))


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _slot(key, mask):
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)          # Fibonacci hashing
    return np.int64(h ^ (h >> np.uint64(29))) & mask


@njit(cache=True, error_model="numpy", nogil=True)
def _add(keys, vals, key, val):
    # -> 1 when a new key was inserted
    mask = keys.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = keys[s]
        if k == key:
            vals[s] += val
            return 0
        if k < 0:
            keys[s] = key
            vals[s] = val
            return 1
        s = (s + 1) & mask


@njit(cache=True, error_model="numpy", nogil=True)
def _count_into_table(keys, vals, used, words, starts, s0, V, window, L, symmetric):
    # adds sentences s0, s0+1, ... until the table is half full; -> (next sentence, used)
    limit = keys.shape[0] // 2
    s = s0
    while s < starts.shape[0] - 1 and used + 2 * window * (starts[s + 1] - starts[s]) <= limit:
        lo = starts[s]
        for p in range(lo, starts[s + 1]):
            right = np.int64(words[p])
            for d in range(1, window + 1):
                if p - d < lo:
                    break
                left = np.int64(words[p - d])
                used += _add(keys, vals, left * V + right, L // d)
                if symmetric:
                    used += _add(keys, vals, right * V + left, L // d)
        s += 1
    return s, used


@njit(cache=True, error_model="numpy", nogil=True)
def _rehash(keys, vals, new_keys, new_vals):
    for s in range(keys.shape[0]):
        if keys[s] >= 0:
            _add(new_keys, new_vals, keys[s], vals[s])


def cooccur_numba(words, starts, V, window, symmetric):
    L = units(window)
    size = 1 << 16                                       # grows by doubling (below)
    while size < min(4 * window * len(words), 2 * V * V, 1 << 22):
        size <<= 1
    keys, vals = np.full(size, -1, np.int64), np.zeros(size, np.int64)
    s, used = 0, 0
    n_sent = len(starts) - 1
    while s < n_sent:
        s, used = _count_into_table(keys, vals, used, words, starts, s, V, window, L, symmetric)
        if s < n_sent:                                   # half full: double, re-insert, go on
            need = used + 2 * window * int(starts[s + 1] - starts[s])
            size = keys.size * 2
            while size < 2 * need:
                size *= 2
            new_keys, new_vals = np.full(size, -1, np.int64), np.zeros(size, np.int64)
            _rehash(keys, vals, new_keys, new_vals)
            keys, vals = new_keys, new_vals
    full = keys >= 0
    keys, vals = keys[full], vals[full]
    order = np.argsort(keys, kind="stable")
    return keys[order], vals[order]


def cooccur_numpy(words, starts, V, window, symmetric):
    """The reference: for each distance ``d``, every (left, right) pair of the same sentence as
    arrays at once, then the units summed per key with ``np.unique``."""
    L = units(window)
    words = np.asarray(words, np.int64)                                     # (N,)
    sentence = np.repeat(np.arange(len(starts) - 1), np.diff(starts))      # (N,) its sentence
    parts_k, parts_v = [], []
    for d in range(1, window + 1):
        right = np.arange(d, words.size)                                   # (N - d,) positions
        right = right[sentence[right] == sentence[right - d]]              # -> same sentence
        left_w, right_w = words[right - d], words[right]
        parts_k.append(left_w * V + right_w)
        parts_v.append(np.full(right.size, L // d, np.int64))
        if symmetric:
            parts_k.append(right_w * V + left_w)
            parts_v.append(np.full(right.size, L // d, np.int64))
    keys = np.concatenate(parts_k)                                         # (P_all,)
    uniq, inverse = np.unique(keys, return_inverse=True)                   # (P,), (P_all,)
    counts = np.zeros(uniq.size, np.int64)
    np.add.at(counts, inverse, np.concatenate(parts_v))
    return uniq, counts


cooccur = dispatch(cooccur_numba, cooccur_numpy)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True)
def glove_epoch_numba(W, C, b, c, gW, gC, gb, gc, rows, cols, logx, fx, order, eta, clip):
    D = W.shape[1]
    u = np.zeros(D, W.dtype)                   # (D,) the step of w_i
    v = np.zeros(D, W.dtype)                   # (D,) the step of w~_j
    gbuf = np.zeros(2, W.dtype)
    gbuf[1] = clip
    lim = gbuf[1]
    cost = 0.0
    for q in range(order.shape[0]):
        n = order[q]
        i, j = rows[n], cols[n]
        wi, cj = W[i], C[j]
        diff = np.float64(dot_numba(wi, cj)) + np.float64(b[i]) + np.float64(c[j]) - logx[n]
        fdiff = fx[n] * diff
        cost += 0.5 * fdiff * diff
        gbuf[0] = eta * fdiff
        g = gbuf[0]
        for k in range(D):
            t1 = g * cj[k]
            t2 = g * wi[k]
            if t1 > lim:                       # clip; NaN stays NaN (as np.minimum/maximum)
                t1 = lim
            elif t1 < -lim:
                t1 = -lim
            if t2 > lim:
                t2 = lim
            elif t2 < -lim:
                t2 = -lim
            u[k] = t1 / np.sqrt(gW[i, k])
            v[k] = t2 / np.sqrt(gC[j, k])
            gW[i, k] += t1 * t1
            gC[j, k] += t2 * t2
        for k in range(D):
            wi[k] -= u[k]
            cj[k] -= v[k]
        b[i] -= g / np.sqrt(gb[i])
        c[j] -= g / np.sqrt(gc[j])
        gb[i] += g * g
        gc[j] += g * g
    return cost


def glove_epoch_numpy(W, C, b, c, gW, gC, gb, gc, rows, cols, logx, fx, order, eta, clip):
    """The reference: the module docstring's step, one co-occurrence at a time."""
    dt = W.dtype.type
    lim = dt(clip)
    cost = 0.0
    for n in order.tolist():
        i, j = int(rows[n]), int(cols[n])
        wi, cj = W[i], C[j]
        diff = float(dot_numpy(wi, cj)) + float(b[i]) + float(c[j]) - float(logx[n])
        fdiff = float(fx[n]) * diff
        cost += 0.5 * fdiff * diff
        g = dt(eta * fdiff)
        t1 = np.minimum(np.maximum(g * cj, -lim), lim)          # (D,) clipped steps
        t2 = np.minimum(np.maximum(g * wi, -lim), lim)
        u, v = t1 / np.sqrt(gW[i]), t2 / np.sqrt(gC[j])
        gW[i] += t1 * t1
        gC[j] += t2 * t2
        wi -= u
        cj -= v
        b[i] -= g / np.sqrt(gb[i])
        c[j] -= g / np.sqrt(gc[j])
        gb[i] += g * g
        gc[j] += g * g
    return cost


glove_epoch = dispatch(glove_epoch_numba, glove_epoch_numpy)
