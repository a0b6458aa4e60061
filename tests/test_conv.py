"""Conv1d / Conv2d and max / average pooling: gradient checks over drawn hyperparameters (both
methods), PyTorch parity, im2col == direct, the two kernel routes, max-pool ties, bad input."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import assert_close, copy_weights_to_torch, to_torch
import scratchlm
from scratchlm import functional as F, nn
from scratchlm.functional import conv as FC
from scratchlm.gradcheck import check_function, check_module
from scratchlm.kernels import conv as K

F64 = np.float64
METHODS = ("im2col", "direct")
CONV = {1: nn.Conv1d, 2: nn.Conv2d}
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")   # torch's
POOL = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d,
        ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}


def distinct(rng, shape):
    """Values 0.1 apart in random order: max-pool windows without ties or near ties."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape)


def assert_gradcheck(module, *inputs):
    report = check_module(module, *inputs)
    assert report.ok, str(report)


# ------------------------------------------------------------------------------------------------
# gradient checks over drawn hyperparameters (float64)
# ------------------------------------------------------------------------------------------------
@st.composite
def conv_setups(draw, nd):
    """(layer kwargs, input shape): groups, non-square kernels, stride, dilation, every padding
    kind, odd sizes; the input is always at least as large as the dilated kernel after padding."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1,) * nd if kind == "same" else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    pads = {"same": None, "valid": (0,) * nd,
            "int": (draw(st.integers(0, 2)),) * nd,
            "tuple": tuple(draw(st.integers(0, 2)) for _ in range(nd))}[kind]
    padding = {"same": "same", "valid": "valid", "int": pads and pads[0], "tuple": pads}[kind]
    sides = []
    for a in range(nd):
        span = dilation[a] * (kernel[a] - 1) + 1
        need = 1 if kind == "same" else max(1, span - 2 * pads[a])
        sides.append(draw(st.integers(need, need + 4)))
    kwargs = dict(in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()))
    return kwargs, (draw(st.integers(1, 2)), cin) + tuple(sides)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nd", [1, 2])
@given(data=st.data(), seed=st.integers(0, 99))
def test_conv_gradcheck(nd, method, data, seed):
    kwargs, shape = data.draw(conv_setups(nd))
    layer = CONV[nd](**kwargs, method=method, dtype=F64, rng=seed)
    assert_gradcheck(layer, np.random.default_rng(seed).standard_normal(shape))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("nd", [1, 2])
@given(data=st.data(), seed=st.integers(0, 99))
def test_pool_gradcheck(nd, kind, data, seed):
    k = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    s = None if data.draw(st.booleans()) else tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    p = tuple(data.draw(st.integers(0, kk // 2)) for kk in k)
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))) + tuple(
        data.draw(st.integers(max(1, kk - 2 * pp), kk - 2 * pp + 4)) for kk, pp in zip(k, p))
    x = distinct(np.random.default_rng(seed), shape)
    assert_gradcheck(POOL[kind, nd](k, s, p), x)


def test_functional_pairs_gradcheck_every_input():
    """check_function on the pairs: x, weight and bias are all differentiated."""
    r = np.random.default_rng(0)
    x, w, b = r.standard_normal((2, 4, 6, 5)), r.standard_normal((6, 2, 2, 3)), r.standard_normal(6)
    for method in METHODS:
        fwd = lambda x, w, b: F.conv2d_forward(x, w, b, (2, 1), 1, (1, 2), 2, method)  # noqa: E731
        check_function(fwd, F.conv2d_backward, x, w, b, raise_on_failure=True)
    x1, w1 = r.standard_normal((3, 7)), r.standard_normal((2, 3, 3))                     # unbatched
    fwd1 = lambda x, w: F.conv1d_forward(x, w, None, 1, "same", 2)                       # noqa: E731
    check_function(fwd1, lambda dy, c: F.conv1d_backward(dy, c)[:2], x1, w1, raise_on_failure=True)
    xm = distinct(r, (2, 5, 5))                                                          # unbatched
    check_function(lambda x: F.max_pool2d_forward(x, 2, 1, 1), F.max_pool2d_backward, xm,
                   raise_on_failure=True)
    check_function(lambda x: F.avg_pool1d_forward(x, 3, 2, 1), F.avg_pool1d_backward, xm[0],
                   raise_on_failure=True)


# ------------------------------------------------------------------------------------------------
# PyTorch parity (float64 to 1e-10; float32 to torch's assert_close defaults)
# ------------------------------------------------------------------------------------------------
CONV_CONFIGS = [
    (1, dict(in_channels=3, out_channels=4, kernel_size=3)),
    (1, dict(in_channels=4, out_channels=6, kernel_size=4, padding="same", dilation=3, groups=2)),
    (1, dict(in_channels=3, out_channels=3, kernel_size=5, stride=2, padding=2, groups=3)),
    (1, dict(in_channels=2, out_channels=5, kernel_size=2, padding="valid", dilation=4, bias=False)),
    (2, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)),
    (2, dict(in_channels=4, out_channels=6, kernel_size=(2, 3), padding="same", dilation=(3, 1), groups=2)),
    (2, dict(in_channels=6, out_channels=3, kernel_size=(3, 1), stride=(2, 3), padding=(1, 0), groups=3)),
    (2, dict(in_channels=2, out_channels=4, kernel_size=2, stride=2, padding="valid", dilation=2, bias=False)),
    (2, dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4)),                 # depthwise
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nd,kwargs", CONV_CONFIGS, ids=[f"conv{c[0]}d-{i}" for i, c in enumerate(CONV_CONFIGS)])
def test_conv_matches_torch(torch, nd, kwargs, method):
    r = np.random.default_rng(1)
    ours = CONV[nd](**kwargs, method=method, dtype=F64, rng=0)
    theirs = copy_weights_to_torch(torch, ours, getattr(torch.nn, f"Conv{nd}d")(**kwargs, dtype=torch.float64))
    x = r.standard_normal((3, kwargs["in_channels"]) + (9, 8)[:nd])
    y = ours(x)
    tx = to_torch(torch, x, grad=True)
    ty = theirs(tx)
    assert_close(y, ty)
    dy = r.standard_normal(y.shape)
    dx = ours.backward(dy)
    ty.backward(to_torch(torch, dy))
    assert_close(dx, tx.grad)
    tparams = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(tparams)
    for name, p in ours.named_parameters():
        assert_close(p.grad, tparams[name].grad)


@pytest.mark.parametrize("nd", [1, 2])
def test_conv_float32_and_unbatched_match_torch(torch, nd):
    r = np.random.default_rng(2)
    kw = dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", groups=2)
    for method in METHODS:
        ours = CONV[nd](**kw, method=method, rng=0)
        theirs = copy_weights_to_torch(torch, ours, getattr(torch.nn, f"Conv{nd}d")(**kw))
        for shape in [(2, 4) + (10, 7)[:nd], (4,) + (10, 7)[:nd]]:                      # batched, unbatched
            ours.zero_grad()
            theirs.zero_grad()
            x = r.standard_normal(shape).astype(np.float32)
            y = ours(x)
            tx = to_torch(torch, x, grad=True)
            ty = theirs(tx)
            assert y.dtype == np.float32 and y.shape == tuple(ty.shape)
            assert_close(y, ty)
            dy = r.standard_normal(y.shape).astype(np.float32)
            dx = ours.backward(dy)
            ty.backward(to_torch(torch, dy))
            assert dx.dtype == np.float32
            assert_close(dx, tx.grad)
            for (name, p), tp in zip(ours.named_parameters(), theirs.parameters()):
                assert p.grad.dtype == np.float32
                assert_close(p.grad, tp.grad)


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (2, 1), (3, 1), (4, 3), (5, 2), (2, 2)])
def test_same_padding_matches_torch_including_odd_totals(torch, kernel, dilation):
    """'same' pads d*(k-1) in total, total//2 at the start and the rest at the end (torch's rule)."""
    r = np.random.default_rng(3)
    x, w = r.standard_normal((2, 3, 7)), r.standard_normal((2, 3, kernel))
    for method in METHODS:
        y, _ = F.conv1d_forward(x, w, None, 1, "same", dilation, method=method)
        assert y.shape == (2, 2, 7)
        assert_close(y, torch.nn.functional.conv1d(to_torch(torch, x), to_torch(torch, w),
                                                   padding="same", dilation=dilation))
    x2, w2 = r.standard_normal((1, 2, 6, 5)), r.standard_normal((3, 2, kernel, 3))
    y2, _ = F.conv2d_forward(x2, w2, None, 1, "same", (dilation, 2))
    assert y2.shape == (1, 3, 6, 5)
    assert_close(y2, torch.nn.functional.conv2d(to_torch(torch, x2), to_torch(torch, w2),
                                                padding="same", dilation=(dilation, 2)))


POOL_CONFIGS = [(2, None, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (2, 1), (1, 1)), (1, 2, 0), (4, 3, 2)]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("k,s,p", POOL_CONFIGS)
def test_pool_matches_torch(torch, kind, nd, k, s, p):
    if nd == 1 and isinstance(k, tuple):
        k, s, p = k[0], s[0], p[0]
    r = np.random.default_rng(4)
    tf = getattr(torch.nn.functional, f"{kind}_pool{nd}d")
    for dtype in (np.float64, np.float32):
        x = r.standard_normal((2, 3) + (9, 7)[:nd]).astype(dtype)
        layer = POOL[kind, nd](k, s, p)
        y = layer(x)
        tx = to_torch(torch, x, grad=True)
        ty = tf(tx, k, s, p)
        assert y.dtype == dtype
        assert_close(y, ty)
        dy = r.standard_normal(y.shape).astype(dtype)
        dx = layer.backward(dy)
        ty.backward(to_torch(torch, dy))
        assert dx.dtype == dtype
        assert_close(dx, tx.grad)


# (kernel, stride, padding, ceil_mode, dilation (max) / count_include_pad (avg))
POOL_OPTION_CONFIGS = [(2, 2, 0, True, 1), (3, 2, 1, True, 2), (3, 3, 1, False, 2), (2, 3, 1, True, 3),
                       ((3, 2), (2, 1), (1, 1), True, (2, 1)), (4, 3, 2, True, 1)]


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("k,s,p,ceil,extra", POOL_OPTION_CONFIGS)
def test_pool_options_match_torch(torch, nd, k, s, p, ceil, extra):
    """ceil_mode, dilation and return_indices (max), count_include_pad and divisor_override (avg):
    outputs, indices and gradients equal torch's, on odd sizes where ceil_mode windows overhang."""
    if nd == 1 and isinstance(k, tuple):
        k, s, p, extra = k[0], s[0], p[0], extra[0]
    r = np.random.default_rng(12)
    tmod = torch.nn
    for dtype in (np.float64, np.float32):
        x = distinct(r, (2, 3) + (9, 10)[:nd]).astype(dtype)
        include = extra == 1 if isinstance(extra, int) else extra[0] == 1
        cases = [(POOL["max", nd](k, s, p, dilation=extra, return_indices=True, ceil_mode=ceil),
                  getattr(tmod, f"MaxPool{nd}d")(k, s, p, dilation=extra, return_indices=True,
                                                 ceil_mode=ceil)),
                 (POOL["avg", nd](k, s, p, ceil_mode=ceil, count_include_pad=include),
                  getattr(tmod, f"AvgPool{nd}d")(k, s, p, ceil_mode=ceil, count_include_pad=include))]
        if nd == 2:
            cases.append((nn.AvgPool2d(k, s, p, ceil_mode=ceil, divisor_override=5),
                          tmod.AvgPool2d(k, s, p, ceil_mode=ceil, divisor_override=5)))
        for ours, theirs in cases:
            y = ours(x)
            tx = to_torch(torch, x, grad=True)
            ty = theirs(tx)
            if isinstance(ours, nn.MaxPool1d | nn.MaxPool2d):
                (y, idx), (ty, tidx) = y, ty
                assert idx.dtype == np.int64 and idx.shape == y.shape
                np.testing.assert_array_equal(idx, tidx.numpy())
            assert y.dtype == dtype and y.shape == tuple(ty.shape)
            assert_close(y, ty)
            dy = r.standard_normal(y.shape).astype(dtype)
            ty.backward(to_torch(torch, dy))
            assert_close(ours.backward(dy), tx.grad)


def test_pool_options_gradcheck_and_refusals():
    r = np.random.default_rng(13)
    x = distinct(r, (2, 2, 7, 8))
    for layer in (nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), nn.MaxPool1d(2, 2, 1, dilation=3, ceil_mode=True),
                  nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                  nn.AvgPool2d((2, 3), 2, ceil_mode=True, divisor_override=4),
                  nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False)):
        assert_gradcheck(layer, x[:, :, 0] if isinstance(layer, nn.MaxPool1d | nn.AvgPool1d) else x)
    # a dilated window that falls wholly in the padding is refused, not filled with -inf
    with pytest.raises(ValueError, match="reads only padding"):
        nn.MaxPool1d(2, 1, 1, dilation=3)(np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="divisor_override"):
        nn.AvgPool2d(2, divisor_override=0)
    with pytest.raises(TypeError, match="ceil_mode"):
        nn.MaxPool2d(2, ceil_mode="yes")
    with pytest.raises(ValueError, match="dilation"):
        nn.MaxPool2d(2, dilation=0)


@pytest.mark.parametrize("nd", [1, 2])
def test_max_pool_ties_route_like_torch(torch, nd):
    """Plateaus of equal values: the gradient goes to the first maximum in scan order, as torch's
    CPU kernel does -- overlapping windows, padding, both kernel routes."""
    r = np.random.default_rng(5)
    x = r.integers(0, 2, (2, 2) + (6, 7)[:nd]).astype(np.float64)               # many ties
    x[0, 0] = 1.0                                                                # a whole plateau
    tf = getattr(torch.nn.functional, f"max_pool{nd}d")
    for k, s, p in [(2, 1, 0), (3, 1, 1), (3, 2, 1), (2, 2, 1)]:
        tx = to_torch(torch, x, grad=True)
        ty, tidx = tf(tx, k, s, p, return_indices=True)
        dy = r.standard_normal(tuple(ty.shape))
        ty.backward(to_torch(torch, dy))
        for backend in ("numba", "numpy"):
            with scratchlm.use_backend(backend):
                fwd = getattr(F, f"max_pool{nd}d_forward")
                y, cache = fwd(x, k, s, p)
                np.testing.assert_array_equal(cache.idx.reshape(tidx.shape), tidx.numpy())
                assert_close(y, ty)
                assert_close(getattr(F, f"max_pool{nd}d_backward")(dy, cache), tx.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_2x2_fast_path_equals_the_numpy_twin(dtype):
    """MaxPool2d(2) (2 x 2 windows, stride 2, no padding) takes a kernel of its own on the Numba
    route: the same values and argmax indices as the NumPy twin, bit for bit, on plateaus, NaN,
    +-inf, -0.0 and the largest values, on odd sizes (the last row and column left out) and with
    ceil_mode's overhanging windows (which go to the general loop)."""
    r = np.random.default_rng(8)
    info = np.finfo(dtype)
    pool = np.array([0.0, -0.0, 1.0, 1.0, -1.0, np.nan, np.inf, -np.inf, info.max, -info.max],
                    dtype)
    for H, W in [(2, 2), (6, 8), (9, 7), (28, 28)]:
        x = r.choice(pool, (5, H, W)).astype(dtype)
        for ceil in (False, True):
            Ho, Wo = ((H + 1) // 2, (W + 1) // 2) if ceil else (H // 2, W // 2)
            ours = K.max_pool2d_forward_numba(x, 2, 2, 2, 2, 0, 0, 1, 1, Ho, Wo)
            ref = K.max_pool2d_forward_numpy(x, 2, 2, 2, 2, 0, 0, 1, 1, Ho, Wo)
            np.testing.assert_array_equal(ours[1], ref[1])
            assert ours[0].tobytes() == ref[0].tobytes()


def test_default_init_names_and_shapes_are_torchs(torch):
    for ours, theirs in [(nn.Conv2d(6, 8, (3, 2), groups=2, rng=0), torch.nn.Conv2d(6, 8, (3, 2), groups=2)),
                         (nn.Conv1d(4, 5, 3, bias=False, rng=0), torch.nn.Conv1d(4, 5, 3, bias=False))]:
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for (n, p), tp in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert p.shape == tuple(tp.shape) and p.dtype == np.float32
    big = nn.Conv2d(32, 64, 5, groups=2, rng=0)                        # fan_in = 16 * 25 = 400
    bound = 1 / np.sqrt(400)
    for p in (big.weight.data, big.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    assert abs(big.weight.data.std() - bound / np.sqrt(3)) < 1e-3
    tw = torch.nn.Conv2d(32, 64, 5, groups=2).weight.detach().numpy()  # same distribution as torch's
    assert np.abs(tw).max() <= bound and abs(tw.std() - big.weight.data.std()) < 2e-3
    layer = nn.Conv1d(2, 3, 3, padding="same", dilation=2)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == ((3,), (1,), "same", (2,))
    assert nn.Conv2d(2, 3, 3, padding=1).padding == (1, 1)
    assert nn.MaxPool2d(3).stride == (3, 3)


# ------------------------------------------------------------------------------------------------
# im2col == direct, 'auto', and the two kernel routes
# ------------------------------------------------------------------------------------------------
AGREE_CONFIGS = [
    (1, (2, 4, 11), (6, 2, 3), dict(stride=2, padding=1, dilation=2, groups=2)),
    (1, (3, 3, 9), (4, 3, 4), dict(padding="same")),
    (2, (2, 4, 7, 9), (4, 4, 3, 2), dict(padding=(1, 0), dilation=(1, 2))),
    (2, (2, 6, 8, 7), (6, 2, 3, 3), dict(stride=(2, 3), padding=1, groups=3)),
    (2, (2, 3, 6, 6), (3, 1, 3, 3), dict(padding="same", groups=3)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_im2col_and_direct_agree(dtype):
    r = np.random.default_rng(6)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for nd, xs, ws, kw in AGREE_CONFIGS:
        x, w = r.standard_normal(xs).astype(dtype), r.standard_normal(ws).astype(dtype)
        b = r.standard_normal(ws[0]).astype(dtype)
        fwd, bwd = getattr(F, f"conv{nd}d_forward"), getattr(F, f"conv{nd}d_backward")
        results = []
        for method in METHODS:
            y, cache = fwd(x, w, b, method=method, **kw)
            dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
            results.append((y, *bwd(dy, cache)))
        for u, v in zip(*results):
            assert u.dtype == v.dtype == dtype
            np.testing.assert_allclose(u, v, **tol)


def test_patch_offsets_are_im2col():
    """cols[t, q] = xp.flat[taps[t] + pixels[q]] is the textbook column matrix, written out here
    loop by loop from its definition (2-D and 1-D, strides, dilations, odd sizes)."""
    r = np.random.default_rng(12)
    for N, C, Hp, Wp, kH, kW, sH, sW, dH, dW in [(2, 3, 7, 9, 3, 2, 1, 2, 2, 1), (1, 2, 5, 5, 1, 1, 1, 1, 1, 1),
                                                (3, 1, 8, 6, 2, 3, 3, 1, 1, 2)]:
        Ho, Wo = (Hp - dH * (kH - 1) - 1) // sH + 1, (Wp - dW * (kW - 1) - 1) // sW + 1
        xp = r.standard_normal((N, C, Hp, Wp))
        taps, pixels = FC._patch_offsets(C, (Hp, Wp), (kH, kW), (sH, sW), (dH, dW), (Ho, Wo))
        cols = xp.reshape(-1)[np.add.outer(taps, FC._batch(pixels, 0, N, xp[0].size))]
        expected = np.empty((C * kH * kW, N * Ho * Wo))
        for c in range(C):
            for i in range(kH):
                for j in range(kW):
                    for n in range(N):
                        for oh in range(Ho):
                            for ow in range(Wo):
                                expected[(c * kH + i) * kW + j, (n * Ho + oh) * Wo + ow] = \
                                    xp[n, c, oh * sH + i * dH, ow * sW + j * dW]
        np.testing.assert_array_equal(cols, expected)
        x1 = xp[:, :, 0].copy()                                                  # 1-D: (N, C, Wp)
        taps, pixels = FC._patch_offsets(C, (Wp,), (kW,), (sW,), (dW,), (Wo,))
        cols = x1.reshape(-1)[np.add.outer(taps, FC._batch(pixels, 0, N, x1[0].size))]
        first_row = expected.reshape(C, kH, kW, N, Ho, Wo)[:, 0, :, :, 0]        # i = 0, oh = 0
        np.testing.assert_array_equal(cols, first_row.reshape(C * kW, N * Wo))


def test_im2col_chunks_do_not_change_the_result(monkeypatch):
    """The NumPy route goes a few samples per GEMM call, the Numba route a thread's samples."""
    r = np.random.default_rng(8)
    x, w, b = r.standard_normal((5, 3, 6, 5)), r.standard_normal((4, 3, 2, 2)), r.standard_normal(4)
    dy = r.standard_normal((5, 4, 5, 4))
    whole = F.conv2d_forward(x, w, b, method="im2col")                        # the Numba route
    grads = F.conv2d_backward(dy, whole[1])
    monkeypatch.setattr(FC, "IM2COL_CHUNK", 1)                        # one sample per chunk
    with scratchlm.use_backend("numpy"):
        assert FC._chunks(0, 5, 30) == [(i, i + 1) for i in range(5)]
        y, cache = F.conv2d_forward(x, w, b, method="im2col")
        back = F.conv2d_backward(dy, cache)
    np.testing.assert_allclose(y, whole[0], rtol=1e-13, atol=1e-13)
    for u, v in zip(back, grads):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-13)


def test_auto_rule():
    assert FC.choose_method((32, 16, 3, 3), 1, (1, 1)) == "im2col"   # 3x3 16 -> 32: the GEMM wins
    assert FC.choose_method((128, 128, 5), 1, (1,)) == "im2col"      # the 1-D language-model layer
    assert FC.choose_method((8, 8, 3, 3), 1, (1, 1)) == "im2col"     # a block of 576
    assert FC.choose_method((16, 1, 3, 3), 1, (1, 1)) == "direct"    # a thin first layer: 144
    assert FC.choose_method((8, 8, 3), 1, (1,)) == "direct"          # 192
    assert FC.choose_method((32, 1, 3, 3), 32, (1, 1)) == "direct"   # depthwise: 9
    assert FC.choose_method((32, 1, 3, 3), 32, (2, 2)) == "im2col"   # strided: im2col
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 4, 6, 6))
    for groups in (1, 4):
        w = r.standard_normal((8, 4 // groups, 3, 3))
        y, cache = F.conv2d_forward(x, w, padding=1, groups=groups)
        assert cache.method == FC.choose_method(w.shape, groups, (1, 1))
        np.testing.assert_allclose(y, F.conv2d_forward(x, w, padding=1, groups=groups, method="im2col")[0],
                                   rtol=1e-12, atol=1e-12)


KERNEL_CASES = [  # (N, C, O, G, Hp, Wp, kH, kW, sH, sW, dH, dW)
    (2, 4, 6, 2, 7, 9, 3, 2, 1, 1, 1, 2),
    (2, 3, 3, 3, 8, 7, 2, 3, 2, 3, 2, 1),
    (1, 2, 4, 1, 1, 11, 1, 3, 1, 2, 1, 2),
    (3, 1, 5, 1, 6, 6, 3, 3, 1, 1, 1, 1),
]


def _assert_routes_agree(kernel, args, dtype):
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    a, b = kernel.numba(*args), kernel.numpy(*args)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert u.dtype == v.dtype, (kernel.__name__, u.dtype, v.dtype)
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_routes_agree(dtype):
    r = np.random.default_rng(10)
    for N, C, O, G, Hp, Wp, kH, kW, sH, sW, dH, dW in KERNEL_CASES:
        Ho, Wo = (Hp - dH * (kH - 1) - 1) // sH + 1, (Wp - dW * (kW - 1) - 1) // sW + 1
        xp = r.standard_normal((N, C, Hp, Wp)).astype(dtype)
        w = r.standard_normal((O, C // G, kH, kW)).astype(dtype)
        b = r.standard_normal(O).astype(dtype)
        dy = r.standard_normal((N, O, Ho, Wo)).astype(dtype)
        for kernel, args in [
                (K.conv2d_direct_forward, (xp, w, b, G, sH, sW, dH, dW, Ho, Wo)),
                (K.conv2d_direct_backward_input, (dy, w, G, Hp, Wp, sH, sW, dH, dW)),
                (K.conv2d_direct_backward_weight, (dy, xp, G, kH, kW, sH, sW, dH, dW))]:
            _assert_routes_agree(kernel, args, dtype)
        for twin in (K.conv2d_direct_forward.numba, K.conv2d_direct_forward.numpy):
            out = np.full((N + 1, O, Ho, Wo), 7.0, dtype)        # into a thread's samples of y
            twin(xp, w, b, G, sH, sW, dH, dW, Ho, Wo, out[1:])
            assert out[1:].tobytes() == twin(xp, w, b, G, sH, sW, dH, dW, Ho, Wo).tobytes()
            assert (out[0] == 7.0).all()
    planes = r.standard_normal((3, 7, 8)).astype(dtype)
    # (kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo): plain, padded, dilated, ceil_mode overhangs
    for kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo in [
            (2, 2, 2, 2, 0, 0, 1, 1, 3, 4), (3, 2, 1, 2, 1, 1, 1, 1, 7, 5), (1, 3, 1, 1, 0, 1, 1, 1, 7, 8),
            (2, 3, 2, 1, 1, 1, 2, 3, 4, 4), (2, 2, 2, 2, 0, 0, 1, 1, 4, 4), (3, 3, 2, 3, 1, 0, 1, 2, 4, 2)]:
        g = r.standard_normal((3, Ho, Wo)).astype(dtype)
        _assert_routes_agree(K.max_pool2d_forward, (planes, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo),
                             dtype)
        _, idx = K.max_pool2d_forward(planes, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo)
        _assert_routes_agree(K.max_pool2d_backward, (g, idx, 7, 8), dtype)
        for fwd, bwd in ((K.max_pool2d_forward.numba, K.max_pool2d_backward.numba),
                         (K.max_pool2d_forward.numpy, K.max_pool2d_backward.numpy)):
            y, i = np.full((4, Ho, Wo), 7.0, dtype), np.full((4, Ho, Wo), -1, np.int64)
            fwd(planes, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, y[1:], i[1:])  # a thread's planes
            want = fwd(planes, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo)
            assert y[1:].tobytes() == want[0].tobytes() and (i[1:] == want[1]).all()
            assert (y[0] == 7.0).all() and (i[0] == -1).all()
            dx = np.full((4, 7, 8), 7.0, dtype)
            bwd(g, idx, 7, 8, dx[1:])
            assert dx[1:].tobytes() == bwd(g, idx, 7, 8).tobytes() and (dx[0] == 7.0).all()
        div = r.uniform(1, 9, (Ho, Wo)).astype(dtype)
        _assert_routes_agree(K.avg_pool2d_forward, (planes, kH, kW, sH, sW, pH, pW, Ho, Wo, div), dtype)
        _assert_routes_agree(K.avg_pool2d_backward, (g, 7, 8, kH, kW, sH, sW, pH, pW, div), dtype)


def test_layers_agree_on_both_routes():
    r = np.random.default_rng(11)
    x = r.standard_normal((2, 4, 9, 8))
    results = []
    for backend in ("numba", "numpy"):
        with scratchlm.use_backend(backend):
            out = []
            for method in METHODS:
                model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2, method=method, dtype=F64, rng=0),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 4, (2, 3), stride=(1, 2), method=method,
                                                                 dtype=F64, rng=1),
                                      nn.AvgPool2d(2, padding=1), nn.Flatten())
                y = model(x)
                dx = model.backward(np.ones_like(y))
                out += [y, dx] + [p.grad for p in model.parameters()]
            results.append(out)
    for u, v in zip(*results):
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
X4 = np.ones((2, 3, 5, 5), np.float32)
X3 = np.ones((2, 3, 5), np.float32)


@pytest.mark.parametrize("call,exc,words", [
    # kernel larger than the padded input
    (lambda: nn.Conv2d(3, 2, 7)(X4), ValueError, ["kernel larger than the padded input", "(7, 7)"]),
    (lambda: nn.Conv1d(3, 2, 4, dilation=2)(X3), ValueError, ["kernel larger", "spans 7", "5"]),
    (lambda: nn.MaxPool2d(4, padding=1)(np.ones((1, 1, 1, 1))), ValueError, ["kernel larger", "(4, 4)"]),
    (lambda: nn.AvgPool1d(6)(X3), ValueError, ["kernel larger", "(6,)"]),
    # channels and groups
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, ["in_channels", "divisible by groups", "3"]),
    (lambda: nn.Conv2d(4, 3, 3, groups=2), ValueError, ["out_channels", "divisible by groups", "3"]),
    (lambda: F.conv2d_forward(X4, np.ones((3, 1, 3, 3), np.float32), groups=2),
     ValueError, ["out_channels", "groups=2"]),
    (lambda: nn.Conv2d(4, 2, 3)(X4), ValueError, ["x", "4 channels", "3 channels", "(2, 3, 5, 5)"]),
    (lambda: nn.Conv1d(2, 2, 3)(X3), ValueError, ["x", "2 channels", "got 3"]),
    (lambda: F.conv2d_forward(X4, np.ones((2, 2, 3, 3), np.float32)), ValueError, ["x", "2 channels"]),
    # wrong rank
    (lambda: nn.Conv2d(3, 2, 3)(np.ones((3, 5), np.float32)), ValueError, ["x", "3-D or 4-D", "(3, 5)"]),
    (lambda: nn.Conv2d(3, 2, 3)(X4[None]), ValueError, ["x", "3-D or 4-D", "(1, 2, 3, 5, 5)"]),
    (lambda: nn.Conv1d(3, 2, 3)(X4), ValueError, ["x", "2-D or 3-D", "(2, 3, 5, 5)"]),
    (lambda: nn.MaxPool2d(2)(np.ones(4, np.float32)), ValueError, ["x", "3-D or 4-D"]),
    (lambda: F.conv2d_forward(X4, np.ones((2, 3, 3), np.float32)), ValueError, ["weight", "4-D"]),
    # 'same' with a stride, and other bad hyperparameters
    (lambda: nn.Conv1d(3, 2, 3, stride=2, padding="same"), ValueError, ["same", "strided", "(2,)"]),
    (lambda: F.conv2d_forward(X4, np.ones((2, 3, 3, 3), np.float32), stride=(1, 2), padding="same"),
     ValueError, ["same", "stride", "(1, 2)"]),
    (lambda: nn.Conv2d(3, 2, 3, padding="full"), ValueError, ["padding", "'same' or 'valid'", "'full'"]),
    (lambda: nn.Conv2d(3, 2, 3, padding=-1), ValueError, ["padding", ">= 0"]),
    (lambda: nn.Conv2d(3, 2, 3, stride=0), ValueError, ["stride", ">= 1"]),
    (lambda: nn.Conv2d(3, 2, (3, 3, 3)), ValueError, ["kernel_size", "2 int(s)"]),
    (lambda: nn.Conv2d(3, 2, 3, dilation=1.5), TypeError, ["dilation", "int", "float"]),
    (lambda: nn.Conv2d(3, 2, 3, padding_mode="reflect"), ValueError, ["padding_mode", "'zeros'", "'reflect'"]),
    (lambda: nn.Conv2d(3, 2, 3, method="fft"), ValueError, ["method", "'fft'"]),
    (lambda: nn.Conv2d(0, 2, 3), ValueError, ["in_channels", ">= 1"]),
    (lambda: nn.MaxPool2d(2, padding=2), ValueError, ["padding", "half of kernel_size"]),
    (lambda: nn.AvgPool1d(0), ValueError, ["kernel_size", ">= 1"]),
    (lambda: nn.MaxPool1d(2, stride="2"), TypeError, ["stride", "int", "str"]),
    # NaN, dtypes
    (lambda: nn.Conv2d(3, 2, 3)(np.where(np.arange(75).reshape(1, 3, 5, 5) == 7, np.nan, 1).astype(np.float32)),
     ValueError, ["x", "finite", "nan", "(0, 0, 1, 2)"]),
    (lambda: nn.MaxPool1d(2)(np.array([[[1.0, np.inf]]])), ValueError, ["x", "finite", "inf"]),
    (lambda: nn.Conv1d(3, 2, 3, dtype=np.float64)(X3), TypeError, ["x", "float32", "float64"]),
    (lambda: nn.Conv2d(3, 2, 3)(X4.astype(np.float64)), TypeError, ["x", "float64", "float32"]),
    (lambda: nn.Conv2d(3, 2, 3)(X4.astype(np.int64)), TypeError, ["x", "float32 or float64", "int64"]),
    (lambda: F.conv1d_forward(X3, np.ones((2, 3, 3))), TypeError, ["x", "float32", "weight", "float64"]),
    (lambda: F.conv1d_forward(X3, np.ones((2, 3, 3), np.float32), np.ones(3, np.float32)), ValueError,
     ["bias", "(2,)", "(3,)"]),
])
def test_bad_input_is_named(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("make,x", [
    (lambda: nn.Conv2d(3, 2, 3, padding=1), X4),
    (lambda: nn.Conv1d(3, 2, 3, method="direct"), X3),
    (lambda: nn.MaxPool2d(2), X4),
    (lambda: nn.AvgPool1d(2), X3),
])
def test_bad_upstream_gradient(make, x):
    layer = make()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones(3, np.float32))
    y = layer(x)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape"):
        layer.backward(np.ones(y.shape[:-1] + (y.shape[-1] + 1,), np.float32))
    with pytest.raises(TypeError, match="float64"):
        layer.backward(np.ones(y.shape))
    bad = np.ones(y.shape, np.float32)
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        layer.backward(bad)
