r"""``RNN``, ``LSTM``, ``GRU`` and the cells ``RNNCell``, ``LSTMCell``, ``GRUCell``: torch.nn's
arguments, return values, parameter names, shapes, gate order and initialisation.

The recurrences and their backprop-through-time are in ``scratchlm/functional/rnn.py`` (one layer,
one direction); these modules stack layers and directions the way PyTorch does:

* parameters ``weight_ih_l{k}`` ``(G*H, in)``, ``weight_hh_l{k}`` ``(G*H, H)``, ``bias_ih_l{k}``,
  ``bias_hh_l{k}`` (``G`` = 1, 4 (i, f, g, o) or 3 (r, z, n)), then the same with ``_reverse``
  for the backward direction; all drawn from :math:`U(-1/\sqrt H, 1/\sqrt H)`;
* layer ``k > 0`` reads the concatenated outputs of layer ``k - 1`` (``D*H`` wide), with dropout
  between layers (not after the last) in training;
* ``h_n`` is ``(num_layers * D, B, H)`` ordered ``l0, l0_reverse, l1, ...``.

``backward(doutput, dh_n=None, dc_n=None)`` returns the input gradient and leaves

* ``self.dhx`` -- the gradient of the initial state: ``dh0`` ``(L*D, B, H)``, or ``(dh0, dc0)``
  for the LSTM (zeros' gradient when no state was passed);
* ``self.step_grad_norms`` -- ``(L*D, T)``: :math:`\lVert\partial L/\partial h_t\rVert` for every
  layer, direction and time step.

Truncated BPTT needs nothing special: pass the last batch's ``h_n`` (and ``c_n``) as the next
batch's ``hx``. The backward stops at the start of the batch; ``dhx`` is simply not used.
"""

import math
import warnings

import numpy as np

from .. import functional as F
from .._checks import (boolean, choice, float_array, make_rng, positive_int, probability,
                       resolve_dtype, same_dtype, upstream)
from ..functional.rnn import GATES
from .module import Module, Parameter


def _uniform(rng, shape, bound, dtype):
    return Parameter(rng.uniform(-bound, bound, shape).astype(dtype))


class RNNBase(Module):
    """Shared by ``RNN``, ``LSTM`` and ``GRU`` (``mode``: 'rnn_tanh', 'rnn_relu', 'lstm', 'gru')."""

    differentiable_inputs = (0,)      # backward returns dx; the initial state's gradient is self.dhx

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, rng=None):
        super().__init__()
        self.mode = mode
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.bias = boolean(bias, "bias")
        self.batch_first = boolean(batch_first, "batch_first")
        self.dropout = probability(dropout, "dropout", allow_one=False)
        if self.dropout > 0 and self.num_layers == 1:      # as torch: said, not silently ignored
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={self.dropout} and num_layers={self.num_layers}",
                          UserWarning, stacklevel=3)
        self.bidirectional = boolean(bidirectional, "bidirectional")
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        self.rng = rng                                       # draws the between-layer dropout
        G, H, D = GATES[mode], self.hidden_size, self.num_directions
        bound = 1.0 / math.sqrt(H)
        for k in range(self.num_layers):
            in_k = self.input_size if k == 0 else D * H
            for suffix in self._suffixes:
                setattr(self, f"weight_ih_l{k}{suffix}", _uniform(rng, (G * H, in_k), bound, self.dtype))
                setattr(self, f"weight_hh_l{k}{suffix}", _uniform(rng, (G * H, H), bound, self.dtype))
                if self.bias:
                    setattr(self, f"bias_ih_l{k}{suffix}", _uniform(rng, (G * H,), bound, self.dtype))
                    setattr(self, f"bias_hh_l{k}{suffix}", _uniform(rng, (G * H,), bound, self.dtype))
        self.dhx = None
        self.step_grad_norms = None

    num_directions = property(lambda self: 2 if self.bidirectional else 1)
    _suffixes = property(lambda self: ("", "_reverse")[:self.num_directions])

    def _weights(self, k, suffix):
        p = lambda n: getattr(self, f"{n}_l{k}{suffix}", None)             # noqa: E731
        b_ih, b_hh = p("bias_ih"), p("bias_hh")
        return (p("weight_ih").data, p("weight_hh").data, None if b_ih is None else b_ih.data,
                None if b_hh is None else b_hh.data)

    def _params(self, k, suffix):
        return [getattr(self, f"{n}_l{k}{suffix}", None)
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    # -- input checks --------------------------------------------------------------------------
    def _check_input(self, x):
        x = float_array(x, "input", ndim=(2, 3), allow_empty=True)
        same_dtype(x, "input", self.dtype, type(self).__name__)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have last dimension input_size={self.input_size}, "
                             f"got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"input must hold at least one step and one sequence, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None]                                              # (T, I) -> (T, 1, I)
        elif self.batch_first:
            x = x.transpose(1, 0, 2)                                    # (B, T, I) -> (T, B, I)
        return np.ascontiguousarray(x), unbatched

    def _check_state(self, s, name, B, unbatched):
        want = (self.num_layers * self.num_directions, self.hidden_size)
        want = want if unbatched else (want[0], B, want[1])
        if s is None:
            return np.zeros((want[0], B, self.hidden_size), self.dtype)
        s = float_array(s, name)
        same_dtype(s, name, self.dtype, type(self).__name__)
        if s.shape != want:
            raise ValueError(f"{name} must have shape {want} (num_layers * num_directions, "
                             f"{'' if unbatched else 'batch, '}hidden_size), got {s.shape}")
        return s[:, None] if unbatched else s

    # -- forward / backward --------------------------------------------------------------------
    def forward(self, input, hx=None):
        x, unbatched = self._check_input(input)
        T, B, _ = x.shape
        lstm = self.mode == "lstm"
        if lstm:
            if hx is None:
                hx = (None, None)
            if not (isinstance(hx, tuple) and len(hx) == 2):
                raise TypeError("LSTM hx must be a tuple (h_0, c_0)")
            h0 = self._check_state(hx[0], "h_0", B, unbatched)
            c0 = self._check_state(hx[1], "c_0", B, unbatched)
        else:
            h0 = self._check_state(hx, "hx", B, unbatched)
            c0 = None
        caches, masks, h_n, c_n = [], [], [], []
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes):
                idx = k * self.num_directions + d
                out, h, c, cache = F.recurrent_forward(
                    layer_in, h0[idx], None if c0 is None else c0[idx], *self._weights(k, suffix),
                    self.mode, reverse=d == 1)
                outs.append(out)
                caches.append(cache)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)   # (T, B, D*H)
            mask = None
            if k < self.num_layers - 1 and self.training and self.dropout > 0:
                layer_in, drop = F.dropout_forward(layer_in, self.dropout, True, self.rng)
                mask = drop.mask                                        # (T, B, D*H)
            masks.append(mask)
        self._cache = (caches, masks, T, B, unbatched, x.shape)
        output = layer_in
        h_n = np.stack(h_n)                                             # (L*D, B, H)
        c_n = np.stack(c_n) if lstm else None
        if unbatched:
            output, h_n = output[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if lstm else None
        elif self.batch_first:
            output = output.transpose(1, 0, 2)                          # (T, B, .) -> (B, T, .)
        return (output, (h_n, c_n)) if lstm else (output, h_n)

    def backward(self, doutput, dh_n=None, dc_n=None):
        """Backprop through time: one upstream gradient per output of :meth:`forward`
        (``doutput`` shaped like ``output``; ``dh_n``, ``dc_n`` like ``h_n``, ``c_n``; any may be
        ``None``). Adds every parameter's gradient to its ``.grad`` and returns ``dinput``,
        shaped like ``input``.

        torch's interface has no place for two more results, so each call sets them as
        attributes (``None`` before the first backward):

        * ``self.dhx`` -- the gradient of the initial state ``hx``: ``dh0`` shaped like ``h_0``,
          ``(num_layers * D, B, H)`` (``(num_layers * D, H)`` unbatched), or ``(dh0, dc0)`` for
          the LSTM; the gradient of the zeros used when no state was passed;
        * ``self.step_grad_norms`` -- float64 ``(num_layers * D, T)``: for each layer and
          direction (``l0, l0_reverse, l1, ...``) and each time step, the norm (over batch and
          units) of the total gradient reaching :math:`h_t` (from
          :func:`scratchlm.functional.recurrent_backward`).
        """
        caches, masks, T, B, unbatched, x_shape = self._saved()
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        out_shape = (T, D * H) if unbatched else ((B, T, D * H) if self.batch_first else (T, B, D * H))
        if doutput is None:
            d = np.zeros((T, B, D * H), self.dtype)
        else:
            d = upstream(doutput, out_shape, self.dtype, name="doutput")
            d = d[:, None] if unbatched else (d.transpose(1, 0, 2) if self.batch_first else d)
        state_shape = (L * D, H) if unbatched else (L * D, B, H)
        dh_n = None if dh_n is None else upstream(dh_n, state_shape, self.dtype, name="dh_n")
        dc_n = None if dc_n is None else upstream(dc_n, state_shape, self.dtype, name="dc_n")
        if dc_n is not None and self.mode != "lstm":
            raise TypeError(f"dc_n is only for the LSTM, not {type(self).__name__}")
        if unbatched:
            dh_n = None if dh_n is None else dh_n[:, None]
            dc_n = None if dc_n is None else dc_n[:, None]
        dh0 = np.zeros((L * D, B, H), self.dtype)
        dc0 = np.zeros((L * D, B, H), self.dtype) if self.mode == "lstm" else None
        norms = np.zeros((L * D, T))
        for k in reversed(range(L)):
            if masks[k] is not None:
                d = d * masks[k]                                        # through the dropout
            dx = None
            for dd, suffix in enumerate(self._suffixes):
                idx = k * D + dd
                gx, gh0, gc0, *gparams, step_norms = F.recurrent_backward(
                    np.ascontiguousarray(d[..., dd * H:(dd + 1) * H]),
                    None if dh_n is None else dh_n[idx], None if dc_n is None else dc_n[idx],
                    caches[idx])
                norms[idx] = step_norms                                  # (T,)
                for p, grad in zip(self._params(k, suffix), gparams):
                    if p is not None and p.requires_grad:
                        p.grad += grad
                dh0[idx] = gh0
                if dc0 is not None:
                    dc0[idx] = gc0
                dx = gx if dx is None else dx + gx
            d = dx                                                       # (T, B, in_k)
        if unbatched:
            d, dh0 = d[:, 0], dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        elif self.batch_first:
            d = d.transpose(1, 0, 2)
        self.dhx = (dh0, dc0) if self.mode == "lstm" else dh0
        self.step_grad_norms = norms
        return d

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.mode == "rnn_relu":
            s += ", nonlinearity='relu'"
        return s + (", batch_first=True" if self.batch_first else "") + \
            (f", dropout={self.dropout}" if self.dropout else "") + \
            (", bidirectional=True" if self.bidirectional else "")


class RNN(RNNBase):
    r"""Elman RNN, :math:`h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`
    (Elman, 1990). ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, rng=None)``;
    ``output, h_n = rnn(input, hx=None)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, rng=None):
        choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype, rng)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    r"""Long short-term memory (Hochreiter & Schmidhuber, 1997), gates i, f, g, o:
    :math:`c_t = f c_{t-1} + i g`, :math:`h_t = o \tanh c_t`. ``LSTM(input_size, hidden_size,
    num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0)``
    (``proj_size`` must be 0: projections are not implemented);
    ``output, (h_n, c_n) = lstm(input, (h_0, c_0))``; ``backward(doutput, dh_n=None, dc_n=None)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32, rng=None):
        if positive_int(proj_size, "proj_size", minimum=0):    # torch's positional slot
            raise ValueError(f"proj_size > 0 (LSTM with projections) is not implemented; pass "
                             f"proj_size=0, got {proj_size}")
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, rng)


class GRU(RNNBase):
    r"""Gated recurrent unit (Cho et al., 2014), gates r, z, n as PyTorch:
    :math:`n = \tanh(W_{in} x + b_{in} + r (W_{hn} h + b_{hn}))`, :math:`h' = (1-z) n + z h`.
    Arguments and return values as :class:`RNN` (no ``nonlinearity``)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, rng=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, rng)


# ------------------------------------------------------------------------------------------------
# cells: one time step
# ------------------------------------------------------------------------------------------------
class _CellBase(Module):
    """One step of the recurrence: ``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``,
    ``bias_ih``, ``bias_hh``. Input ``(B, I)`` or ``(I,)``; the state defaults to zeros.
    ``backward`` returns ``dx`` and leaves the state's gradient in ``self.dhx``."""

    differentiable_inputs = (0,)

    def __init__(self, mode, input_size, hidden_size, bias, dtype, rng):
        super().__init__()
        self.mode = mode
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        G, H = GATES[mode], self.hidden_size
        bound = 1.0 / math.sqrt(H)
        self.weight_ih = _uniform(rng, (G * H, self.input_size), bound, self.dtype)
        self.weight_hh = _uniform(rng, (G * H, H), bound, self.dtype)
        self.bias_ih = _uniform(rng, (G * H,), bound, self.dtype) if boolean(bias, "bias") else None
        self.bias_hh = _uniform(rng, (G * H,), bound, self.dtype) if bias else None
        self.dhx = None

    def _state(self, s, name, B, unbatched):
        if s is None:
            return np.zeros((1, B, self.hidden_size), self.dtype)
        s = float_array(s, name)
        same_dtype(s, name, self.dtype, type(self).__name__)
        want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        if s.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {s.shape}")
        return s.reshape(1, B, self.hidden_size)

    def _run(self, input, h, c):
        x = float_array(input, "input", ndim=(1, 2))
        same_dtype(x, "input", self.dtype, type(self).__name__)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have last dimension input_size={self.input_size}, "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 1
        B = 1 if unbatched else x.shape[0]
        h0 = self._state(h, "hx", B, unbatched)
        c0 = self._state(c, "cx", B, unbatched) if self.mode == "lstm" else None
        b = lambda p: None if p is None else p.data                   # noqa: E731
        out, h1, c1, cache = F.recurrent_forward(
            x.reshape(1, B, self.input_size), h0[0], None if c0 is None else c0[0],
            self.weight_ih.data, self.weight_hh.data, b(self.bias_ih), b(self.bias_hh), self.mode)
        self._cache = (cache, unbatched, B)
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        return h1.reshape(shape), (None if c1 is None else c1.reshape(shape))

    def _backward(self, dh, dc):
        """Backward of one step: adds the parameter gradients to ``.grad`` and returns ``dx``
        shaped like the input. Sets ``self.dhx`` (torch's interface has no place for it): the
        gradient of the state passed to the forward, ``dh`` shaped like ``hx`` (``(B, H)``, or
        ``(H,)`` unbatched), or ``(dh, dc)`` for the LSTM -- the zeros' gradient when no state
        was passed."""
        cache, unbatched, B = self._saved()
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        dh = None if dh is None else upstream(dh, shape, self.dtype, name="dh").reshape(B, -1)
        dc = None if dc is None else upstream(dc, shape, self.dtype, name="dc").reshape(B, -1)
        dx, dh0, dc0, *gparams, _ = F.recurrent_backward(None, dh, dc, cache)
        for p, grad in zip((self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh), gparams):
            if p is not None and p.requires_grad:
                p.grad += grad
        dh0 = dh0.reshape(shape)
        self.dhx = (dh0, dc0.reshape(shape)) if self.mode == "lstm" else dh0
        return dx.reshape((self.input_size,) if unbatched else (B, self.input_size))


class RNNCell(_CellBase):
    """``RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh')``: ``h' = cell(x, h)``."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=np.float32,
                 rng=None):
        choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, dtype, rng)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        return self._run(input, hx, None)[0]

    def backward(self, dh):
        """``dh`` like ``h'`` -> ``dx``; sets ``self.dhx`` (see :meth:`_CellBase._backward`)."""
        return self._backward(dh, None)


class LSTMCell(_CellBase):
    """``LSTMCell(input_size, hidden_size, bias=True)``: ``h', c' = cell(x, (h, c))``;
    ``backward(dh, dc=None)``."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, rng=None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, rng)

    def forward(self, input, hx=None):
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError("LSTMCell hx must be a tuple (h, c)")
        h, c = (None, None) if hx is None else hx
        return self._run(input, h, c)

    def backward(self, dh, dc=None):
        """``dh``, ``dc`` like ``h'``, ``c'`` -> ``dx``; sets ``self.dhx = (dh, dc)`` (see
        :meth:`_CellBase._backward`)."""
        return self._backward(dh, dc)


class GRUCell(_CellBase):
    """``GRUCell(input_size, hidden_size, bias=True)``: ``h' = cell(x, h)``."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, rng=None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, rng)

    def forward(self, input, hx=None):
        return self._run(input, hx, None)[0]

    def backward(self, dh):
        """``dh`` like ``h'`` -> ``dx``; sets ``self.dhx`` (see :meth:`_CellBase._backward`)."""
        return self._backward(dh, None)
