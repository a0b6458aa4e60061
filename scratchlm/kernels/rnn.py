r"""Recurrent cells: the gate arithmetic of one time step, forward and backward, fused.

The time loop (``scratchlm/functional/rnn.py``) does, per step, one BLAS matmul for the recurrent
term and one call of a kernel here for everything elementwise. The matmuls stay outside: inside a
Numba kernel ``np.dot`` needs SciPy's BLAS bindings, which are not a dependency, and a hand-written
loop is 10-30x slower than BLAS for ``(B, H) @ (H, 4H)``.

Shapes: B batch, H hidden. Gate blocks are laid out along the last axis in PyTorch's order.

* Elman RNN:  ``h = act(pre)``, ``pre = W_ih x + b_ih + W_hh h_prev + b_hh`` (tanh or relu).
* LSTM (gates i, f, g, o; ``pre`` (B, 4H) holds every term)::

      i = sigmoid(pre_i)   f = sigmoid(pre_f)   g = tanh(pre_g)   o = sigmoid(pre_o)
      c = f * c_prev + i * g
      h = o * tanh(c)

* GRU (gates r, z, n; ``gi = W_ih x + b_ih`` and ``gh = W_hh h_prev + b_hh``, both (B, 3H), stay
  apart because r multiplies only the hidden part of n)::

      r = sigmoid(gi_r + gh_r)   z = sigmoid(gi_z + gh_z)
      n = tanh(gi_n + r * gh_n)
      h = (1 - z) * n + z * h_prev

The Numba kernels take the exponentials a row at a time with the vectorised
``exp_nonpos_inplace`` (``vmath.py``), only ever of non-positive numbers, so nothing overflows:

    sigmoid(x) = 1 / (1 + e)  (x >= 0),  e / (1 + e)  (x < 0),      e = exp(-|x|)
    tanh(x)    = vmath.tanh_into: sign(x) (1 - e) / (1 + e), e = exp(-2|x|), and an odd
                 polynomial for |x| < 0.55, where 1 - e cancels (float32; float64: math.tanh)

Both are accurate to about one ulp relative, down to subnormal outputs (sigmoid(-100) = 3.7e-44,
tanh(1e-30) = 1e-30), and saturate exactly (sigmoid(+-3e38) = 1, 0; tanh = +-1).

Over the whole floating-point range, the backward products are ordered so that the bounded
factors (gate values and their derivatives, all in [0, 1] or [-1, 1]) multiply first and the
unbounded ones (upstream gradients, ``c_prev``, ``gh``, ``h_prev - n``) last, and the LSTM's
``dc + dh o (1 - tanh(c)^2)`` is distributed over its two terms: an intermediate then overflows only
if the result does (upstream gradients near the max give finite gradients wherever those are
representable, never ``inf * 0 = NaN``). The NumPy twins compute the same expressions in the same
order, except the LSTM backward's, which forms that sum first (fewer whole-array passes) and
distributes it only in the rows where it overflows.
"""


import numpy as np
from numba import njit

from . import dispatch
from .vmath import exp_nonpos_inplace, tanh_into


@njit(cache=True, inline="always")
def _sigmoid_into(x, out, e, bits):
    # x, out, e: (n,) 1-D -> out = sigmoid(x); e, bits: scratch
    n = x.shape[0]
    one = x.dtype.type(1.0)
    for j in range(n):
        e[j] = -abs(x[j])
    exp_nonpos_inplace(e[:n], bits[:n])
    for j in range(n):
        num = one if x[j] >= 0 else e[j]
        out[j] = num / (one + e[j])


@njit(cache=True, inline="always")
def _tanh_into(x, out, e, bits):
    # x, out, e: (n,) 1-D -> out = tanh(x); e, bits: scratch
    n = x.shape[0]
    tanh_into(x, out[:n], e[:n], bits[:n])


def _sigmoid_numpy(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Elman RNN:  h = act(pre)
# --------------------------------------------------------------------------------------------
def rnn_cell_forward_numpy(pre, relu):
    """pre: (B, H) -> h: (B, H)."""
    return np.maximum(pre, 0) if relu else np.tanh(pre)


@njit(cache=True, nogil=True)
def rnn_cell_forward_numba(pre, relu):
    # pre: (B, H) -> h: (B, H)
    B, H = pre.shape
    h = np.empty_like(pre)
    e, bits = np.empty(H, pre.dtype), np.empty(H, np.int32)
    for b in range(B):
        if relu:
            for j in range(H):
                h[b, j] = max(pre[b, j], 0.0)
        else:
            _tanh_into(pre[b], h[b], e, bits)
    return h


def rnn_cell_backward_numpy(dh, h, relu):
    """dh, h: (B, H) -> dpre: (B, H).  From h = tanh(pre): dpre = dh (1 - h^2); relu: dh [h > 0]."""
    return dh * (h > 0) if relu else dh * (1 - h * h)


@njit(cache=True, nogil=True)
def rnn_cell_backward_numba(dh, h, relu):
    # dh, h: (B, H) -> dpre: (B, H)
    B, H = h.shape
    dpre = np.empty_like(h)
    for b in range(B):
        for j in range(H):
            if relu:
                dpre[b, j] = dh[b, j] if h[b, j] > 0 else 0.0
            else:
                dpre[b, j] = dh[b, j] * (1.0 - h[b, j] * h[b, j])
    return dpre


# --------------------------------------------------------------------------------------------
# LSTM:  c = f c_prev + i g,  h = o tanh(c)
# --------------------------------------------------------------------------------------------
def lstm_cell_forward_numpy(pre, c_prev):
    """pre: (B, 4H) (i, f, g, o pre-activations), c_prev: (B, H)
    -> h: (B, H), c: (B, H), act: (B, 4H) (i, f, g, o after their nonlinearities), tanh_c: (B, H)."""
    H = c_prev.shape[1]
    act = np.empty_like(pre)
    act[:, :2 * H] = _sigmoid_numpy(pre[:, :2 * H])              # i, f
    act[:, 2 * H:3 * H] = np.tanh(pre[:, 2 * H:3 * H])           # g
    act[:, 3 * H:] = _sigmoid_numpy(pre[:, 3 * H:])              # o
    i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    return o * tanh_c, c, act, tanh_c


@njit(cache=True, nogil=True)
def lstm_cell_forward_numba(pre, c_prev):
    # pre: (B, 4H), c_prev: (B, H) -> h: (B, H), c: (B, H), act: (B, 4H), tanh_c: (B, H)
    B, H = c_prev.shape
    h = np.empty_like(c_prev)
    c = np.empty_like(c_prev)
    tanh_c = np.empty_like(c_prev)
    act = np.empty_like(pre)
    e, bits = np.empty(2 * H, pre.dtype), np.empty(2 * H, np.int32)
    for b in range(B):
        _sigmoid_into(pre[b, :2 * H], act[b, :2 * H], e, bits)               # i, f
        _tanh_into(pre[b, 2 * H:3 * H], act[b, 2 * H:3 * H], e, bits)        # g
        _sigmoid_into(pre[b, 3 * H:], act[b, 3 * H:], e, bits)               # o
        for j in range(H):
            c[b, j] = act[b, H + j] * c_prev[b, j] + act[b, j] * act[b, 2 * H + j]   # f c + i g
        _tanh_into(c[b], tanh_c[b], e, bits)
        for j in range(H):
            h[b, j] = act[b, 3 * H + j] * tanh_c[b, j]                       # o tanh(c)
    return h, c, act, tanh_c


def lstm_cell_backward_numpy(dh, dc, c_prev, act, tanh_c):
    """dh, dc: (B, H) gradients reaching h and c of this step; c_prev, tanh_c: (B, H); act: (B, 4H)
    -> dpre: (B, 4H), dc_prev: (B, H).

    From h = o tanh(c):          do = dh tanh(c),  dc += dh o (1 - tanh(c)^2)
    From c = f c_prev + i g:     di = dc g,  df = dc c_prev,  dg = dc i,  dc_prev = dc f
    Through the nonlinearities:  sigmoid' = s (1 - s),  tanh' = 1 - t^2.
    """
    H = c_prev.shape[1]
    i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
    k = o * (1 - tanh_c * tanh_c)
    with np.errstate(over="ignore", invalid="ignore"):
        d = dc + dh * k                            # the total gradient reaching c
        dpre = np.concatenate([d * (g * (i * (1 - i))),                       # i
                               (d * (f * (1 - f))) * c_prev,                  # f
                               d * (i * (1 - g * g)),                         # g
                               dh * (tanh_c * (o * (1 - o)))], axis=1)        # o
        dc_prev = d * f
        if np.isfinite(d).all():
            return dpre, dc_prev
        # d past the max (upstream gradients near it) while each result may be representable:
        # those rows again with dc + dh k distributed over each product (the Numba twin's form)
        rows = ~np.isfinite(d).all(axis=1)
        dcr, dhr, kr = dc[rows], dh[rows], k[rows]
        si, sf, sg = g[rows] * (i[rows] * (1 - i[rows])), f[rows] * (1 - f[rows]), i[rows] * (1 - g[rows] * g[rows])
        dpre[rows, :H] = dcr * si + dhr * (kr * si)
        dpre[rows, H:2 * H] = (dcr * sf + dhr * (kr * sf)) * c_prev[rows]
        dpre[rows, 2 * H:3 * H] = dcr * sg + dhr * (kr * sg)
        dc_prev[rows] = dcr * f[rows] + dhr * (kr * f[rows])
    return dpre, dc_prev


@njit(cache=True, nogil=True)
def lstm_cell_backward_numba(dh, dc, c_prev, act, tanh_c):
    # dh, dc, c_prev, tanh_c: (B, H), act: (B, 4H) -> dpre: (B, 4H), dc_prev: (B, H)
    B, H = c_prev.shape
    dpre = np.empty_like(act)
    dc_prev = np.empty_like(c_prev)
    one = act.dtype.type(1.0)
    for b in range(B):
        for j in range(H):
            i, f, g, o = act[b, j], act[b, H + j], act[b, 2 * H + j], act[b, 3 * H + j]
            tc = tanh_c[b, j]
            d1, d2, cp = dc[b, j], dh[b, j], c_prev[b, j]
            k = o * (one - tc * tc)                   # dc + dh k, kept distributed
            si, sf, sg = g * (i * (one - i)), f * (one - f), i * (one - g * g)
            dpre[b, j] = d1 * si + d2 * (k * si)
            dpre[b, H + j] = (d1 * sf + d2 * (k * sf)) * cp       # |.| <= (|d1| + |d2|) / 4
            dpre[b, 2 * H + j] = d1 * sg + d2 * (k * sg)
            dpre[b, 3 * H + j] = d2 * (tc * (o * (one - o)))
            dc_prev[b, j] = d1 * f + d2 * (k * f)
    return dpre, dc_prev


# --------------------------------------------------------------------------------------------
# GRU:  n = tanh(gi_n + r gh_n),  h = (1 - z) n + z h_prev
# --------------------------------------------------------------------------------------------
def gru_cell_forward_numpy(gi, gh, h_prev):
    """gi, gh: (B, 3H) input and hidden terms (r, z, n blocks), h_prev: (B, H)
    -> h: (B, H), act: (B, 3H) (r, z, n after their nonlinearities)."""
    H = h_prev.shape[1]
    with np.errstate(over="ignore"):              # a sum past the max: +-inf, which saturates
        rz = _sigmoid_numpy(gi[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h_prev, np.concatenate([rz, n], axis=1)


@njit(cache=True, nogil=True)
def gru_cell_forward_numba(gi, gh, h_prev):
    # gi, gh: (B, 3H), h_prev: (B, H) -> h: (B, H), act: (B, 3H)
    B, H = h_prev.shape
    h = np.empty_like(h_prev)
    act = np.empty_like(gi)
    a = np.empty(2 * H, gi.dtype)
    e, bits = np.empty(2 * H, gi.dtype), np.empty(2 * H, np.int32)
    one = gi.dtype.type(1.0)
    for b in range(B):
        for j in range(2 * H):
            a[j] = gi[b, j] + gh[b, j]
        _sigmoid_into(a, act[b, :2 * H], e, bits)                            # r, z
        for j in range(H):
            a[j] = gi[b, 2 * H + j] + act[b, j] * gh[b, 2 * H + j]            # gi_n + r gh_n
        _tanh_into(a[:H], act[b, 2 * H:], e, bits)                           # n
        for j in range(H):
            z = act[b, H + j]
            h[b, j] = (one - z) * act[b, 2 * H + j] + z * h_prev[b, j]
    return h, act


def gru_cell_backward_numpy(dh, h_prev, act, gh):
    """dh: (B, H) gradient reaching h; h_prev: (B, H); act, gh: (B, 3H)
    -> dgi: (B, 3H), dgh: (B, 3H), dh_prev: (B, H) (the direct part z * dh only; the caller adds
    dgh @ W_hh).

    From h = (1 - z) n + z h_prev:   dn = dh (1 - z),  dz = dh (h_prev - n),  dh_prev = dh z
    From n = tanh(a), a = gi_n + r gh_n:   da = dn (1 - n^2);  dgi_n = da,  dgh_n = da r,  dr = da gh_n
    Through r, z = sigmoid(gi + gh):   d(gi_r) = d(gh_r) = dr r (1 - r), same for z.
    """
    H = h_prev.shape[1]
    r, z, n = act[:, :H], act[:, H:2 * H], act[:, 2 * H:]
    da = dh * ((1 - z) * (1 - n * n))
    with np.errstate(over="ignore"):              # past the max only where the result is
        dr = (da * (r * (1 - r))) * gh[:, 2 * H:]
        dz = (dh * (z * (1 - z))) * (h_prev - n)
    dgi = np.concatenate([dr, dz, da], axis=1)
    dgh = np.concatenate([dr, dz, da * r], axis=1)
    return dgi, dgh, dh * z


@njit(cache=True, nogil=True)
def gru_cell_backward_numba(dh, h_prev, act, gh):
    # dh, h_prev: (B, H), act, gh: (B, 3H) -> dgi: (B, 3H), dgh: (B, 3H), dh_prev: (B, H)
    B, H = h_prev.shape
    dgi = np.empty_like(act)
    dgh = np.empty_like(act)
    dh_prev = np.empty_like(h_prev)
    one = act.dtype.type(1.0)
    for b in range(B):
        for j in range(H):
            r, z, n = act[b, j], act[b, H + j], act[b, 2 * H + j]
            d = dh[b, j]
            da = d * ((one - z) * (one - n * n))
            dr = (da * (r * (one - r))) * gh[b, 2 * H + j]
            dz = (d * (z * (one - z))) * (h_prev[b, j] - n)
            dgi[b, j], dgi[b, H + j], dgi[b, 2 * H + j] = dr, dz, da
            dgh[b, j], dgh[b, H + j], dgh[b, 2 * H + j] = dr, dz, da * r
            dh_prev[b, j] = d * z
    return dgi, dgh, dh_prev


rnn_cell_forward = dispatch(rnn_cell_forward_numba, rnn_cell_forward_numpy)
rnn_cell_backward = dispatch(rnn_cell_backward_numba, rnn_cell_backward_numpy)
lstm_cell_forward = dispatch(lstm_cell_forward_numba, lstm_cell_forward_numpy)
lstm_cell_backward = dispatch(lstm_cell_backward_numba, lstm_cell_backward_numpy)
gru_cell_forward = dispatch(gru_cell_forward_numba, gru_cell_forward_numpy)
gru_cell_backward = dispatch(gru_cell_backward_numba, gru_cell_backward_numpy)
