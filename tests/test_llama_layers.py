"""The Llama layers: RMSNorm, SiLU / SwiGLU, rotary embeddings, grouped-query attention --
gradient checks, equality with PyTorch, and the Numba kernels against their NumPy twins over the
whole floating-point range."""

import math

import numpy as np
import pytest

import scratchlm
from conftest import assert_close, to_torch
from scratchlm import functional as F, nn
from scratchlm.gradcheck import check_function, check_module
from scratchlm.kernels import rmsnorm as KR, rope as KP, silu as KS

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------
# gradient checks (float64)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-6, 0.5])
def test_rms_norm_gradcheck(weight, eps):
    x = RNG.standard_normal((3, 4, 6))
    w = RNG.standard_normal(6) if weight else None
    args = (x, w) if weight else (x,)
    report = check_function(
        lambda x, *w: F.rms_norm_forward(x, 6, w[0] if w else None, eps),
        lambda dy, c: (lambda g: (g[0], g[2]) if weight else g[0])(F.rms_norm_backward(dy, c)),
        *args)
    assert report.ok, str(report)


def test_silu_swiglu_rope_gqa_gradcheck():
    x = RNG.standard_normal((3, 7)) * 3
    assert check_function(F.silu_forward, F.silu_backward, x).ok
    g, u = RNG.standard_normal((2, 5)) * 3, RNG.standard_normal((2, 5))
    assert check_function(F.swiglu_forward, F.swiglu_backward, g, u).ok
    cos, sin = F.rope_cos_sin(np.arange(3, 8), F.rope_inv_freq(6, 100.0), np.float64)
    assert check_function(lambda x: F.rope_forward(x, cos, sin), F.rope_backward,
                          RNG.standard_normal((2, 3, 5, 6))).ok
    for hkv in (1, 2, 4):
        q = RNG.standard_normal((2, 4, 5, 3))
        k, v = RNG.standard_normal((2, hkv, 7, 3)), RNG.standard_normal((2, hkv, 7, 3))
        report = check_function(lambda q, k, v: F.grouped_query_attention_forward(q, k, v, True),
                                F.grouped_query_attention_backward, q, k, v)
        assert report.ok, str(report)


def test_rmsnorm_module_check():
    m = nn.RMSNorm((2, 3), eps=1e-5, dtype=np.float64)
    m.weight.data[...] = RNG.standard_normal((2, 3))
    report = check_module(m, RNG.standard_normal((4, 2, 3)))
    assert report.ok, str(report)
    assert check_module(nn.SiLU(), RNG.standard_normal((3, 4))).ok


def test_rope_is_a_rotation_and_relative():
    inv = F.rope_inv_freq(8, 10000.0)
    x = RNG.standard_normal((1, 1, 6, 8))
    cos, sin = F.rope_cos_sin(np.arange(6), inv, np.float64)
    y, c = F.rope_forward(x, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(F.rope_backward(y, c), x, rtol=1e-12, atol=1e-14)  # inverse = transpose
    # q_s . k_t depends on s - t only
    q, k = RNG.standard_normal(8), RNG.standard_normal(8)

    def dot(s, t):
        cs, ss = F.rope_cos_sin(np.array([s, t]), inv, np.float64)
        r = F.rope_forward(np.stack([q, k])[None, None], cs, ss)[0][0, 0]
        return r[0] @ r[1]
    assert math.isclose(dot(7, 3), dot(104, 100), rel_tol=1e-9)


# ------------------------------------------------------------------------------------------------
# PyTorch / transformers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_matches_torch(torch, dtype, eps):
    x = RNG.standard_normal((3, 5, 8)).astype(dtype)
    w = RNG.standard_normal(8).astype(dtype)
    y, c = F.rms_norm_forward(x, 8, w, eps)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    dx, _, dw = F.rms_norm_backward(dy, c)
    tx, tw = to_torch(torch, x, grad=True), to_torch(torch, w, grad=True)
    ty = torch.nn.functional.rms_norm(tx, (8,), tw, eps)
    ty.backward(to_torch(torch, dy))
    assert y.dtype == dx.dtype == dw.dtype == dtype
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad)):
        assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_swiglu_match_torch(torch, dtype):
    g = (RNG.standard_normal((4, 9)) * 4).astype(dtype)
    u = RNG.standard_normal((4, 9)).astype(dtype)
    h, c = F.swiglu_forward(g, u)
    dh = RNG.standard_normal(h.shape).astype(dtype)
    dg, du = F.swiglu_backward(dh, c)
    tg, tu = to_torch(torch, g, grad=True), to_torch(torch, u, grad=True)
    th = torch.nn.functional.silu(tg) * tu
    th.backward(to_torch(torch, dh))
    for ours, theirs in ((h, th), (dg, tg.grad), (du, tu.grad)):
        assert_close(ours, theirs)
    y, c = F.silu_forward(g)
    tg = to_torch(torch, g, grad=True)
    ty = torch.nn.functional.silu(tg)
    ty.backward(to_torch(torch, dh))
    assert_close(y, ty)
    assert_close(F.silu_backward(dh, c), tg.grad)


def _hf_rope(torch, x, positions, inv_freq):
    """transformers' apply_rotary_pos_emb (rotate_half), written here in float64."""
    freqs = torch.from_numpy(np.outer(positions, inv_freq))
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 64}])
def test_rope_matches_transformers(torch, scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=500000.0,
                                   rope_scaling=scaling, max_position_embeddings=512)
    kind = "default" if scaling is None else "llama3"
    if kind == "default":
        theirs = 1.0 / 500000.0 ** (np.arange(0, 32, 2) / 32)
    else:
        theirs = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")[0].double().numpy()
    ours = F.rope_inv_freq(32, 500000.0, scaling)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)          # theirs: float32 arithmetic
    x = RNG.standard_normal((2, 2, 9, 32))
    positions = np.arange(40, 49)
    cos, sin = F.rope_cos_sin(positions, ours, np.float64)
    tx = to_torch(torch, x, grad=True)
    ty = _hf_rope(torch, tx, positions, ours)
    y, c = F.rope_forward(x, cos, sin)
    dy = RNG.standard_normal(y.shape)
    ty.backward(to_torch(torch, dy))
    assert_close(y, ty)
    assert_close(F.rope_backward(dy, c), tx.grad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hkv", [1, 2, 6])
def test_gqa_matches_torch_sdpa(torch, dtype, hkv):
    q = RNG.standard_normal((2, 6, 5, 4)).astype(dtype)
    k, v = (RNG.standard_normal((2, hkv, 5, 4)).astype(dtype) for _ in range(2))
    y, c = F.grouped_query_attention_forward(q, k, v, is_causal=True)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    dq, dk, dv = F.grouped_query_attention_backward(dy, c)
    tq, tk, tv = (to_torch(torch, a, grad=True) for a in (q, k, v))
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True,
                                                          enable_gqa=True)
    ty.backward(to_torch(torch, dy))
    assert dk.shape == k.shape and dq.dtype == dtype
    for ours, theirs in ((y, ty), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        assert_close(ours, theirs)


# ------------------------------------------------------------------------------------------------
# Numba kernels vs NumPy twins, over the whole range
# ------------------------------------------------------------------------------------------------
def _wide(dtype, shape):
    """Values across the dtype's range: tiny, ordinary and huge magnitudes, both signs."""
    info = np.finfo(dtype)
    exps = RNG.uniform(math.log2(info.tiny), math.log2(info.max) - 1, size=shape)
    return (np.sign(RNG.standard_normal(shape)) * np.exp2(exps)).astype(dtype)


def _agree(a, b, rtol, rowwise=False):
    """Equal to ``rtol`` relative to each entry, or (``rowwise``) to the largest of its row: a
    row reduced in another order, or redone pre-scaled, may round its tiny entries differently."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    fin = np.isfinite(a) & np.isfinite(b)
    assert np.array_equal(np.isinf(a), np.isinf(b))
    big = np.maximum(np.abs(np.where(fin, a, 0)), np.abs(np.where(fin, b, 0)))
    if rowwise:
        big = np.broadcast_to(big.max(axis=-1, keepdims=True), big.shape)
    scale = big[fin]
    ok = np.abs(a[fin] - b[fin]) <= rtol * scale + 1e-300
    assert ok.all(), (a[fin][~ok][:4], b[fin][~ok][:4])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rmsnorm_routes_agree_over_the_range(dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    rows = [_wide(dtype, (6, 16)), RNG.standard_normal((3, 16)).astype(dtype),
            np.full((1, 16), np.finfo(dtype).max, dtype),            # sum of squares past max
            np.full((1, 16), np.finfo(dtype).tiny, dtype),           # ... and below tiny
            np.zeros((1, 16), dtype)]
    x = np.concatenate(rows)
    w = RNG.standard_normal(16).astype(dtype)
    dy = _wide(dtype, x.shape)
    for eps in (1e-6, 0.0):
        y1, r1 = KR.rmsnorm_forward_numba(x, w, eps)
        y2, r2 = KR.rmsnorm_forward_numpy(x, w, eps)
        _agree(y1, y2, rtol)
        _agree(r1, r2, 1e-12)
        assert y1.dtype == dtype
        if eps:
            assert np.isfinite(y1).all()                 # any finite row normalises finitely
            np.testing.assert_allclose(                  # unit RMS where eps is negligible
                np.sqrt(np.mean((y1[:-2].astype(np.float64) / w) ** 2, axis=1)), 1, rtol=1e-3)
        dx1, dw1 = KR.rmsnorm_backward_numba(dy, x, w, r1)
        dx2, dw2 = KR.rmsnorm_backward_numpy(dy, x, w, r2)
        _agree(dx1[:-1], dx2[:-1], 1e-9 if dtype == np.float64 else 1e-5, rowwise=True)
        _agree(dw1, dw2, 1e-9 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_swiglu_rope_routes_agree_over_the_range(dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    x = _wide(dtype, 5000)
    u = _wide(dtype, 5000)
    dy = _wide(dtype, 5000)
    with np.errstate(over="ignore"):
        for numba_fn, numpy_fn, args, n_out in (
                (KS.silu_forward_numba, KS.silu_forward_numpy, (x,), 1),
                (KS.silu_backward_numba, KS.silu_backward_numpy, (dy, x), 1),
                (KS.swiglu_forward_numba, KS.swiglu_forward_numpy, (x, u), 1),
                (KS.swiglu_backward_numba, KS.swiglu_backward_numpy, (dy, x, u), 2)):
            outs1 = [np.empty_like(x) for _ in range(n_out)]
            outs2 = [np.empty_like(x) for _ in range(n_out)]
            numba_fn(*args, *outs1)
            numpy_fn(*args, *outs2)
            for a, b in zip(outs1, outs2):
                _agree(a, b, rtol * 4)
    big = np.array([-np.finfo(dtype).max, -1e4, 1e4, np.finfo(dtype).max], dtype)
    y = KS.silu_forward_numba(big, np.empty_like(big))
    assert y[0] == 0 and y[1] == 0 and y[2] == big[2] and y[3] == big[3]
    d = KS.silu_backward_numba(np.ones_like(big), big, np.empty_like(big))
    np.testing.assert_array_equal(d, [0, 0, 1, 1])
    xr = _wide(dtype, (3, 4, 8))
    cos, sin = F.rope_cos_sin(np.arange(4), F.rope_inv_freq(8, 10.0), dtype)
    for sign in (1, -1):
        a = KP.rope_apply_numba(xr, cos, sin, sign, np.empty_like(xr))
        b = KP.rope_apply_numpy(xr, cos, sin, sign, np.empty_like(xr))
        _agree(a, b, rtol)


def test_layers_keep_float32():
    x = RNG.standard_normal((2, 3, 8)).astype(np.float32)
    m = nn.RMSNorm(8)
    y = m(x)
    assert y.dtype == np.float32 and m.backward(y).dtype == np.float32
    assert m.weight.grad.dtype == np.float32
    h, c = F.swiglu_forward(x, x)
    assert h.dtype == np.float32 and all(g.dtype == np.float32 for g in F.swiglu_backward(h, c))


def test_layer_bad_input():
    with pytest.raises(ValueError, match="even head dimension"):
        F.rope_inv_freq(5, 10000.0)
    cos, sin = F.rope_cos_sin(np.arange(3), F.rope_inv_freq(4, 10.0), np.float64)
    with pytest.raises(ValueError, match="cos must be a float64 array of shape"):
        F.rope_forward(np.zeros((1, 4, 4)), cos, sin)
    with pytest.raises(ValueError, match="must divide the query heads"):
        F.grouped_query_attention_forward(np.zeros((1, 4, 2, 2)), np.zeros((1, 3, 2, 2)),
                                          np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="up must have gate's shape"):
        F.swiglu_forward(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="rope_scaling of type 'yarn' is not supported"):
        F.check_rope_scaling({"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="normalized_shape"):
        F.rms_norm_forward(np.zeros((2, 3)), 4)
    with pytest.raises(TypeError, match="RMSNorm"):
        nn.RMSNorm(3)(np.zeros((2, 3)))                           # float64 into a float32 layer


def test_routes_agree_on_a_layer_stack():
    x = RNG.standard_normal((2, 3, 8))
    out = {}
    for route in ("numba", "numpy"):
        with scratchlm.use_backend(route):
            y, c = F.rms_norm_forward(x, 8, np.ones(8), 1e-6)
            h, c2 = F.swiglu_forward(y, x)
            out[route] = (h, F.rms_norm_backward(F.swiglu_backward(h, c2)[0], c)[0])
    for a, b in zip(out["numba"], out["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
