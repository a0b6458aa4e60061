r"""Recurrent cells: the gate arithmetic of one time step, forward and backward, fused.

Per step, the recurrence is one matmul for the recurrent term and one cell kernel here for
everything elementwise. ``sequence_forward`` / ``sequence_backward`` run the whole time loop for
a block of the batch: the NumPy twins call ``np.matmul`` and the cell twins step by step; the
Numba kernels multiply by ``W_hh`` packed once per sequence (``gemm.prepack``, our GEMM's
micro-kernel: ``np.dot`` inside Numba would need SciPy's BLAS bindings) and never return to
Python between steps, so each thread of ``split_run`` runs its sequences with the GIL released.

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
from .gemm import _gemm_prepacked
from .vmath import exp_nonpos_inplace, tanh_into


@njit(cache=True, error_model="numpy", inline="always")
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


@njit(cache=True, error_model="numpy", inline="always")
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


# ------------------------------------------------------------------------------------------------
# the whole time loop of one block of the batch: one kernel call per sequence, not per step
# ------------------------------------------------------------------------------------------------
RNN_TANH, RNN_RELU, LSTM, GRU = 0, 1, 2, 3       # mode ids (the kernels take ints)


def sequence_forward_numpy(mode, reverse, xp, h0, c0, w_t, w_packed, bias_hh, out, h_prev, c_prev,
                           act, tanh_c, gh):
    """The time loop of ``recurrent_forward`` for a block of b sequences, writing its outputs.

    xp: (T, b, G*H) input projections (the additive biases folded in); h0: (b, H); c0: (b, H)
    (LSTM, else unused); w_t: W_hh^T (H, G*H); w_packed: the same, packed by ``gemm.prepack``
    (the Numba route reads it; unused here); bias_hh: (G*H,) (GRU: added to W_hh h; else
    unused). Writes out, h_prev (T, b, H) -- h_t and h_{t-1} of step t -- and, by mode, c_prev,
    tanh_c (T, b, H) and act (T, b, G*H) (LSTM), act and gh (T, b, 3H) (GRU). Returns c_T (b, H)
    (LSTM) or None.
    """
    T = xp.shape[0]
    h, c = h0, (c0 if mode == LSTM else None)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_prev[t] = h
        rec = h @ w_t                                                    # (b, H) @ (H, G*H)
        if mode == LSTM:
            c_prev[t] = c
            h, c, act[t], tanh_c[t] = lstm_cell_forward_numpy(xp[t] + rec, c)
        elif mode == GRU:
            rec += bias_hh
            gh[t] = rec
            h, act[t] = gru_cell_forward_numpy(xp[t], rec, h)
        else:
            h = rnn_cell_forward_numpy(xp[t] + rec, mode == RNN_RELU)
        out[t] = h
    return c


@njit(cache=True, error_model="numpy", nogil=True)
def sequence_forward_numba(mode, reverse, xp, h0, c0, w_t, w_packed, bias_hh, out, h_prev, c_prev,
                           act, tanh_c, gh):
    # the same loop with each step's product on the packed W_hh^T (gemm._gemm_prepacked): no
    # Python between steps, and the GIL is released for the whole sequence
    T, b, GH = xp.shape
    H = h0.shape[1]
    h = h0.copy()                                                        # (b, H) C-contiguous
    c = c0.copy()
    rec = np.empty((b, GH), xp.dtype)
    rows_h, cols_h = np.arange(b) * H, np.arange(H)
    rows_r, cols_r = np.arange(b) * GH, np.arange(GH)
    for step in range(T):
        t = T - 1 - step if reverse else step
        h_prev[t] = h
        _gemm_prepacked(h.reshape(-1), rows_h, cols_h, w_packed, H, GH, rec.reshape(-1),
                        rows_r, cols_r, False)                           # rec = h @ W_hh^T
        if mode == LSTM:
            c_prev[t] = c
            h, c, a, tc = lstm_cell_forward_numba(xp[t] + rec, c)
            act[t] = a
            tanh_c[t] = tc
        elif mode == GRU:
            rec += bias_hh
            gh[t] = rec
            h, a = gru_cell_forward_numba(np.ascontiguousarray(xp[t]), rec, h)
            act[t] = a
        else:
            h = rnn_cell_forward_numba(xp[t] + rec, mode == RNN_RELU)
        out[t] = h
    return c


def sequence_backward_numpy(mode, reverse, dout, dh_n, dc_n, w, w_packed, h_prev, out, c_prev, act,
                            tanh_c, gh, dpre, dgh, sq):
    """Backprop through the time loop of :func:`sequence_forward_numpy` for a block of b
    sequences.

    dout: (T, b, H) gradients reaching each h_t (None: zeros); dh_n, dc_n: (b, H) those reaching
    the final states (dc_n: LSTM); w: W_hh (G*H, H) (w_packed: packed, for the Numba route); the
    forward's saved arrays as written by it. Writes dpre (T, b, G*H) -- the gradient of each
    step's pre-activation -- and, for the GRU, dgh (T, b, 3H), the gradient of W_hh h + b_hh
    (otherwise dgh is dpre); sq (T,) float64: |dL/dh_t|^2 over this block. Returns dh_0, dc_0.
    """
    T = dpre.shape[0]
    dh, dc = dh_n, (dc_n if mode == LSTM else None)
    for t in (range(T) if reverse else range(T - 1, -1, -1)):
        if dout is not None:
            dh = dh + dout[t]                                            # all that reaches h_t
        sq[t] = np.dot(dh.ravel(), dh.ravel())
        if mode == LSTM:
            dpre[t], dc = lstm_cell_backward_numpy(dh, dc, c_prev[t], act[t], tanh_c[t])
            dh = dpre[t] @ w                                             # from rec = h @ W_hh^T
        elif mode == GRU:
            dpre[t], dgh[t], dh_direct = gru_cell_backward_numpy(dh, h_prev[t], act[t], gh[t])
            dh = dh_direct + dgh[t] @ w
        else:
            dpre[t] = rnn_cell_backward_numpy(dh, out[t], mode == RNN_RELU)
            dh = dpre[t] @ w
    return dh, dc


@njit(cache=True, error_model="numpy", nogil=True)
def sequence_backward_numba(mode, reverse, dout, dh_n, dc_n, w, w_packed, h_prev, out, c_prev, act,
                            tanh_c, gh, dpre, dgh, sq):
    # dout: (T, b, H) or (0, b, H) for none; the rest as sequence_backward_numpy
    T, b, GH = dpre.shape
    H = dh_n.shape[1]
    dh = dh_n.copy()
    dc = dc_n.copy()
    d = np.empty((b, GH), dpre.dtype)
    rows_d, cols_d = np.arange(b) * GH, np.arange(GH)
    rows_h, cols_h = np.arange(b) * H, np.arange(H)
    for step in range(T):
        t = step if reverse else T - 1 - step
        if dout.shape[0] > 0:
            dh = dh + dout[t]
        s = 0.0
        for i in range(b):
            for j in range(H):
                s += float(dh[i, j]) * float(dh[i, j])
        sq[t] = s
        if mode == LSTM:
            d, dc = lstm_cell_backward_numba(dh, dc, c_prev[t], act[t], tanh_c[t])
            dpre[t] = d
            dh = np.empty((b, H), dpre.dtype)
            _gemm_prepacked(d.reshape(-1), rows_d, cols_d, w_packed, GH, H, dh.reshape(-1),
                            rows_h, cols_h, False)                       # dh = dpre_t @ W_hh
        elif mode == GRU:
            d, dg, dh = gru_cell_backward_numba(dh, h_prev[t], act[t], gh[t])
            dpre[t] = d
            dgh[t] = dg
            _gemm_prepacked(dg.reshape(-1), rows_d, cols_d, w_packed, GH, H, dh.reshape(-1),
                            rows_h, cols_h, True)                        # dh += dgh_t @ W_hh
        else:
            d = rnn_cell_backward_numba(dh, out[t], mode == RNN_RELU)
            dpre[t] = d
            dh = np.empty((b, H), dpre.dtype)
            _gemm_prepacked(d.reshape(-1), rows_d, cols_d, w_packed, GH, H, dh.reshape(-1),
                            rows_h, cols_h, False)
    return dh, dc


sequence_forward = dispatch(sequence_forward_numba, sequence_forward_numpy)
sequence_backward = dispatch(sequence_backward_numba, sequence_backward_numpy)
