"""DP-SGD: per-example gradients from the explicit backward (against torch.func's
vmap(grad)), the clipped noisy mean (computed twice), Poisson batches, the RDP accountant
(against Opacus), and the loop's DP mode."""

import numpy as np
import pytest

from scratchlm import nn
from scratchlm._per_example import GhostSample, dense_sample, per_example_gradients
from scratchlm.distributed.accountant import RDPAccountant, epsilon, rdp_sampled_gaussian
from scratchlm.training.loop import TrainConfig

RNG = np.random.default_rng(0)
B = 4


def _ours(module, inputs, weights):
    """Per-example gradients of l_b = sum(module(x)_b * R_b), the loss being their mean over the
    batch: grad_sample * B (the backward gives each example's share of the mean)."""
    module.zero_grad()
    y = module(*inputs)
    y = y[0] if isinstance(y, tuple) else y
    with per_example_gradients():
        module.backward(weights / B)
    out = {n: dense_sample(p.grad_sample) * B for n, p in module.named_parameters()}
    for p in module.parameters():
        p.grad_sample = None
    return out


def _theirs(torch, fn, params, inputs, weights):
    from torch.func import grad, vmap

    def loss(p, *xs):
        *xs, r = xs
        return (fn(p, *[x.unsqueeze(0) for x in xs]).squeeze(0) * r).sum()
    t = {k: torch.from_numpy(v) for k, v in params.items()}
    g = vmap(grad(loss), in_dims=(None,) + (0,) * (len(inputs) + 1))(
        t, *[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs], torch.from_numpy(weights))
    return {k: v.numpy() for k, v in g.items()}


def test_linear(torch):
    lin = nn.Linear(5, 3, dtype=np.float64, rng=1)
    x = RNG.standard_normal((B, 6, 5))
    r = RNG.standard_normal((B, 6, 3))
    ours = _ours(lin, (x,), r)
    theirs = _theirs(torch, lambda p, x: torch.nn.functional.linear(x, p["weight"], p["bias"]),
                     {"weight": lin.weight.data, "bias": lin.bias.data}, (x,), r)
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-12, atol=1e-12)


def test_embedding(torch):
    emb = nn.Embedding(7, 3, dtype=np.float64, rng=1, padding_idx=0)
    ids = RNG.integers(0, 7, (B, 6))
    r = RNG.standard_normal((B, 6, 3))
    ours = _ours(emb, (ids,), r)
    theirs = _theirs(torch, lambda p, i: torch.nn.functional.embedding(i, p["weight"],
                                                                        padding_idx=0),
                     {"weight": emb.weight.data}, (ids,), r)
    np.testing.assert_allclose(ours["weight"], theirs["weight"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norms(torch, kind):
    mod = nn.LayerNorm(5, dtype=np.float64) if kind == "layer" else nn.RMSNorm(5, dtype=np.float64)
    for p in mod.parameters():
        p.data[...] = RNG.standard_normal(p.shape)
    x = RNG.standard_normal((B, 3, 5))
    r = RNG.standard_normal((B, 3, 5))
    ours = _ours(mod, (x,), r)
    params = {n: p.data for n, p in mod.named_parameters()}
    if kind == "layer":
        def fn(p, x):
            return torch.nn.functional.layer_norm(x, (5,), p["weight"], p["bias"], 1e-5)
    else:
        def fn(p, x):
            return torch.nn.functional.rms_norm(x, (5,), p["weight"], mod.eps)
    theirs = _theirs(torch, fn, params, (x,), r)
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, atol=1e-12)


def test_multihead_attention(torch):
    mha = nn.MultiheadAttention(6, 2, batch_first=True, dtype=np.float64, rng=1)
    for p in mha.parameters():
        p.data[...] = RNG.standard_normal(p.shape) * 0.5
    x = RNG.standard_normal((B, 5, 6))
    r = RNG.standard_normal((B, 5, 6))
    ours = _ours(mha, (x, x, x), r)
    ref = torch.nn.MultiheadAttention(6, 2, batch_first=True, dtype=torch.float64)
    names = [n for n, _ in ref.named_parameters()]
    params = {n: dict(mha.named_parameters())[n].data for n in names}

    def fn(p, q, k, v):
        return torch.func.functional_call(ref, p, (q, k, v), {"need_weights": False})[0]
    theirs = _theirs(torch, fn, params, (x, x, x), r)
    for k in names:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, atol=1e-12)


def test_whole_gpt_matches_transformers(torch, tmp_path):
    """A tiny GPT (tied embedding, positions, LayerNorms, attention, MLP): each example's
    gradient of its own mean cross-entropy, ours vs vmap(grad) over transformers' GPT-2."""
    transformers = pytest.importorskip("transformers")
    from scratchlm.models import GPT
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0,
        embd_pdrop=0, attn_pdrop=0)).double().eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float64)
    idx = RNG.integers(0, 11, (B, 6))
    tgt = RNG.integers(0, 11, (B, 6))
    ours.zero_grad()
    with per_example_gradients():
        ours(idx, tgt)
        ours.backward()
    got = {n: dense_sample(p.grad_sample) * B for n, p in ours.named_parameters()}
    assert any(isinstance(p.grad_sample, GhostSample) for p in ours.parameters())

    params = {n: p.detach() for n, p in hf.named_parameters()}

    def loss(p, i, t):
        logits = torch.func.functional_call(hf, p, (i.unsqueeze(0),)).logits[0]
        return torch.nn.functional.cross_entropy(logits, t)
    from torch.func import grad, vmap
    want = vmap(grad(loss), in_dims=(None, 0, 0))(params, torch.from_numpy(idx),
                                                   torch.from_numpy(tgt))
    for name, g in want.items():
        g = g.numpy()
        mine = got[name]
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            mine = mine.transpose(0, 2, 1)            # GPT-2's Conv1D keeps (in, out)
        np.testing.assert_allclose(mine, g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_private_gradients_computed_twice():
    """The noisy clipped mean from the batched per-example gradients equals the same from one
    backward per example (batch of one each), clipped and summed by hand."""
    from scratchlm.distributed.dp import private_gradients
    from scratchlm.models import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=9, block_size=6, n_layer=1, n_head=2, n_embd=8),
            dtype=np.float64, rng=0)
    idx, tgt = RNG.integers(0, 9, (B, 6)), RNG.integers(0, 9, (B, 6))
    C, sigma, expected = 0.05, 0.7, 3.5
    m.zero_grad()
    with per_example_gradients():
        m(idx, tgt)
        m.backward()
    stats = private_gradients(m, B, C, sigma, np.random.default_rng(3), expected)
    got = {n: p.grad.copy() for n, p in m.named_parameters()}
    total = {n: np.zeros_like(p.data) for n, p in m.named_parameters()}
    for b in range(B):
        m.zero_grad()
        m(idx[b:b + 1], tgt[b:b + 1])
        m.backward()
        g = {n: p.grad.copy() for n, p in m.named_parameters()}
        seen, sq = set(), 0.0
        for n, p in m.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                sq += float((g[n] ** 2).sum())
        c = min(1.0, C / (np.sqrt(sq) + 1e-6))
        for n in total:
            total[n] += c * g[n]
    noise = np.random.default_rng(3)
    seen = {}
    for n, p in m.named_parameters():
        if id(p) in seen:
            total[n] = total[seen[id(p)]]
            continue
        seen[id(p)] = n
        total[n] = (total[n] + noise.normal(0, sigma * C, p.shape)) / expected
    for n in got:
        np.testing.assert_allclose(got[n], total[n], rtol=1e-9, atol=1e-12, err_msg=n)
    assert stats["clipped"] == 1.0                   # C is small: every example was clipped


def test_accountant_matches_opacus():
    opacus = pytest.importorskip("opacus")
    for q, sigma, steps, delta in [(0.01, 1.1, 1000, 1e-5), (0.004, 0.8, 5000, 1e-6),
                                   (0.25, 2.0, 30, 1e-5), (1.0, 5.0, 10, 1e-5)]:
        theirs = opacus.accountants.RDPAccountant()
        theirs.history.append((sigma, q, steps))
        ours = RDPAccountant()
        ours.step(q, sigma, steps)
        assert ours.epsilon(delta) == pytest.approx(theirs.get_epsilon(delta=delta), rel=1e-10)


def test_accountant_edges():
    assert rdp_sampled_gaussian(0.0, 1.0, 2) == 0.0
    assert rdp_sampled_gaussian(0.5, 0.0, 2) == float("inf")
    assert rdp_sampled_gaussian(1.0, 2.0, 3) == pytest.approx(3 / 8)
    assert epsilon([(0.5, 0.0, 1)], 1e-5)[0] == float("inf")      # no noise: no privacy
    a, b = RDPAccountant(), RDPAccountant()
    a.step(0.01, 1.0, 100)
    b.step(0.01, 1.0, 200)
    assert a.epsilon(1e-5) < b.epsilon(1e-5)                     # more steps spend more
    with pytest.raises(ValueError, match="delta"):
        a.epsilon(0)


def test_poisson_windows():
    from scratchlm.data import PoissonWindows
    src = PoissonWindows(np.arange(1000), 20, 10, seed=0)
    assert src.population == 990 and src.sample_rate == pytest.approx(20 / 990)
    sizes = [next(src)[0].shape[0] for _ in range(400)]
    assert abs(np.mean(sizes) - 20) < 1.0 and min(sizes) < 20 < max(sizes)
    x, y = next(src)
    np.testing.assert_array_equal(y, x + 1)
    state = src.state_dict()
    a = next(src)[0]
    src.load_state_dict(state)
    np.testing.assert_array_equal(next(src)[0], a)


def test_dp_config_errors():
    with pytest.raises(ValueError, match="noise without clipping"):
        TrainConfig(steps=1, dp_noise=1.0)
    with pytest.raises(ValueError, match="dp_clip must be > 0"):
        TrainConfig(steps=1, dp_clip=0.0)
    with pytest.raises(ValueError, match="not with zero=1"):
        TrainConfig(steps=1, dp_clip=1.0, distributed=True, zero=1)


def test_loop_reports_epsilon_and_resumes(tmp_path):
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.training.fit import fit_lm
    ids = RNG.integers(0, 16, 3000)

    def run(steps, resume=False, ck=None):
        m = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8),
                dtype=np.float64, rng=0)
        cfg = TrainConfig(steps=steps, lr=1e-2, grad_clip=None, dp_clip=1.0, dp_noise=1.0,
                          save_interval=3, schedule="constant", dp_seed=0)     # (a resume keeps its rate)
        h = fit_lm(m, ids[:2500], ids[2500:], cfg, batch_size=8, block_size=8,
                   checkpoint=ck, resume=resume, log=lambda *a: None)
        return m, h
    m1, h1 = run(6)
    eps = h1["epsilon"]
    assert all(a < b for a, b in zip(eps, eps[1:]))              # it only grows
    assert eps[-1] == pytest.approx(RDPAccountant([[8 / 2492, 1.0, 6]]).epsilon(1e-5))
    ck = str(tmp_path / "dp.npz")
    run(3, ck=ck)
    m2, h2 = run(6, resume=True, ck=ck)
    np.testing.assert_allclose(h2["epsilon"], eps, rtol=1e-12)
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=n)


def test_unsupported_layer_is_named():
    from scratchlm.models import RNNLM, RNNLMConfig
    from scratchlm.training.fit import fit_lm
    m = RNNLM.from_config(RNNLMConfig(vocab_size=16, embed_dim=8, hidden_size=8, cell="gru"),
                          dtype=np.float64, rng=0)
    ids = RNG.integers(0, 16, 2000)
    with pytest.raises(ValueError, match="carries its state along streams"):
        fit_lm(m, ids[:1500], ids[1500:], TrainConfig(steps=1, dp_clip=1.0), batch_size=4,
               block_size=8, log=lambda *a: None)
    with pytest.raises(ValueError, match="has no per-example gradient"):
        fit_lm(m, ids[:1500], ids[1500:], TrainConfig(steps=1, dp_clip=1.0), batch_size=4,
               block_size=8, source="RandomWindows", log=lambda *a: None)


def test_ghost_norms_equal_the_formed_gradients():
    """A Linear used twice on short sequences keeps its per-example gradients as factors: the
    norms, the weighted sum and the formed gradients agree with forming them first."""
    lin = nn.Linear(16, 12, dtype=np.float64, rng=2)
    x1, x2 = RNG.standard_normal((B, 3, 16)), RNG.standard_normal((B, 2, 16))
    r1, r2 = RNG.standard_normal((B, 3, 12)), RNG.standard_normal((B, 2, 12))
    lin.zero_grad()
    with per_example_gradients():
        lin(x1)
        lin.backward(r1)
        lin(x2)
        lin.backward(r2)
    ghost = lin.weight.grad_sample
    assert isinstance(ghost, GhostSample) and len(ghost.parts) == 2
    formed = np.matmul(r1.transpose(0, 2, 1), x1) + np.matmul(r2.transpose(0, 2, 1), x2)
    np.testing.assert_allclose(ghost.dense(), formed, rtol=1e-12)
    np.testing.assert_allclose(ghost.sq_norms(), (formed ** 2).sum(axis=(1, 2)), rtol=1e-12)
    c = RNG.random(B)
    np.testing.assert_allclose(ghost.weighted_sum(c), np.einsum("b,boi->oi", c, formed),
                               rtol=1e-12)
    np.testing.assert_allclose(formed.sum(axis=0), lin.weight.grad, rtol=1e-12)
