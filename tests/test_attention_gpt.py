"""Attention, MultiheadAttention, positional encodings and the GPT: gradient checks, and equality
with PyTorch (scaled_dot_product_attention, nn.MultiheadAttention, a nanoGPT-style GPT)."""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import scratchlm
from conftest import assert_close, to_torch
from scratchlm import functional as F, nn
from scratchlm.gradcheck import check_function, check_module
from scratchlm.models import GPT, GPTConfig
from scratchlm.optim import AdamW


# ------------------------------------------------------------------------------------------------
# scaled dot-product attention
# ------------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 999), B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 5),
       extra=st.integers(0, 3), d=st.integers(1, 4), causal=st.booleans(),
       mask=st.sampled_from([None, "bool", "float"]))
def test_attention_gradcheck(seed, B, H, Tq, extra, d, causal, mask):
    rng = np.random.default_rng(seed)
    Tk = Tq + extra
    q, k, v = (rng.standard_normal((B, H, T, d)) for T in (Tq, Tk, Tk))
    m = None
    if mask == "bool":
        m = rng.random((Tq, Tk)) > 0.3
        m[:, 0] = True                                       # every query sees something
    elif mask == "float":
        m = rng.standard_normal((B, 1, Tq, Tk))
    report = check_function(lambda q, k, v: F.attention_forward(q, k, v, attn_mask=m, is_causal=causal),
                            lambda dy, c: F.attention_backward(dy, c)[:3], q, k, v)
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "bool"), (False, "float")])
def test_attention_matches_torch_sdpa(torch, dtype, causal, mask):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, T, 4)).astype(dtype) for T in (5, 5, 5))
    m = None
    if mask == "bool":
        m = rng.random((5, 5)) > 0.4
        m[:, 0] = True
    elif mask == "float":
        m = rng.standard_normal((2, 1, 5, 5)).astype(dtype)
    y, cache = F.attention_forward(q, k, v, attn_mask=m, is_causal=causal)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dq, dk, dv, _ = F.attention_backward(dy, cache)
    tq, tk, tv = (to_torch(torch, a, grad=True) for a in (q, k, v))
    tm = None if m is None else to_torch(torch, m)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=causal)
    ty.backward(to_torch(torch, dy))
    assert y.dtype == dq.dtype == dtype
    for ours, theirs in ((y, ty), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        assert_close(ours, theirs)


def test_causal_with_fewer_queries_sees_the_past_only():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 1, 2, 3))
    k = v = rng.standard_normal((1, 1, 5, 3))
    _, cache = F.attention_forward(q, k, v, is_causal=True)          # queries = positions 3 and 4
    w = cache.weights[0, 0]
    assert np.all(w[0, 4:] == 0) and np.all(w[0, :4] > 0) and np.all(w[1] > 0)
    full = np.zeros((1, 1, 2, 5), bool)
    y, c = F.attention_forward(q, k, v, attn_mask=full)             # nothing allowed: zeros, not NaN
    assert np.all(y == 0) and np.all(np.isfinite(F.attention_backward(np.ones_like(y), c)[0]))


# ------------------------------------------------------------------------------------------------
# MultiheadAttention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("average", [True, False])
def test_multihead_attention_matches_torch(torch, dtype, batch_first, average):
    rng = np.random.default_rng(3)
    E, H, N, L, S = 8, 2, 3, 4, 5
    ours = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=dtype, rng=0)
    for p in ours.parameters():
        p.data += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=getattr(torch, np.dtype(dtype).name))
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    shape = lambda T: (N, T, E) if batch_first else (T, N, E)        # noqa: E731
    q, k, v = (rng.standard_normal(shape(T)).astype(dtype) for T in (L, S, S))
    kpm = np.zeros((N, S), bool)
    kpm[0, -2:] = True
    am = np.triu(np.ones((L, S), bool), 2)
    out, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=average)
    do, dw = rng.standard_normal(out.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    dq, dk, dv = ours.backward(do, dw)
    tq, tk, tv = (to_torch(torch, a, grad=True) for a in (q, k, v))
    to, tw = theirs(tq, tk, tv, key_padding_mask=to_torch(torch, kpm), attn_mask=to_torch(torch, am),
                    average_attn_weights=average)
    ((to * to_torch(torch, do)).sum() + (tw * to_torch(torch, dw)).sum()).backward()
    for a, b in ((out, to), (w, tw), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        assert_close(a, b)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, tp[name].grad)


def test_multihead_attention_bad_input():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiheadAttention(6, 4)
    m = nn.MultiheadAttention(4, 2)
    x = np.ones((3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        m(x, x, x, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        m(x, x, x, attn_mask=np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="last dimension 4"):
        m(x[..., :3], x, x)


def test_sinusoidal_table_is_the_formula():
    table = nn.sinusoidal_table(7, 6, dtype=np.float64)
    for p in range(7):
        for i in range(3):
            assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-15)
            assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-15)
    assert nn.sinusoidal_table(3, 5).shape == (3, 5)                  # odd d_model
    enc = nn.SinusoidalPositionalEncoding(6, max_len=7, dtype=np.float64)
    x = np.zeros((2, 4, 6))
    np.testing.assert_array_equal(enc(x)[1], table[:4])
    with pytest.raises(ValueError, match="exceeds max_len 7"):
        enc(np.zeros((1, 8, 6)))


# ------------------------------------------------------------------------------------------------
# GPT
# ------------------------------------------------------------------------------------------------
def torch_gpt(torch, cfg):
    """nanoGPT's model in torch.nn (the benchmarks' reference), in float64."""
    from benchmarks.workloads.gpt import torch_gpt as reference
    return reference(torch, cfg).double()


CFG = GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, n_embd=8)


def test_gpt_state_dict_is_nanogpts():
    m = GPT(CFG, rng=0)
    sd = m.state_dict()
    C = CFG.n_embd
    expected = {"transformer.wte.weight": (13, C), "transformer.wpe.weight": (9, C),
                "transformer.h.1.attn.c_attn.weight": (3 * C, C), "transformer.h.1.attn.c_proj.weight": (C, C),
                "transformer.h.0.mlp.c_fc.weight": (4 * C, C), "transformer.h.0.mlp.c_proj.weight": (C, 4 * C),
                "transformer.h.0.ln_1.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (13, C)}
    for k, shape in expected.items():
        assert sd[k].shape == shape, k
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    assert len(sd) == 2 + 12 * CFG.n_layer + 2 + 1
    std = 0.02 / math.sqrt(2 * CFG.n_layer)
    big = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=3, n_head=2, n_embd=64), rng=1)
    assert abs(big.transformer.h[0].attn.c_proj.weight.data.std() - 0.02 / math.sqrt(6)) < 2e-3
    assert abs(big.transformer.wte.weight.data.std() - 0.02) < 1e-3 and std > 0
    assert np.all(big.transformer.h[0].mlp.c_fc.bias.data == 0)
    assert not any(n.startswith("lm_head") for n, _ in m.named_parameters())       # tied: listed once


def test_gpt_matches_nanogpt_in_torch(torch):
    cfg = GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, n_embd=8, bias=True)
    ours = GPT(cfg, dtype=np.float64, rng=0)
    theirs = torch_gpt(torch, cfg)
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(4)
    idx, tgt = rng.integers(0, 13, (3, 9)), rng.integers(0, 13, (3, 9))
    tgt[0, :2] = -1
    opt_ours = AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(10):
        opt_ours.zero_grad()
        logits, loss = ours(idx, tgt)
        ours.backward()
        opt_theirs.zero_grad()
        tlogits, tloss = theirs(torch.from_numpy(idx), torch.from_numpy(tgt))
        tloss.backward()
        assert loss == pytest.approx(tloss.item(), rel=1e-10), step
        if step == 0:
            assert_close(logits, tlogits)
            tp = dict(theirs.named_parameters())
            for name, p in ours.named_parameters():
                assert_close(p.grad, tp[name].grad)
        opt_ours.step()
        opt_theirs.step()


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_gradcheck(bias):
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=4, dropout=0.1, bias=bias)
    idx = np.random.default_rng(5).integers(0, 7, (2, 5))
    report = check_module(GPT(cfg, dtype=np.float64, rng=3), idx, max_entries=24)
    assert report.ok, str(report)


def test_gpt_float32_and_routes_agree():
    idx = np.random.default_rng(6).integers(0, 13, (2, 9))
    m = GPT(CFG, rng=2)
    logits, loss = m(idx, idx)
    assert logits.dtype == np.float32
    m.backward()
    assert all(p.grad.dtype == np.float32 for p in m.parameters())
    m64 = GPT(CFG, dtype=np.float64, rng=2)
    outs = {}
    for route in ("numba", "numpy"):
        with scratchlm.use_backend(route):
            m64.zero_grad()
            lg, ls = m64(idx, idx)
            m64.backward()
            outs[route] = (lg, [p.grad.copy() for p in m64.parameters()])
    np.testing.assert_allclose(outs["numba"][0], outs["numpy"][0], rtol=1e-12, atol=1e-13)
    for a, b in zip(outs["numba"][1], outs["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m(np.zeros((1, 10), np.int64)), ValueError, "sequence length 10, more than block_size 9"),
    (lambda m: m(np.full((1, 3), 13)), ValueError, r"idx must lie in \[0, 13\)"),
    (lambda m: m(np.zeros((1, 3))), TypeError, "idx must have an integer dtype"),
    (lambda m: m(np.zeros((1, 3), np.int64), np.zeros((1, 4), np.int64)), ValueError, "targets must have the shape"),
    (lambda m: (m(np.zeros((1, 3), np.int64)), m.backward()), RuntimeError, "needs a forward call with targets"),
    (lambda m: GPTConfig(n_embd=10, n_head=4), ValueError, "divisible by n_head"),
    (lambda m: m.load_state_dict(GPT(GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, n_embd=16)).state_dict()),
     ValueError, "mis-shaped keys"),
])
def test_gpt_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(GPT(CFG, rng=0))


# ------------------------------------------------------------------------------------------------
# generation and Hugging Face checkpoints
# ------------------------------------------------------------------------------------------------
GEN = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(seed=3), dict(seed=3, top_k=5),
                                    dict(seed=4, top_p=0.8, temperature=0.7)])
def test_kv_cache_generation_equals_recomputation(kwargs):
    m = GPT(GEN, dtype=np.float64, rng=0)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    cached = m.generate(prompt, 20, **kwargs)                        # runs past block_size 8
    plain = m.generate(prompt, 20, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, plain)
    assert cached.shape == (2, 23) and np.array_equal(cached[:, :3], prompt)
    assert m.training                                                # mode restored


def test_generation_semantics():
    m = GPT(GEN, dtype=np.float64, rng=1)
    prompt = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])             # longer than block_size: cropped
    greedy = m.generate(prompt, 5, greedy=True)
    np.testing.assert_array_equal(greedy, m.generate(prompt, 5, top_k=1, seed=7))
    m.eval()
    logits = m(prompt[:, -8:])                                       # nanoGPT: the last block_size tokens
    assert greedy[0, 10] == logits[0, -1].argmax()
    np.testing.assert_array_equal(m.generate(prompt, 6, seed=5), m.generate(prompt, 6, seed=5))
    assert m.generate(prompt, 0).shape == prompt.shape
    for bad, match in [(dict(temperature=0), "temperature"), (dict(top_p=1.5), "top_p"),
                       (dict(top_k=0), "top_k")]:
        with pytest.raises(ValueError, match=match):
            m.generate(prompt, 2, **bad)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_from_pretrained_matches_transformers(tmp_path, torch, dtype, tol):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=dtype)
    idx = np.random.default_rng(0).integers(0, 50, (2, 12))
    ref = (hf.double() if dtype == np.float64 else hf)(torch.from_numpy(idx)).logits.detach().numpy()
    np.testing.assert_allclose(ours(idx), ref, atol=tol, rtol=0)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
