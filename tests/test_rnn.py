"""RNN / LSTM / GRU layers and cells: gradient checks, PyTorch parity, truncated BPTT, the two
kernel routes, bad input."""

import numpy as np
import pytest

from conftest import assert_close, copy_weights_to_torch, to_torch
from scratchlm import nn
from scratchlm.gradcheck import check_function, check_module
from scratchlm.kernels import rnn as K
from scratchlm.kernels import use_backend

F64 = np.float64
LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


def _layer(kind, I=3, H=4, **kw):
    return LAYERS[kind](I, H, dtype=F64, rng=0, **kw)


class _WithState(nn.Module):
    """Gradient-checks the initial state too: forward(x, h0[, c0]) -> outputs; backward returns
    (dx, dh0[, dc0]) read from the layer's ``dhx``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h0, c0=None):
        return self.layer(x, (h0, c0) if c0 is not None else h0)

    def backward(self, *douts):
        dx = self.layer.backward(*douts)
        dhx = self.layer.dhx
        return (dx, *dhx) if isinstance(dhx, tuple) else (dx, dhx)


# ------------------------------------------------------------------------------------------------
# gradient checks (float64)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True),
                                    dict(batch_first=True, num_layers=2)],
                         ids=["plain", "2-layer-bidirectional", "batch_first"])
def test_layer_gradcheck(kind, config):
    r = np.random.default_rng(1)
    layer = _layer(kind, **config)
    x = r.standard_normal((2, 5, 3) if config.get("batch_first") else (5, 2, 3))
    check_module(layer, x, raise_on_failure=True)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_layer_gradcheck_with_initial_state_and_final_state_gradients(kind):
    r = np.random.default_rng(2)
    layer = _layer(kind, num_layers=2, bidirectional=True)
    x = r.standard_normal((4, 2, 3))
    states = [r.standard_normal((4, 2, 4)) for _ in range(2 if kind == "lstm" else 1)]
    # every output (output, h_n[, c_n]) gets a random upstream gradient: dh_n / dc_n are checked
    check_module(_WithState(layer), x, *states, raise_on_failure=True, properties=False)


def test_relu_rnn_and_no_bias_gradcheck():
    r = np.random.default_rng(3)
    check_module(nn.RNN(3, 4, nonlinearity="relu", dtype=F64, rng=0), r.standard_normal((5, 2, 3)),
                 raise_on_failure=True)
    check_module(nn.LSTM(3, 4, bias=False, dtype=F64, rng=0), r.standard_normal((5, 2, 3)),
                 raise_on_failure=True)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_gradcheck(kind):
    r = np.random.default_rng(4)
    cell = CELLS[kind](3, 4, dtype=F64, rng=0)
    x = r.standard_normal((2, 3))
    check_module(cell, x, raise_on_failure=True)
    h = r.standard_normal((2, 4))
    state = (h, r.standard_normal((2, 4))) if kind == "lstm" else h

    def fwd(x, h, *c):
        out = cell(x, (h, c[0]) if c else h)
        return out, None

    def bwd(dout, _):
        dx = cell.backward(*dout) if isinstance(dout, tuple) else cell.backward(dout)
        return (dx, *cell.dhx) if kind == "lstm" else (dx, cell.dhx)

    args = (x, *state) if kind == "lstm" else (x, state)
    assert check_function(fwd, bwd, *args).ok


# ------------------------------------------------------------------------------------------------
# PyTorch parity (float64): outputs, final states, input/state/parameter gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True),
                                    dict(num_layers=3)])
def test_layer_matches_torch(torch, kind, config):
    r = np.random.default_rng(5)
    ours = _layer(kind, I=3, H=5, **config)
    tcls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    theirs = copy_weights_to_torch(torch, ours, tcls(3, 5, dtype=torch.float64, **config))
    L = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    B, T = 2, 6
    x = r.standard_normal((B, T, 3) if config.get("batch_first") else (T, B, 3))
    h0 = r.standard_normal((L, B, 5))
    c0 = r.standard_normal((L, B, 5))
    hx = (h0, c0) if kind == "lstm" else h0
    out, state = ours(x, hx)
    tx = to_torch(torch, x, grad=True)
    th0, tc0 = to_torch(torch, h0, grad=True), to_torch(torch, c0, grad=True)
    tout, tstate = theirs(tx, (th0, tc0) if kind == "lstm" else th0)
    assert_close(out, tout)
    douts = [r.standard_normal(out.shape), r.standard_normal(h0.shape), r.standard_normal(c0.shape)]
    if kind == "lstm":
        assert_close(state[0], tstate[0])
        assert_close(state[1], tstate[1])
        dx = ours.backward(*douts)
        torch.autograd.backward([tout, *tstate], [to_torch(torch, d) for d in douts])
        assert_close(ours.dhx[0], th0.grad)
        assert_close(ours.dhx[1], tc0.grad)
    else:
        assert_close(state, tstate)
        dx = ours.backward(douts[0], douts[1])
        torch.autograd.backward([tout, tstate], [to_torch(torch, d) for d in douts[:2]])
        assert_close(ours.dhx, th0.grad)
    assert_close(dx, tx.grad)
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, tparams[name].grad)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_matches_torch(torch, kind):
    r = np.random.default_rng(6)
    ours = CELLS[kind](3, 4, dtype=F64, rng=0)
    tcls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind]
    theirs = copy_weights_to_torch(torch, ours, tcls(3, 4, dtype=torch.float64))
    x, h, c = r.standard_normal((2, 3)), r.standard_normal((2, 4)), r.standard_normal((2, 4))
    tx, th, tc = (to_torch(torch, a, grad=True) for a in (x, h, c))
    dh, dc = r.standard_normal((2, 4)), r.standard_normal((2, 4))
    if kind == "lstm":
        h1, c1 = ours(x, (h, c))
        th1, tc1 = theirs(tx, (th, tc))
        assert_close(h1, th1)
        assert_close(c1, tc1)
        dx = ours.backward(dh, dc)
        torch.autograd.backward([th1, tc1], [to_torch(torch, dh), to_torch(torch, dc)])
        assert_close(ours.dhx[1], tc.grad)
        assert_close(ours.dhx[0], th.grad)
    else:
        h1 = ours(x, h)
        th1 = theirs(tx, th)
        assert_close(h1, th1)
        dx = ours.backward(dh)
        th1.backward(to_torch(torch, dh))
        assert_close(ours.dhx, th.grad)
    assert_close(dx, tx.grad)
    for name, p in ours.named_parameters():
        assert_close(p.grad, dict(theirs.named_parameters())[name].grad)


def test_default_init_and_names_are_torchs(torch):
    ours = nn.LSTM(3, 4, num_layers=2, bidirectional=True, rng=0)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (n, p), (tn, tp) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert p.shape == tuple(tp.shape) and p.dtype == np.float32
        assert np.abs(p).max() <= 0.5 + 1e-7                                 # U(-1/sqrt(4), 1/sqrt(4))
    assert list(nn.GRUCell(3, 4).state_dict()) == list(torch.nn.GRUCell(3, 4).state_dict())


def test_unbatched_input_and_float32_stay_float32():
    r = np.random.default_rng(7)
    for kind in LAYERS:
        layer = LAYERS[kind](3, 4, rng=0)
        x = r.standard_normal((5, 3)).astype(np.float32)                    # (T, I): unbatched
        out, state = layer(x)
        assert out.shape == (5, 4) and out.dtype == np.float32
        h = state[0] if kind == "lstm" else state
        assert h.shape == (1, 4)
        dx = layer.backward(np.ones_like(out))
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert all(p.grad.dtype == np.float32 for p in layer.parameters())


# ------------------------------------------------------------------------------------------------
# truncated BPTT, step gradient norms, the two routes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_carried_state_equals_one_long_sequence(kind):
    r = np.random.default_rng(8)
    layer = _layer(kind, num_layers=2)
    x = r.standard_normal((12, 2, 3))
    full, _ = layer(x)
    state, chunks = None, []
    for part in np.split(x, 3):
        out, state = layer(part, state)                     # carry the state, never backprop into it
        chunks.append(out)
        layer.backward(np.ones_like(out))                   # stops at the start of the chunk
    np.testing.assert_allclose(np.concatenate(chunks), full, rtol=1e-13, atol=1e-14)


def test_step_grad_norms_show_the_gradient_reaching_each_step():
    r = np.random.default_rng(9)
    layer = nn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=F64, rng=0)
    out, _ = layer(r.standard_normal((7, 2, 3)))
    d = np.zeros_like(out)
    d[-1] = 1.0                                              # loss on the last step only
    layer.backward(d)
    norms = layer.step_grad_norms
    assert norms.shape == (4, 7)
    fwd_top, rev_top = norms[2], norms[3]                    # layer 1, both directions
    assert fwd_top[-1] == pytest.approx(np.sqrt(8.0))        # the ones of dout[-1]: B * H = 8
    assert np.all(fwd_top[:-1] > 0) and fwd_top[0] < fwd_top[-1]     # flows back, shrinking
    assert rev_top[-1] == pytest.approx(np.sqrt(8.0))        # the reverse direction starts at t = T-1
    assert np.all(rev_top[:-1] == 0)                         # ... so nothing flows to earlier steps
    assert np.all(norms[:2] > 0)                             # layer 0 gets gradient everywhere


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_routes_agree(dtype):
    r = np.random.default_rng(10)
    B, H = 3, 5
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=3e-5, atol=3e-6)
    pre4, c = (r.standard_normal((B, 4 * H)) * 3).astype(dtype), r.standard_normal((B, H)).astype(dtype)
    gi, gh = (r.standard_normal((B, 3 * H)) * 3).astype(dtype), r.standard_normal((B, 3 * H)).astype(dtype)
    dh, dc = r.standard_normal((B, H)).astype(dtype), r.standard_normal((B, H)).astype(dtype)
    pre1 = (r.standard_normal((B, H)) * 3).astype(dtype)
    cases = [(K.lstm_cell_forward, (pre4, c)), (K.gru_cell_forward, (gi, gh, c)),
             (K.rnn_cell_forward, (pre1, False)), (K.rnn_cell_forward, (pre1, True))]
    h, c1, act, tanh_c = K.lstm_cell_forward(pre4, c)
    hg, actg = K.gru_cell_forward(gi, gh, c)
    cases += [(K.lstm_cell_backward, (dh, dc, c, act, tanh_c)), (K.gru_cell_backward, (dh, c, actg, gh)),
              (K.rnn_cell_backward, (dh, np.tanh(pre1), False)), (K.rnn_cell_backward, (dh, pre1, True))]
    for kernel, args in cases:
        a, b = kernel.numba(*args), kernel.numpy(*args)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert u.dtype == v.dtype == dtype
            np.testing.assert_allclose(u, v, **tol)
    # and a whole layer, forward and backward, on both routes
    x = r.standard_normal((6, 2, 3)).astype(dtype)
    results = []
    for route in ("numba", "numpy"):
        with use_backend(route):
            layer = nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=dtype, rng=0)
            out, hn = layer(x)
            dx = layer.backward(np.ones_like(out), np.ones_like(hn))
            results.append((out, hn, dx, *[p.grad for p in layer.parameters()]))
    for u, v in zip(*results):
        np.testing.assert_allclose(u, v, **tol)


def test_gates_saturate_without_overflow():
    for dtype in (np.float32, np.float64):
        pre = np.array([[1e4, -1e4, 1e4, -1e4] * 2], dtype)                   # (1, 4H) with H = 2
        h, c, act, tanh_c = K.lstm_cell_forward(pre, np.zeros((1, 2), dtype))
        assert np.isfinite(h).all() and np.isfinite(c).all()
        np.testing.assert_allclose(act, np.round(act), atol=1e-30)         # saturated at -1, 0, 1


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors():
    lstm = nn.LSTM(3, 4, num_layers=2, rng=0)
    with pytest.raises(ValueError, match="input_size=3"):
        lstm(np.zeros((5, 2, 7), np.float32))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        lstm(np.zeros((5, 2, 3), np.float32), (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(ValueError, match="at least one step"):
        lstm(np.zeros((0, 2, 3), np.float32))
    with pytest.raises(ValueError, match="must be 2-D or 3-D"):
        lstm(np.zeros((5, 2, 3, 1), np.float32))
    with pytest.raises(TypeError, match="tuple"):
        lstm(np.zeros((5, 2, 3), np.float32), np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        lstm(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="finite"):
        nn.GRU(3, 4)(np.full((5, 2, 3), np.nan, np.float32))
    gru = nn.GRU(3, 4, rng=0)
    out, h = gru(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="doutput must have"):
        gru.backward(np.zeros((4, 2, 4), np.float32))
    with pytest.raises(TypeError, match="dc_n is only for the LSTM"):
        gru.backward(np.zeros_like(out), None, np.zeros_like(h))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.RNN(3, 4).backward(np.zeros((1, 1, 4), np.float32))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 4\)"):
        nn.GRUCell(3, 4)(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32))
