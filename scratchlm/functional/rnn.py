r"""One recurrent layer in one direction over a whole sequence, and its backprop-through-time.

Forward (Elman 1990; LSTM: Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al.
2000; GRU: Cho et al. 2014 -- PyTorch's variant, with the reset gate applied after ``W_hn h``):

.. math::
    \text{RNN:}\quad h_t &= \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
        \qquad \phi \in \{\tanh, \mathrm{relu}\} \\
    \text{LSTM:}\quad (i, f, g, o) &= (\sigma, \sigma, \tanh, \sigma)(W_{ih} x_t + b_{ih}
        + W_{hh} h_{t-1} + b_{hh}),\quad c_t = f c_{t-1} + i g,\quad h_t = o \tanh c_t \\
    \text{GRU:}\quad r, z &= \sigma(W_{i\{r,z\}} x_t + b_{i\{r,z\}} + W_{h\{r,z\}} h_{t-1}
        + b_{h\{r,z\}}),\\
    n &= \tanh(W_{in} x_t + b_{in} + r (W_{hn} h_{t-1} + b_{hn})),\quad h_t = (1 - z) n + z h_{t-1}

How the work is split:

* the input projection :math:`W_{ih} x_t + b_{ih}` of every step is **one** matmul
  ``(T*B, I) @ (I, G*H)`` before the loop (the additive ``b_hh`` is folded in too, except for the
  GRU, whose ``b_hn`` sits inside ``r * (...)``);
* each step does one matmul ``h_{t-1} @ W_hh^T`` and one fused kernel for the gates
  (``scratchlm/kernels/rnn.py``);
* backward walks the steps in reverse (BPTT). Per step: the gate kernel, then
  ``dh_{t-1} = dpre_t @ W_hh``. The weight gradients are **one** matmul each after the loop:
  :math:`dW_{hh} = \sum_t dpre_t^\top h_{t-1}`, :math:`dW_{ih} = \sum_t dpre_t^\top x_t`, and
  ``dx`` likewise. It also returns the norm of the gradient reaching each :math:`h_t`.
* the sequences of a batch do not interact, so on the Numba route each thread runs the whole
  time loop for its block of the batch (``split_run``): one hand-off per sequence instead of one
  per step. ``W_hh`` is packed once per call (``prepack``) and each step's product packs only
  its ``(B/threads, H)`` rows. Every row is computed alone, so the result does not depend on the
  number of threads.

``reverse=True`` runs the same recurrence from the last step to the first (the backward half of a
bidirectional layer); outputs stay indexed by time.
"""

from typing import NamedTuple

import numpy as np

from .._checks import boolean, choice, float_array, upstream
from ..kernels import get_backend, split_run
from ..kernels import rnn as K
from ..kernels.gemm import matmul, prepack

#: gate blocks per mode: weight_ih is (GATES[mode] * hidden, input)
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
MODE_IDS = {"rnn_tanh": K.RNN_TANH, "rnn_relu": K.RNN_RELU, "lstm": K.LSTM, "gru": K.GRU}


class RecurrentCache(NamedTuple):
    """What :func:`recurrent_backward` needs (G gate blocks, H hidden units); the last four
    fields are ``None`` where the mode has no use for them."""
    x: np.ndarray                      # (T, B, I) the inputs, time first
    h_prev: np.ndarray                 # (T, B, H) h_{t-1} of step t
    out: np.ndarray                    # (T, B, H) h_t of step t
    weight_ih: np.ndarray              # (G*H, I)
    weight_hh: np.ndarray              # (G*H, H)
    has_bias: bool                     # bias_ih and bias_hh were given
    mode: str                          # 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru'
    reverse: bool                      # the steps ran from T-1 down to 0
    c_prev: np.ndarray | None = None   # (T, B, H) LSTM: c_{t-1} of step t
    act: np.ndarray | None = None      # (T, B, G*H) LSTM, GRU: the gates after their nonlinearity
    tanh_c: np.ndarray | None = None   # (T, B, H) LSTM: tanh(c_t)
    gh: np.ndarray | None = None       # (T, B, 3H) GRU: W_hh h_{t-1} + b_hh


def _check_recurrent(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mode, reverse):
    """Argument checks of :func:`recurrent_forward` (shapes, dtypes, mode); returns
    ``(x, h0, c0, reverse)``. The NaN scans of x and the states are skipped inside a model."""
    choice(mode, "mode", tuple(GATES))
    reverse = boolean(reverse, "reverse")
    x = float_array(x, "x", ndim=3)
    w_hh = float_array(weight_hh, "weight_hh", ndim=2, finite=False)
    GH, H = w_hh.shape
    if GH != GATES[mode] * H:
        raise ValueError(f"weight_hh must be ({GATES[mode]} * H, H) for mode {mode!r}, got "
                         f"{w_hh.shape}")
    w_ih = float_array(weight_ih, "weight_ih", ndim=2, finite=False)
    if w_ih.shape != (GH, x.shape[2]):
        raise ValueError(f"weight_ih must be ({GH}, {x.shape[2]}) (gates * hidden, input size of "
                         f"x {x.shape}), got {w_ih.shape}")
    for name, a in (("weight_ih", w_ih), ("weight_hh", w_hh)):
        if a.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {x.dtype}")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None:
            b = float_array(b, name, ndim=1, finite=False)
            if b.shape != (GH,) or b.dtype != x.dtype:
                raise ValueError(f"{name} must be ({GH},) {x.dtype}, got {b.shape} {b.dtype}")
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must both be given or both be None")
    states = []
    for name, st in (("h0", h0), ("c0", c0)):
        if name == "c0" and mode != "lstm":
            if st is not None:
                raise ValueError(f"c0 is the LSTM's cell state; pass None for mode {mode!r}")
            states.append(None)
            continue
        st = float_array(st, name, ndim=2)
        if st.shape != (x.shape[1], H) or st.dtype != x.dtype:
            raise ValueError(f"{name} must be ({x.shape[1]}, {H}) (batch, hidden) {x.dtype}, got "
                             f"{st.shape} {st.dtype}")
        states.append(st)
    return x, states[0], states[1], reverse


def recurrent_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mode, reverse=False):
    """Run one layer over the sequence.

    Args:
        x: ``(T, B, I)`` inputs, time first.
        h0: ``(B, H)`` initial hidden state.  c0: ``(B, H)`` initial cell state (LSTM) or None.
        weight_ih: ``(G*H, I)``.  weight_hh: ``(G*H, H)``.  bias_ih, bias_hh: ``(G*H,)`` or None.
        mode: ``'rnn_tanh'``, ``'rnn_relu'``, ``'lstm'`` or ``'gru'``.
        reverse: walk from t = T-1 down to 0.

    Every shape and dtype is checked (``_check_recurrent``): the kernels do no bounds checking.

    Returns:
        ``out`` ``(T, B, H)`` (h_t for every t), ``h_n`` ``(B, H)``, ``c_n`` ``(B, H)`` or None,
        and a :class:`RecurrentCache`.
    """
    x, h0, c0, reverse = _check_recurrent(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mode,
                                          reverse)
    T, B, I = x.shape
    GH, H = weight_hh.shape
    xp = matmul(x.reshape(T * B, I), weight_ih.T).reshape(T, B, GH)    # every step at once
    if bias_ih is not None:
        xp += bias_ih
    if bias_hh is not None and mode != "gru":
        xp += bias_hh                                                    # additive: fold it in
    dt = x.dtype
    out = np.empty((T, B, H), dt)
    h_prev = np.empty((T, B, H), dt)                                     # h_{t-1} of step t
    extra = {}
    if mode == "lstm":
        extra = dict(c_prev=np.empty((T, B, H), dt), act=np.empty((T, B, GH), dt),
                     tanh_c=np.empty((T, B, H), dt))
    elif mode == "gru":
        extra = dict(act=np.empty((T, B, GH), dt), gh=np.empty((T, B, GH), dt))
    none3 = np.zeros((0, 0, 0), dt)                                      # unused by this mode
    c_prev, act, tanh_c, gh = (extra.get(k, none3) for k in ("c_prev", "act", "tanh_c", "gh"))
    c0_ = c0 if mode == "lstm" else np.zeros((B, 0), dt)
    b_hh = bias_hh if (bias_hh is not None and mode == "gru") else np.zeros(GH, dt)
    w_t = prepack(weight_hh.T)                                           # (H, G*H), packed once
    packed = w_t.packed if w_t.packed is not None else np.zeros(0, dt)

    def rows(lo, hi):                                                    # batch rows [lo, hi)
        def part(a):
            return a[:, lo:hi] if a.size else a
        return K.sequence_forward(MODE_IDS[mode], reverse, xp[:, lo:hi], h0[lo:hi], c0_[lo:hi],
                                  weight_hh.T, packed, b_hh, out[:, lo:hi], h_prev[:, lo:hi],
                                  part(c_prev), part(act), part(tanh_c), part(gh))

    cs = split_run(rows, B)
    h = out[0 if reverse else T - 1].copy() if T else h0                 # (B, H) the last step's
    c = (np.concatenate(cs) if T else c0) if mode == "lstm" else None
    cache = RecurrentCache(x, h_prev, out, weight_ih, weight_hh, bias_ih is not None, mode,
                           reverse, **extra)
    return out, h, (c if mode == "lstm" else None), cache


def recurrent_backward(dout, dh_n, dc_n, cache: RecurrentCache):
    """Backprop through time for :func:`recurrent_forward`: one upstream gradient per output.
    Mutates none of its arguments.

    Args:
        dout: ``(T, B, H)`` gradient of the loss w.r.t. every output h_t (None: zeros).
        dh_n, dc_n: ``(B, H)`` gradients w.r.t. the final states, or None.

    Returns:
        one gradient per differentiable forward input, then the step norms: ``(dx, dh0, dc0,
        dweight_ih, dweight_hh, dbias_ih, dbias_hh, step_norms)`` -- ``dc0`` None unless LSTM,
        the bias gradients None without biases; ``step_norms`` ``(T,)`` float64 holds
        :math:`\\lVert \\partial L / \\partial h_t \\rVert` (over batch and units) of the total
        gradient reaching each h_t, indexed by time -- vanishing and exploding gradients made
        visible.
    """
    x, h_prev, out, mode = cache.x, cache.h_prev, cache.out, cache.mode
    w_ih, w_hh = cache.weight_ih, cache.weight_hh
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    if dout is not None:
        upstream(dout, out.shape, dt, name="doutput")
    dh_n = np.zeros((B, H), dt) if dh_n is None else upstream(dh_n, (B, H), dt, name="dh_n")
    if mode == "lstm":
        dc_n = np.zeros((B, H), dt) if dc_n is None else upstream(dc_n, (B, H), dt, name="dc_n")
    dpre = np.empty((T, B, GH), dt)                                      # d(input projection)
    dgh = np.empty((T, B, GH), dt) if mode == "gru" else dpre            # d(W_hh h + b_hh)
    w_packed = prepack(w_hh)                                             # (G*H, H), packed once
    packed = w_packed.packed if w_packed.packed is not None else np.zeros(0, dt)
    none3 = np.zeros((0, 0, 0), dt)
    saved = [getattr(cache, k) if getattr(cache, k) is not None else none3
             for k in ("c_prev", "act", "tanh_c", "gh")]
    dc_n_ = dc_n if mode == "lstm" else np.zeros((B, 0), dt)
    numba_route = get_backend() == "numba"

    def rows(lo, hi):                                                    # batch rows [lo, hi)
        def part(a):
            return a[:, lo:hi] if a.size else a
        sq = np.zeros(T)                                                 # (T,) this block's |dh_t|^2
        d_out = part(dout) if dout is not None else (np.zeros((0, hi - lo, H), dt) if numba_route
                                                      else None)
        dh, dc = K.sequence_backward(MODE_IDS[mode], cache.reverse, d_out, dh_n[lo:hi],
                                     dc_n_[lo:hi], w_hh, packed, h_prev[:, lo:hi], out[:, lo:hi],
                                     *(part(a) for a in saved), dpre[:, lo:hi], dgh[:, lo:hi], sq)
        return dh, dc, sq

    parts = split_run(rows, B)
    dh = np.concatenate([p[0] for p in parts])                           # (B, H) dL/dh0
    dc = np.concatenate([p[1] for p in parts]) if mode == "lstm" else None
    norms = np.sqrt(np.sum([p[2] for p in parts], axis=0))               # (T,) float64
    dpre2 = dpre.reshape(T * B, GH)                                       # (T*B, G*H)
    dgh2 = dgh.reshape(T * B, GH)
    has_bias = cache.has_bias
    dx = matmul(dpre2, w_ih).reshape(T, B, I)                            # from xp = x @ W_ih^T
    dweight_ih = matmul(dpre2.T, x.reshape(T * B, I))                    # (G*H, I)
    dweight_hh = matmul(dgh2.T, h_prev.reshape(T * B, H))                # (G*H, H)
    dbias_ih = dpre2.sum(axis=0) if has_bias else None                   # (G*H,)
    dbias_hh = dgh2.sum(axis=0) if has_bias else None
    return dx, dh, dc, dweight_ih, dweight_hh, dbias_ih, dbias_hh, norms
