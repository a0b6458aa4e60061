"""Losses: gradient checks, equality with torch.nn.functional, and torch's edge cases."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import assert_close, to_torch
from scratchlm import nn
from scratchlm.gradcheck import check_function, check_module
from scratchlm.testing import shapes

REDUCTIONS = ["mean", "sum", "none"]


def ce_inputs(seed, shape, classes, ignore_frac=0.0):
    rng = np.random.default_rng(seed)
    n = shape[0]
    x = rng.standard_normal((n, classes) + tuple(shape[1:])) * 3
    t = rng.integers(0, classes, shape)
    t[rng.random(shape) < ignore_frac] = -100
    return x, t


@given(seed=st.integers(0, 999), n=st.integers(1, 6), c=st.integers(1, 7),
       extra=st.lists(st.integers(1, 3), max_size=2), reduction=st.sampled_from(REDUCTIONS),
       smoothing=st.sampled_from([0.0, 0.1, 0.5]), ignore=st.sampled_from([0.0, 0.3]))
def test_cross_entropy_gradcheck(seed, n, c, extra, reduction, smoothing, ignore):
    x, t = ce_inputs(seed, [n] + extra, c, ignore)
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    if reduction == "mean" and np.all(t == -100):
        t.flat[0] = 0
    report = check_module(loss, x, t)
    assert report.ok, str(report)


@given(shape=shapes(1, 3, 1, 5), seed=st.integers(0, 999), reduction=st.sampled_from(REDUCTIONS))
def test_nll_bce_mse_kl_gradcheck(shape, seed, reduction):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    C = shape[1] if len(shape) > 1 else shape[0]
    t = rng.integers(0, C, (shape[0],) + shape[2:]) if len(shape) > 1 else np.array(rng.integers(0, C))
    cases = [(nn.NLLLoss(reduction=reduction), (x, t)),
             (nn.BCEWithLogitsLoss(reduction=reduction), (x * 4, rng.random(shape))),
             (nn.MSELoss(reduction=reduction), (x, rng.standard_normal(shape))),
             (nn.GaussianKLLoss(reduction=reduction), (x, rng.standard_normal(shape)))]
    for loss, args in cases:
        report = check_module(loss, *args)
        assert report.ok, str(report)


@given(shape=shapes(1, 3, 1, 5), seed=st.integers(0, 999), reduction=st.sampled_from(REDUCTIONS))
def test_functional_pairs_gradcheck_targets_too(shape, seed, reduction):
    """The functional pairs return target gradients too (torch's BCE and MSE differentiate the
    target): check them, with random upstream gradients for every reduction."""
    from functools import partial
    from scratchlm import functional as F
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(shape) * 3, rng.random(shape)
    for fwd, bwd in [(F.bce_with_logits_forward, F.bce_with_logits_backward),
                     (F.mse_forward, F.mse_backward), (F.gaussian_kl_forward, F.gaussian_kl_backward)]:
        report = check_function(partial(fwd, reduction=reduction), bwd, x, y)
        assert report.ok and len(report.tensors) == 2, str(report)


def torch_loss_and_grad(torch, fn, x, *rest, upstream=None):
    xt = to_torch(torch, x, grad=True)
    out = fn(xt, *[to_torch(torch, r) for r in rest])
    out.backward(torch.ones_like(out) if upstream is None else to_torch(torch, upstream))
    return out.detach().numpy(), xt.grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(6,), (3, 4), ()], ids=["NC", "NCd", "C"])
def test_cross_entropy_matches_torch(torch, dtype, reduction, smoothing, shape):
    F = torch.nn.functional
    if shape == ():
        rng = np.random.default_rng(0)
        x, t = rng.standard_normal(5) * 3, np.array(2)
    else:
        x, t = ce_inputs(1, shape, 5, ignore_frac=0.3)
    x = x.astype(dtype)
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    ours = loss(x, t)
    up = np.random.default_rng(2).standard_normal(np.shape(ours)).astype(dtype) if reduction == "none" else 1.0
    dx = loss.backward(up)
    theirs, gx = torch_loss_and_grad(
        torch, lambda a, b: F.cross_entropy(a, b, reduction=reduction, label_smoothing=smoothing),
        x, t, upstream=None if reduction != "none" else up)
    assert_close(np.asarray(ours, dtype=dtype), torch.from_numpy(np.asarray(theirs)), dtype)
    assert dx.dtype == dtype
    assert_close(dx, gx)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_other_losses_match_torch(torch, dtype, reduction):
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 6)) * 3).astype(dtype)
    t = rng.integers(0, 6, 4)
    t[1] = -100
    y = rng.random((4, 6)).astype(dtype)
    cases = [
        (nn.NLLLoss(reduction=reduction), (x, t), lambda a, b: F.nll_loss(a, b, reduction=reduction)),
        (nn.BCEWithLogitsLoss(reduction=reduction), (x, y),
         lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction)),
        (nn.MSELoss(reduction=reduction), (x, y), lambda a, b: F.mse_loss(a, b, reduction=reduction)),
    ]
    for loss, args, ref in cases:
        ours = loss(*args)
        up = rng.standard_normal(np.shape(ours)).astype(dtype) if reduction == "none" else 1.0
        dx = loss.backward(up)
        theirs, gx = torch_loss_and_grad(torch, ref, *args, upstream=None if reduction != "none" else up)
        assert_close(np.asarray(ours, dtype=dtype), torch.from_numpy(np.asarray(theirs)), dtype)
        assert dx.dtype == dtype
        assert_close(dx, gx)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_kl_matches_torch_formula(torch, reduction):
    rng = np.random.default_rng(4)
    mu, logvar = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    loss = nn.GaussianKLLoss(reduction=reduction)
    ours = loss(mu, logvar)
    up = 0.7 if reduction != "none" else rng.standard_normal(5)
    dmu, dlv = loss.backward(up)
    mt, lt = to_torch(torch, mu, grad=True), to_torch(torch, logvar, grad=True)
    per = -0.5 * torch.sum(1 + lt - mt.pow(2) - lt.exp(), dim=-1)
    # the same as torch.distributions' analytic KL between Normal(mu, sigma) and N(0, 1)
    D = torch.distributions
    kl = D.kl_divergence(D.Normal(mt, (0.5 * lt).exp()), D.Normal(torch.zeros_like(mt), torch.ones_like(mt))).sum(-1)
    torch.testing.assert_close(per, kl)
    ref = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    ref.backward(torch.as_tensor(up, dtype=ref.dtype).expand_as(ref))
    assert_close(np.asarray(ours), ref)
    assert_close(dmu, mt.grad)
    assert_close(dlv, lt.grad)


def test_all_targets_ignored_follows_torch():
    x = np.random.default_rng(0).standard_normal((3, 4))
    t = np.full(3, -100)
    loss = nn.CrossEntropyLoss()
    assert np.isnan(loss(x, t))                       # torch: 0/0 = nan for 'mean'
    assert np.array_equal(loss.backward(), np.zeros_like(x))   # ... and a zero gradient
    assert nn.CrossEntropyLoss(reduction="sum")(x, t) == 0.0
    assert np.array_equal(nn.CrossEntropyLoss(reduction="none")(x, t), np.zeros(3))
    assert np.isnan(nn.NLLLoss()(x, t))


def test_custom_ignore_index():
    x = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, 7, 2, 7])
    loss = nn.CrossEntropyLoss(ignore_index=7)
    value = loss(x, t)
    ref = nn.CrossEntropyLoss()(x[[0, 2]], t[[0, 2]])
    assert np.isclose(value, ref)
    assert np.all(loss.backward()[[1, 3]] == 0)


def test_losses_finite_at_extreme_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 1.0]], dtype=np.float32)
    t = np.array([1, 0])
    ce = nn.CrossEntropyLoss()
    assert np.isfinite(ce(x, t)) and np.all(np.isfinite(ce.backward()))
    bce = nn.BCEWithLogitsLoss()
    v = bce(x, np.array([[0, 1, 1], [1, 0, 0]], dtype=np.float32))
    assert np.isfinite(v) and np.all(np.isfinite(bce.backward()))
    assert np.isclose(nn.BCEWithLogitsLoss()(np.array([800.0]), np.array([1.0])), 0.0)
    assert np.isclose(nn.BCEWithLogitsLoss()(np.array([-800.0]), np.array([1.0])), 800.0)


def test_nll_accepts_log_zero(torch):
    x = np.array([[0.0, -np.inf], [np.log(0.5), np.log(0.5)]])
    t = np.array([0, 1])
    loss = nn.NLLLoss()
    ours = loss(x, t)
    ref = torch.nn.functional.nll_loss(torch.from_numpy(x), torch.from_numpy(t))
    assert np.isclose(ours, ref.item())
    assert np.all(np.isfinite(loss.backward()))


def test_loss_backward_requires_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()
