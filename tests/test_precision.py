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
