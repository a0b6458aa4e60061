"""Mixed precision's standalone pieces: float16/bfloat16 rounding against numpy, ml_dtypes and
torch, stochastic rounding's unbiasedness, and GradScaler against torch.amp.GradScaler on the
same sequence of gradients."""

import numpy as np
import pytest

from scratchlm.compress.precision import GradScaler, round_bf16, round_fp16
from scratchlm.nn import Parameter
from scratchlm.optim import SGD


def _every_float32_pattern(n=1 << 20, seed=0):
    """float32 values over the whole range: random bit patterns (NaNs, infs, subnormals, ties
    included), plus the edges."""
    bits = np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 1e-8, 6e-8,
                      np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1.00390625,
                      1.01171875, -3.0e38], np.float32)
    return np.concatenate([x, edges])


def test_round_fp16_matches_torch_half(torch):
    """An independent conversion: torch's float -> half -> float over the whole range."""
    x = _every_float32_pattern()
    out = round_fp16(x)
    ref = torch.from_numpy(x).half().float().numpy()
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.float32


def test_round_fp16_edges():
    x = np.array([65504, 65519.99, 65520, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001,
                  1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11], np.float32)
    np.testing.assert_array_equal(round_fp16(x), np.array(
        [65504, 65504, np.inf, 2.0 ** -24, 0.0, 2.0 ** -24, 1.0, 1 + 2.0 ** -9], np.float32))
    with pytest.raises(TypeError, match="x must be a float32 array, got float64"):
        round_fp16(np.zeros(3))


def test_round_bf16_is_nearest_even():
    x = _every_float32_pattern()
    out = round_bf16(x)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with np.errstate(invalid="ignore"):
        ref = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(out, ref)                   # NaN == NaN here
    assert (out.view(np.uint32) & 0xFFFF)[~np.isnan(out)].max() == 0


def test_round_bf16_matches_torch(torch):
    x = _every_float32_pattern(1 << 16, seed=1)
    ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_bf16(x), ref)


def test_stochastic_rounding_is_unbiased():
    x = np.full(200_000, 1.0 + 2.0 ** -9, np.float32)     # a quarter of a bf16 step above 1
    out = round_bf16(x, stochastic=True, rng=0)
    assert set(np.unique(out)) == {np.float32(1.0), np.float32(1.0 + 2.0 ** -7)}
    assert abs(out.astype(np.float64).mean() - float(x[0])) < 2e-5    # nearest: always 1.0
    assert (round_bf16(x) == 1.0).all()
    np.testing.assert_array_equal(round_bf16(x, stochastic=True, rng=3),
                                  round_bf16(x, stochastic=True, rng=3))


def test_grad_scaler_follows_torch(torch):
    """Thirty steps, growth every 3 clean steps, infs and NaNs injected: the same scales, the
    same skipped steps, the same unscaled gradients bit for bit. (The SGD updates themselves
    differ in the last bit: torch fuses p - lr g into one rounding.)"""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5).astype(np.float32)
    ours, theirs = Parameter(w0.copy()), torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt_o, opt_t = SGD([ours], lr=0.1), torch.optim.SGD([theirs], lr=0.1)
    s_o = GradScaler(init_scale=2.0 ** 10, growth_interval=3)
    s_t = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    bad = {4: np.inf, 5: np.nan, 11: -np.inf, 20: np.inf}
    for step in range(30):
        g = rng.standard_normal(5).astype(np.float32) * np.float32(s_o.scale)
        if step in bad:
            g[step % 5] = bad[step]
        ours.grad = g.copy()
        theirs.grad = torch.from_numpy(g.copy())
        s_t.scale(torch.ones(()))                   # (torch sets its scale up lazily here)
        assert s_o.scale == s_t.get_scale(), step
        before = theirs.detach().numpy().copy()
        took = s_o.step(opt_o)
        s_t.step(opt_t)
        assert took == (step not in bad) == (not np.array_equal(before, theirs.detach().numpy()))
        np.testing.assert_array_equal(ours.grad, theirs.grad.numpy(), err_msg=str(step))
        s_o.update()
        s_t.update()
    assert s_o.state_dict() == {**s_t.state_dict(), "scale": s_t.get_scale()}


def test_grad_scaler_rules_and_errors():
    p = Parameter(np.ones(2, np.float32))
    opt = SGD([p], lr=1.0)
    s = GradScaler(init_scale=4.0, growth_interval=2)
    p.grad = np.array([8.0, 4.0], np.float32)
    assert s.unscale_(opt) is False and np.array_equal(p.grad, [2.0, 1.0])
    with pytest.raises(RuntimeError, match="already been called"):
        s.unscale_(opt)
    assert s.step(opt) and np.array_equal(p.data, [-1.0, 0.0])
    s.update()
    with pytest.raises(RuntimeError, match="needs a step"):
        s.update()
    big = GradScaler(init_scale=3e38, growth_interval=1)          # growth that overflows: kept
    p.grad = np.zeros(2, np.float32)
    big.step(opt)
    big.update()
    assert big.scale == np.float32(3e38)
    for kwargs, match in (({"init_scale": 0}, "init_scale must be a finite number > 0"),
                          ({"growth_factor": 1.0}, "growth_factor must be a finite number > 1"),
                          ({"backoff_factor": 1.5}, r"backoff_factor must be .* in \(0, 1\)"),
                          ({"growth_interval": 0}, "growth_interval")):
        with pytest.raises(ValueError, match=match):
            GradScaler(**kwargs)
    restored = GradScaler()
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="_growth_tracker must be an int"):
        restored.load_state_dict({**s.state_dict(), "_growth_tracker": 5})


# ------------------------------------------------------------------------------------------------
# autocast and the loop
# ------------------------------------------------------------------------------------------------
def test_linear_under_autocast_is_a_tensor_core(torch):
    """The forward and backward of a Linear under autocast equal the same products of rounded
    operands computed in float64 and rounded once (float32 accumulation differs from float64
    only below the 16-bit result's rounding, so the rounded results agree); the input is kept in
    2 bytes an entry."""
    from scratchlm import functional as F
    from scratchlm.compress.precision import autocast
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 32)).astype(np.float32)
    w = rng.standard_normal((16, 32)).astype(np.float32) * 0.1
    b = rng.standard_normal(16).astype(np.float32)
    for mode, r, tol in (("fp16", round_fp16, 2.0 ** -10), ("bf16", round_bf16, 2.0 ** -7)):
        with autocast(mode):
            y, cache = F.linear_forward(x, w, b)
        ref = r((r(x).astype(np.float64) @ r(w).T.astype(np.float64)
                 + r(b)).astype(np.float32))
        np.testing.assert_allclose(y, ref, rtol=tol, atol=0)          # at most a 16-bit ulp
        assert (r(y) == y).all() and cache.x.itemsize == 2 and cache.precision == mode
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = F.linear_backward(dy, cache)                      # (no autocast needed)
        np.testing.assert_allclose(dx, r((r(dy) @ r(w)).astype(np.float32)), rtol=tol)
        np.testing.assert_allclose(dw, r((r(dy).reshape(-1, 16).T @ r(x).reshape(-1, 32))
                                         .astype(np.float32)), rtol=tol, atol=1e-6)
        assert (r(dx) == dx).all() and (r(dw) == dw).all() and (r(db) == db).all()
    with pytest.raises(TypeError, match="fp16 autocast needs float32 arrays, got float64"):
        with autocast("fp16"):
            F.linear_forward(x.astype(np.float64), w.astype(np.float64))
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        with autocast("fp8"):
            pass


def test_attention_under_autocast_rounds_its_operands():
    from scratchlm import functional as F
    from scratchlm.compress.precision import autocast
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 2, 6, 8)).astype(np.float32) for _ in range(3))
    with autocast("bf16"):
        y, cache = F.attention_forward(q, k, v, is_causal=True)
    ref, _ = F.attention_forward(round_bf16(q), round_bf16(k), round_bf16(v), is_causal=True)
    np.testing.assert_array_equal(y, round_bf16(ref))
    dq, dk, dv, _ = F.attention_backward(np.ones_like(y), cache)
    assert (round_bf16(dq) == dq).all() and F.attention_weights(cache).shape == (2, 2, 6, 6)


def test_loss_scaling_keeps_small_gradients():
    """float16 flushes gradient entries below 2^-24: without a loss scale some weight-gradient
    entries of a GPT at initialisation vanish; with GradScaler's 2^16 none do."""
    from scratchlm.compress.precision import autocast
    from scratchlm.models import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=12, block_size=32, n_layer=2, n_head=4, n_embd=64), rng=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 12, (16, 32)), rng.integers(0, 12, (16, 32))

    def grads(mode, scale):
        m.zero_grad()
        with autocast(mode, loss_scale=scale):
            m(x, y)
            m.backward()
        return [p.grad / scale for p in m.parameters() if p.grad.ndim == 2]
    ref = grads("fp32", 1.0)

    def flushed(gs):
        return sum(int(((g == 0) & (r != 0)).sum()) for g, r in zip(gs, ref))
    assert flushed(grads("fp16", 1.0)) > 0
    assert flushed(grads("fp16", 2.0 ** 16)) == 0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_matches_fp32(precision):
    """The same steps and batches on an order-2 Markov source: fp16 with loss scaling and bf16
    end within 1% of float32's held-out loss."""
    from scratchlm.data import MarkovSource
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.training import TrainConfig
    from scratchlm.training.fit import fit_lm
    src = MarkovSource(12, order=2, concentration=0.3, seed=0)
    train, val = src.sample(50_000, rng=1), src.sample(5_000, rng=2)
    losses = {}
    for p in ("fp32", precision):
        m = GPT(GPTConfig(vocab_size=12, block_size=32, n_layer=1, n_head=4, n_embd=32), rng=0)
        h = fit_lm(m, train, val, TrainConfig(steps=150, lr=3e-3, warmup=10, precision=p,
                                              eval_interval=150), batch_size=8,
                   log=lambda s: None)
        losses[p] = h["val_loss"][-1]
        if p == "fp16":
            assert h["loss_scale"] == [2.0 ** 16] * 150
    assert abs(losses[precision] / losses["fp32"] - 1) < 0.01, losses


def test_the_loop_skips_a_step_with_an_inf_gradient_and_refuses_misuse(tmp_path):
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.training import TrainConfig
    from scratchlm.training.loop import train
    m = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16), rng=0)
    rng = np.random.default_rng(0)

    class Source:
        def __next__(self):
            return rng.integers(0, 8, (2, 8))

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    def forward(batch, step):
        _, loss = m(batch, batch)
        if step == 2:                                 # poison this step's gradient
            m.transformer.ln_f.weight.grad[...] = np.inf
        return loss
    before = None

    def progress(step, total, info):
        nonlocal before
        if step == 2:
            before = m.state_dict()["transformer.wte.weight"].copy()
        if step == 3:                                 # step 3 (index 2) was skipped
            np.testing.assert_array_equal(m.state_dict()["transformer.wte.weight"], before)
    h = train(m, Source(), forward, TrainConfig(steps=5, lr=1e-2, precision="fp16"),
              progress=progress, log=lambda s: None)
    assert np.isinf(h["grad_norm"][2]) and h["loss_scale"][3] == h["loss_scale"][2] / 2
    with pytest.raises(ValueError, match=r"precision must be one of .*'fp16'.*got 'fp8'"):
        TrainConfig(steps=1, precision="fp8")
    m64 = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16),
              dtype=np.float64, rng=0)
    with pytest.raises(ValueError, match="trains a float32 model"):
        train(m64, Source(), lambda b, s: m64(b, b)[1], TrainConfig(steps=1, precision="bf16"),
              log=lambda s: None)


def test_fp16_resume_is_bit_identical_and_the_cli_takes_precision(tmp_path, capsys):
    from scratchlm.cli import main
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.training import TrainConfig
    from scratchlm.training.fit import fit_lm
    ids = np.random.default_rng(0).integers(0, 10, 3000)

    class Stop(Exception):
        pass

    def stop_at_3(step, total, info):                 # after the step-3 checkpoint
        if step == 3:
            raise Stop

    def run(ck=None, resume=False, progress=None):
        m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16), rng=0)
        fit_lm(m, ids[:2500], ids[2500:], TrainConfig(steps=6, lr=1e-2, precision="fp16",
                                                      save_interval=3),
               batch_size=4, checkpoint=ck, resume=resume, progress=progress,
               log=lambda s: None)
        return m
    straight = run()
    ck = tmp_path / "half.npz"
    with pytest.raises(Stop):
        run(ck, progress=stop_at_3)
    again = run(ck, resume=True)
    for (n, a), (_, b) in zip(straight.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    from conftest import train_tiny
    train_tiny(tmp_path, extra=("--precision", "bf16"))
    assert main(["train", "transformer", "--precision", "fp8"]) == 2
    assert "--precision: invalid choice: 'fp8'" in capsys.readouterr().err


def test_gradient_ranges_and_the_precision_command(tmp_path, capsys):
    from scratchlm.cli import main
    from scratchlm.compress.precision import gradient_ranges
    g = np.array([2.0 ** -30, -(2.0 ** -20), 2.0 ** -10, 2.0 ** 17, 0.0, 2.0 ** -25,
                  2.0 ** -24])
    r = gradient_ranges(g, scale=2.0 ** 16)
    assert r["entries"] == 6
    # 2^-30 and 2^-25 (half the smallest subnormal: a tie, to even) flush; 2^-24 and 2^-20 are
    # subnormal; 2^17 overflows
    assert r["fp16"] == {"flushed": 2 / 6, "subnormal": 2 / 6, "overflow": 1 / 6}
    assert r["fp16_scaled"] == {"flushed": 0.0, "subnormal": 0.0, "overflow": 1 / 6}
    assert r["bf16"] == {"flushed": 0.0, "subnormal": 0.0, "overflow": 0.0}
    assert float(round_fp16(np.float32([2.0 ** -25]))[0]) == 0.0       # the tie, as float16
    with pytest.raises(ValueError, match="no nonzero entry"):
        gradient_ranges(np.zeros(3))
    from conftest import train_tiny
    ck, _ = train_tiny(tmp_path, steps=2)
    capsys.readouterr()
    png = tmp_path / "p.png"
    assert main(["precision", "--checkpoint", str(ck), "--batches", "1", "--batch-size", "2",
                 "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "fp16, no scaling" in text and "fp16, loss scale 2^16" in text and "bf16" in text
    pytest.importorskip("matplotlib")
    assert png.stat().st_size > 1000


def test_bf16_autocast_linear_matches_torch_autocast(torch):
    """torch.autocast on the CPU in bfloat16 -- the reference this emulates: the same outputs
    and the same (float32 master) weight and bias gradients, bit for bit."""
    import warnings
    from scratchlm import functional as F
    from scratchlm.compress.precision import autocast
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5, 64)).astype(np.float32)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    dy = rng.standard_normal((4, 5, 32)).astype(np.float32)
    lin = torch.nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    tx = torch.from_numpy(x).requires_grad_(True)
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("ignore")
        ty = lin(tx)
    ty.backward(torch.from_numpy(dy).to(torch.bfloat16))
    with autocast("bf16"):
        y, cache = F.linear_forward(x, w, b)
    dx, dw, db = F.linear_backward(dy, cache)
    np.testing.assert_array_equal(y, ty.float().detach().numpy())
    np.testing.assert_array_equal(dw, lin.weight.grad.numpy())
    np.testing.assert_array_equal(db, lin.bias.grad.numpy())
    np.testing.assert_array_equal(dx, tx.grad.float().numpy())
