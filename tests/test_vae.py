"""The VAE and the document VAE (NVDM): gradient checks of the whole models and of each part,
PyTorch parity of the loss and every gradient, the bounds (ELBO, IWAE), finiteness at extreme
values, bad input, the training loop (bit-identical resume, KL warm-up) and short training runs
on the built-in images and documents."""

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.data import binarize, load_digits_dataset
from scratchlm.data.documents import STOP_WORDS, document_words, load_documents_dataset
from scratchlm.functional import (free_bits_kl_backward, free_bits_kl_forward,
                                  reparameterize_backward, reparameterize_forward)
from scratchlm.gradcheck import check_function, check_module
from scratchlm.io import read_checkpoint
from scratchlm.models.nvdm import DocumentVAE
from scratchlm.models.vae import VAE, elbo, iwae_bound
from scratchlm.training import fit_vae

from conftest import assert_close, to_torch

F64 = np.float64


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def binary(n, d, seed=0, dtype=F64):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(dtype)


def counts(n, v, seed=0, dtype=F64):
    return np.random.default_rng(seed).poisson(0.8, (n, v)).astype(dtype)


def margin(model, x, eps):
    """The smallest distance of a ReLU input (fc1's and the decoder's) or of a pre-clamp
    log-variance to its kink or bound: a gradient check needs it well above the step h."""
    m = model.clone().double()
    x = x.reshape(len(x), -1).astype(F64)
    pre1 = x @ m.fc1.weight.data.T + m.fc1.bias.data
    h = np.maximum(pre1, 0)
    mu = h @ m.fc21.weight.data.T + m.fc21.bias.data
    lv_pre = h @ m.fc22.weight.data.T + m.fc22.bias.data
    lo, hi = m.config.logvar_min, m.config.logvar_max
    out = [np.abs(pre1).min(), np.abs(lv_pre - lo).min(), np.abs(lv_pre - hi).min()]
    if isinstance(model, VAE):
        z = mu + np.exp(0.5 * np.clip(lv_pre, lo, hi)) * eps
        out.append(np.abs(z @ m.fc3.weight.data.T + m.fc3.bias.data).min())
    return float(min(out))


def make_case(make, data, B=4, seed=0, need=2e-3):
    """The first seed giving a model, inputs and eps whose kinks are all ``need`` away."""
    for s in range(seed, seed + 50):
        model = make(s)
        x = data(B, s)
        eps = np.random.default_rng(100 + s).standard_normal((B, model.latent_dim))
        if margin(model, x, eps) > need:
            return model, x, eps
    raise AssertionError("no seed keeps the inputs away from the kinks")


class LossOf(nn.Module):
    """``forward(x, eps) -> model.loss(x, eps)``; ``backward(d) -> model.backward(dloss=d)``."""

    differentiable_inputs = ()

    def __init__(self, model, **kw):
        super().__init__()
        self.model = model
        self.kw = kw

    def forward(self, x, eps):
        return self.model.loss(x, eps, **self.kw)

    def backward(self, dloss):
        return self.model.backward(dloss=dloss)


def tiny_vae(lik="bernoulli", **kw):
    return lambda s: VAE(7, 6, 3, likelihood=lik, dtype=F64, rng=s, **kw)


def vae_data(lik):
    return (lambda B, s: binary(B, 7, s)) if lik == "bernoulli" else \
        (lambda B, s: np.random.default_rng(s).standard_normal((B, 7)))


# ================================================================================================
# structure
# ================================================================================================
def test_names_shapes_and_config():
    m = VAE(rng=0)
    assert [(n, p.shape) for n, p in m.named_parameters()] == [
        ("fc1.weight", (400, 784)), ("fc1.bias", (400,)), ("fc21.weight", (20, 400)),
        ("fc21.bias", (20,)), ("fc22.weight", (20, 400)), ("fc22.bias", (20,)),
        ("fc3.weight", (400, 20)), ("fc3.bias", (400,)), ("fc4.weight", (784, 400)),
        ("fc4.bias", (784,))]
    assert list(m.state_dict()) == [n for n, _ in m.named_parameters()]
    assert m.fc1.weight.dtype == np.float32 and m.likelihood == "bernoulli"
    assert dict(m.generators()) == {"rng": m.rng}
    x = binary(5, 784, dtype=np.float32)
    out, mu, logvar = m(x)
    assert out.shape == (5, 784) and mu.shape == logvar.shape == (5, 20)
    assert out.dtype == mu.dtype == logvar.dtype == np.float32
    # images (B, 1, 28, 28) are flattened
    out2, mu2, _ = m(x.reshape(5, 1, 28, 28), eps=np.zeros((5, 20), np.float32))
    assert out2.shape == (5, 784)
    np.testing.assert_array_equal(mu2, mu)
    rebuilt = VAE.from_config(m.config_dict())
    assert rebuilt.config == m.config
    m.kl_weight, m.free_bits = 0.5, 0.1
    assert m.config_dict()["kl_weight"] == 0.5 and m.config_dict()["free_bits"] == 0.1
    d = DocumentVAE(50, 16, 4, rng=0)
    assert [n for n, _ in d.named_parameters()] == [
        "fc1.weight", "fc1.bias", "fc21.weight", "fc21.bias", "fc22.weight", "fc22.bias",
        "decoder.weight", "decoder.bias"]
    assert d.decoder.weight.shape == (50, 4)


def test_eps_comes_from_the_model_generator_and_fixes_the_forward():
    x = binary(4, 7)
    a, b = tiny_vae()(0), tiny_vae()(0)
    losses = [a.loss(x) for _ in range(2)]
    assert losses == [b.loss(x) for _ in range(2)]            # same seed, same noise
    assert losses[0] != losses[1]                              # the generator advances
    eps = np.random.default_rng(1).standard_normal((4, 3))
    first = a.loss(x, eps)
    a.loss(x)
    assert a.loss(x, eps) == first                             # eps given: deterministic
    state = a.rng.bit_generator.state
    a(x, eps)
    assert a.rng.bit_generator.state == state                  # and the generator is untouched


# ================================================================================================
# gradient checks (float64)
# ================================================================================================
@pytest.mark.parametrize("lik", ["bernoulli", "gaussian"])
def test_gradcheck_whole_vae_outputs(lik):
    """backward(dout, dmu, dlogvar) with random upstream gradients, eps fixed."""
    model, x, eps = make_case(tiny_vae(lik), vae_data(lik))
    report = check_module(model, x, eps)
    assert report.ok, str(report)


@pytest.mark.parametrize("lik,kw", [
    ("bernoulli", {}),
    ("gaussian", {}),
    ("bernoulli", {"kl_weight": 0.3, "free_bits": 0.05}),
    ("gaussian", {"kl_weight": 2.0, "free_bits": 0.05, "logvar_min": -0.4, "logvar_max": 0.3}),
])
def test_gradcheck_whole_vae_loss(lik, kw):
    """The loss (negative ELBO, or with beta, free bits and an active clamp) with eps fixed."""
    model, x, eps = make_case(tiny_vae(lik, **kw), vae_data(lik), B=5)
    report = check_module(LossOf(model), x, eps)
    assert report.ok, str(report)


def test_gradcheck_with_free_bits_on_both_sides_of_the_floor_and_the_clamp_active():
    """A floor between the dimensions' KLs (some held, some not) and a clamp range that cuts
    some log-variances: both stop their gradient exactly."""
    model, x, eps = make_case(tiny_vae(logvar_min=-0.2, logvar_max=0.2), vae_data("bernoulli"), B=6)
    model.loss(x, eps)
    kl = np.sort(model.last_stats["kl_per_dim"])
    model.free_bits = float((kl[0] + kl[1]) / 2)              # dimension 0 below, others above
    _, _, logvar = model(x, eps)
    assert (np.abs(logvar) == 0.2).any() and (np.abs(logvar) < 0.2).any()
    report = check_module(LossOf(model), x, eps)
    assert report.ok, str(report)
    # every dimension held at the floor: the KL adds a constant and exactly no gradient
    model.free_bits = 1e6
    model.zero_grad()
    assert model.loss(x, eps) == pytest.approx(model.last_stats["recon"] + 3e6)
    model.backward()
    held = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model.loss(x, eps, kl_weight=0.0)
    model.backward()
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, held[n], err_msg=n)


def test_gradcheck_parts():
    """Each op on its own: the reparameterisation (to mu, logvar and eps) and the free-bits KL."""
    r = np.random.default_rng(0)
    mu, lv, eps = r.standard_normal((4, 3)), r.standard_normal((4, 3)), r.standard_normal((4, 3))
    assert check_function(reparameterize_forward, reparameterize_backward, mu, lv, eps).ok
    for lam in (0.0, 0.4):
        rep = check_function(lambda m, v: free_bits_kl_forward(m, v, lam),
                             free_bits_kl_backward, mu, lv)
        assert rep.ok, str(rep)
    value, cache = free_bits_kl_forward(mu, lv, 0.4)
    kl_dim = cache.kl_per_dim
    assert ((kl_dim < 0.4) & (kl_dim > 0)).any()                      # the floor is active
    assert value == pytest.approx(np.maximum(kl_dim, 0.4).sum())


class _Encoder(nn.Module):
    differentiable_inputs = ()

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model._encode(x)

    def backward(self, dmu, dlogvar):
        self.model._encode_backward(dmu, dlogvar)


class _Decoder(nn.Module):
    def __init__(self, model, x):
        super().__init__()
        self.model, self.x = model, x

    def forward(self, z):
        out = self.model._decode(z)
        x = self.x.astype(self.model.dtype)                   # (the float32 property too)
        loss, self._cache = self.model._nll_forward(out, x)
        return out, loss

    def backward(self, dout, dloss):
        return self.model._decode_backward(dout + self.model._nll_backward(dloss, self._cache))


@pytest.mark.parametrize("lik", ["bernoulli", "gaussian"])
def test_gradcheck_encoder_and_decoder_with_reconstruction(lik):
    model, x, eps = make_case(tiny_vae(lik, logvar_min=-0.3, logvar_max=0.3), vae_data(lik))
    assert check_module(_Encoder(model), x).ok
    z = np.random.default_rng(5).standard_normal((4, 3))
    for s in range(20):                      # a z whose fc3 inputs are away from the kink
        z = np.random.default_rng(s).standard_normal((4, 3))
        if np.abs(z @ model.fc3.weight.data.T + model.fc3.bias.data).min() > 2e-3:
            break
    report = check_module(_Decoder(model, x), z)
    assert report.ok, str(report)


def test_gradcheck_document_vae():
    make = lambda s: DocumentVAE(9, 6, 3, kl_weight=0.7, free_bits=0.01, dtype=F64, rng=s)  # noqa
    model, x, eps = make_case(make, lambda B, s: counts(B, 9, s))
    assert check_module(model, x, eps).ok
    report = check_module(LossOf(model), x, eps)
    assert report.ok, str(report)
    report = check_module(_Decoder(model, x), eps)            # decoder + multinomial NLL
    assert report.ok, str(report)


# ================================================================================================
# PyTorch parity
# ================================================================================================
def torch_reference(torch, ours):
    from benchmarks.workloads.vae import torch_vae
    return torch_vae(torch, ours)


@pytest.mark.torch
@pytest.mark.parametrize("lik,kw", [
    ("bernoulli", {}),
    ("gaussian", {}),
    ("bernoulli", {"kl_weight": 0.25, "free_bits": 0.031, "logvar_min": -0.3, "logvar_max": 0.15}),
    ("gaussian", {"kl_weight": 3.0, "free_bits": 0.05}),
])
def test_matches_torch_float64(torch, lik, kw):
    """Outputs, the loss and every parameter gradient, same weights and eps; the free-bits
    floor holds some dimensions and not others, and the clamp cuts some log-variances."""
    from benchmarks.workloads.vae import torch_vae_loss
    ours = VAE(12, 10, 4, likelihood=lik, dtype=F64, rng=0, **kw)
    theirs = torch_reference(torch, ours)
    r = np.random.default_rng(1)
    x = binary(6, 12, 2) if lik == "bernoulli" else r.standard_normal((6, 12))
    eps = r.standard_normal((6, 4))
    loss = ours.loss(x, eps)
    ours.backward()
    kl = np.array(ours.last_stats["kl_per_dim"])
    out, mu, logvar = ours(x, eps)
    if ours.free_bits:
        assert (kl < ours.free_bits).any() and (kl > ours.free_bits).any()
    if "logvar_min" in kw:
        assert (logvar == kw["logvar_min"]).any() and (logvar == kw["logvar_max"]).any()
    to, tmu, tlv = theirs(to_torch(torch, x), to_torch(torch, eps))
    tloss = torch_vae_loss(torch, to, tmu, tlv, to_torch(torch, x), lik, ours.kl_weight,
                           ours.free_bits)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for a, b in ((out, to), (mu, tmu), (logvar, tlv)):
        assert_close(a, b)
    got = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert_close(got[name].grad, p.grad)


@pytest.mark.torch
def test_matches_torch_float32_and_through_the_outputs(torch):
    ours = VAE(20, 16, 5, rng=3)
    theirs = torch_reference(torch, ours)
    r = np.random.default_rng(4)
    x = binary(8, 20, 5, np.float32)
    eps = r.standard_normal((8, 5)).astype(np.float32)
    douts = [r.standard_normal(s).astype(np.float32) for s in ((8, 20), (8, 5), (8, 5))]
    outs = ours(x, eps)
    ours.backward(*douts)
    touts = theirs(to_torch(torch, x), to_torch(torch, eps))
    sum((t * to_torch(torch, d)).sum() for t, d in zip(touts, douts)).backward()
    for a, b in zip(outs, touts):
        assert_close(a, b)
    got = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(got[name].grad, p.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_document_vae_matches_torch_float64(torch):
    ours = DocumentVAE(15, 8, 3, free_bits=0.09, dtype=F64, rng=0)   # holds 1 of 3 dimensions
    r = np.random.default_rng(1)
    n, eps = counts(5, 15, 2), r.standard_normal((5, 3))
    loss = ours.loss(n, eps)
    ours.backward()
    tnn = torch.nn
    ref = tnn.ModuleDict({"fc1": tnn.Linear(15, 8), "fc21": tnn.Linear(8, 3),
                          "fc22": tnn.Linear(8, 3), "decoder": tnn.Linear(3, 15)}).double()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    tn = to_torch(torch, n)
    h = torch.relu(ref["fc1"](tn))
    mu, lv = ref["fc21"](h), ref["fc22"](h).clamp(-30, 20)
    z = mu + torch.exp(0.5 * lv) * to_torch(torch, eps)
    rec = -(tn * torch.log_softmax(ref["decoder"](z), dim=1)).sum() / 5
    kl = (-0.5 * (1 + lv - mu * mu - lv.exp())).mean(0).clamp(min=0.09).sum()
    (rec + kl).backward()
    assert loss == pytest.approx((rec + kl).item(), rel=1e-12)
    got = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(got[name].grad, p.grad)


# ================================================================================================
# extremes and bad input
# ================================================================================================
@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_extreme_logits_and_log_variances_stay_finite(dtype):
    m = VAE(16, 8, 4, dtype=dtype, rng=0)
    x = binary(6, 16, 1, dtype)
    m.fc4.weight.data *= 1e6                            # logits of order 1e6 .. 1e7
    m.fc22.bias.data[:] = [1e4, -1e4, 50.0, -50.0]      # clamped at 20 and -30 (both ends)
    m.fc21.bias.data[:] = 1e3                           # mu^2 ~ 1e6 in the KL
    loss = m.loss(x)
    m.backward()
    assert np.isfinite(loss) and np.isfinite(m.last_stats["kl"])
    _, _, logvar = m(x)
    assert logvar.max() == 20 and logvar.min() == -30
    for name, p in m.named_parameters():
        assert np.all(np.isfinite(p.grad)), name
    # outside the clamp the log-variance gets no gradient at all
    m.fc22.bias.data[:] = [1e4, -1e4, 1e4, -1e4]
    m.zero_grad()
    m.loss(x)
    m.backward()
    assert not m.fc22.weight.grad.any() and not m.fc22.bias.grad.any()
    assert np.isfinite(m.elbo(x)) and np.isfinite(m.iwae_bound(x, 5))
    # all-zero and all-one images
    m2 = VAE(16, 8, 4, dtype=dtype, rng=0)
    for v in (0.0, 1.0):
        assert np.isfinite(m2.loss(np.full((3, 16), v, dtype)))
    # huge inputs for the Gaussian likelihood: mu ~ 1e10, squared errors ~ 1e20
    g = VAE(16, 8, 4, likelihood="gaussian", dtype=dtype, rng=0)
    big = (np.random.default_rng(0).standard_normal((6, 16)) * 1e10).astype(dtype)
    assert np.isfinite(g.loss(big)) and np.isfinite(g.last_stats["kl"])
    g.backward()
    assert all(np.all(np.isfinite(p.grad)) for p in g.parameters())
    assert np.isfinite(g.elbo(big)) and np.isfinite(g.iwae_bound(big, 5))


def test_bad_input():
    m = VAE(16, 8, 4, rng=0)
    x = binary(3, 16, dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(B, 16\) \(B, input_dim\).*got \(3, 15\)"):
        m(x[:, :15])
    with pytest.raises(ValueError, match=r"shape \(B, 16\)"):
        m(x[0])
    bad = x.copy()
    bad[1, 3] = np.nan
    for call in (m.loss, m, m.encode, m.elbo, m.reconstruct):
        with pytest.raises(ValueError, match=r"x must be finite, got nan at index \(1, 3\)"):
            call(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\] for likelihood='bernoulli'"):
        m(x * 2)
    with pytest.raises(TypeError, match="float64 but VAE holds float32"):
        m(x.astype(F64))
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        m(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"eps must have shape \(B, latent_dim\) = \(3, 4\)"):
        m(x, np.zeros((3, 5), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        VAE(16, 8, 4).backward()
    m(x)
    with pytest.raises(RuntimeError, match="needs a loss"):
        m.backward()
    with pytest.raises(ValueError, match="forward output's shape"):
        m.backward(np.zeros((3, 15), np.float32))
    with pytest.raises(ValueError, match="finite"):
        m.backward(None, np.full((3, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="word counts"):
        DocumentVAE(5, 4, 2)(-np.ones((2, 5), np.float32))
    VAE(16, 8, 4, likelihood="gaussian")(x * 5 - 10)              # any real for the Gaussian
    for kw, exc, match in [({"likelihood": "poisson"}, ValueError, "likelihood must be one of"),
                           ({"latent_dim": 0}, ValueError, "latent_dim must be >= 1"),
                           ({"kl_weight": -1.0}, ValueError, "kl_weight must be"),
                           ({"free_bits": float("nan")}, ValueError, "free_bits must be"),
                           ({"logvar_min": 1.0, "logvar_max": 0.0}, ValueError,
                            "logvar_min must be <"),
                           ({"logvar_max": 100.0}, ValueError, "logvar_max must be <= 80"),
                           ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64")]:
        with pytest.raises(exc, match=match):
            VAE(**{"input_dim": 16, "hidden_dim": 8, "latent_dim": 4, **kw})
    with pytest.raises(ValueError, match="kl_weight must be"):
        m.kl_weight = -0.1
    with pytest.raises(ValueError, match="one example with 16 values"):
        m.interpolate(x[:2], x[2])
    with pytest.raises(ValueError, match="k must be >= 1"):
        m.iwae_bound(x, 0)


# ================================================================================================
# evaluation and use
# ================================================================================================
def test_sample_reconstruct_interpolate_and_no_cache_left():
    m = VAE(16, 8, 4, rng=0)
    x = binary(3, 16, dtype=np.float32)
    s = m.sample(5, rng=0)
    assert s.shape == (5, 16) and s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1
    np.testing.assert_array_equal(s, m.sample(5, rng=0))
    r = m.reconstruct(x)
    assert r.shape == (3, 16)
    path = m.interpolate(x[0], x[1].reshape(1, 4, 4), steps=5)
    assert path.shape == (5, 16)
    np.testing.assert_allclose(path[0], r[0], rtol=1e-6)
    np.testing.assert_allclose(path[-1], r[1], rtol=1e-6)
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward()
    g = VAE(16, 8, 4, likelihood="gaussian", rng=0)
    np.testing.assert_array_equal(g.reconstruct(x), g._decode_mean(g.encode(x)[0]))
    d = DocumentVAE(10, 6, 3, rng=0)
    np.testing.assert_allclose(d.sample(4, rng=0).sum(axis=1), 1.0, rtol=1e-5)


def test_elbo_equals_minus_loss_and_bounds_are_functions():
    m = VAE(16, 8, 4, dtype=F64, rng=0)
    x = binary(5, 16)
    eps = np.random.default_rng(3).standard_normal((5, 4))
    loss = m.loss(x, eps)
    assert m.last_stats["elbo"] == pytest.approx(-loss)
    # elbo() with the same draw gives the same number
    assert m.elbo(x, rng=np.random.default_rng(3)) != 0
    per = m.elbo(x, rng=7, reduction="none")
    assert per.shape == (5,) and elbo(m, x, rng=7) == pytest.approx(per.mean())
    assert iwae_bound(m, x, 3, rng=7) == pytest.approx(m.iwae_bound(x, 3, rng=7))


@pytest.fixture(scope="module")
def trained_digits():
    """A VAE trained for 600 steps on 2000 binarized 14x14 glyph digits (~0.5 s)."""
    train, test = load_digits_dataset(2000, 1000, seed=0, size=14)
    xtr, xte = binarize(train.images), binarize(test.images)
    m = VAE(196, 128, 8, rng=0)
    before = m.elbo(xte, rng=0)
    h = fit_vae(m, xtr, steps=600, batch_size=64, lr=2e-3, test=xte)
    return m, xte, before, h


def test_training_raises_the_elbo_substantially(trained_digits):
    """Held-out ELBO from about -138 nats (untrained) to about -36 after 600 Adam steps."""
    m, xte, before, h = trained_digits
    after = h["test_elbo"][-1]
    assert before < -120 and after > -45, (before, after)
    assert np.mean(h["elbo"][:5]) < -120 and np.mean(h["elbo"][-50:]) > -45   # training batches


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(trained_digits):
    """On 1000 held-out images: IWAE with k=1 is the ELBO in expectation; k=10 and k=100 are
    higher (when written: ELBO -36.12, k=1 -36.06, k=10 -35.32, k=100 -35.11)."""
    m, xte, _, _ = trained_digits
    e = m.elbo(xte, 10, rng=1)
    b1, b10, b100 = (m.iwae_bound(xte, k, rng=1) for k in (1, 10, 100))
    assert abs(b1 - e) < 0.3
    assert b10 > e + 0.3
    assert b100 > b10 + 0.05


# ================================================================================================
# training loop
# ================================================================================================
def test_kl_warmup_schedule_and_history():
    x = binary(64, 16, dtype=np.float32)
    m = VAE(16, 8, 4, kl_weight=0.5, rng=0)
    h = fit_vae(m, x, steps=6, batch_size=16, kl_warmup_steps=4)
    assert h["kl_weight"] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert m.kl_weight == 0.5                                  # the model is not modified
    for i in range(6):
        assert h["loss"][i] >= h["recon"][i] - 1e-9
        assert h["elbo"][i] == pytest.approx(-(h["recon"][i] + h["kl"][i]))


def test_fit_vae_resumes_bit_identically(tmp_path):
    x, xt = binary(200, 16, 0, np.float32), binary(40, 16, 1, np.float32)
    make = lambda rng=0: VAE(16, 12, 3, rng=rng)         # noqa: E731
    kw = dict(steps=12, batch_size=32, save_every=5, eval_every=4, kl_warmup_steps=6,
              schedule="cosine", warmup_steps=2, test=xt)
    straight = make()
    h1 = fit_vae(straight, x, checkpoint=tmp_path / "a.npz", **kw)

    class Stop(Exception):
        pass

    def interrupt(step, total, info):
        if step == 7:
            raise Stop
    with pytest.raises(Stop):
        fit_vae(make(), x, checkpoint=tmp_path / "b.npz", progress=interrupt, **kw)
    resumed = make(rng=99)
    h2 = fit_vae(resumed, x, checkpoint=tmp_path / "b.npz", resume=True, **kw)
    assert h2 == h1 and h1["eval_step"] == [4, 8, 12]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert straight.rng.bit_generator.state == resumed.rng.bit_generator.state
    arrays, doc = read_checkpoint(tmp_path / "b.npz")
    assert doc["module"] == "VAE" and doc["meta"]["loop"]["step"] == 12
    rebuilt = VAE.from_config(doc["meta"]["config"], dtype=arrays["model/fc1.weight"].dtype)
    rebuilt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    np.testing.assert_array_equal(rebuilt.reconstruct(xt), straight.reconstruct(xt))
    with pytest.raises(ValueError, match="holds a VAE, not a DocumentVAE"):
        fit_vae(DocumentVAE(16, 12, 3), x, checkpoint=tmp_path / "b.npz", resume=True, steps=13)


def test_fit_vae_bad_input(tmp_path):
    m = VAE(16, 8, 4, rng=0)
    x = binary(40, 16, dtype=np.float32)
    with pytest.raises(TypeError, match="model must be a VAE or a DocumentVAE"):
        fit_vae(object(), x, 1)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 16\)"):
        fit_vae(m, x[:, :10], 1)
    with pytest.raises(ValueError, match="batch_size"):
        fit_vae(m, x, 1, batch_size=41)
    with pytest.raises(ValueError, match="needs checkpoint="):
        fit_vae(m, x, 1, batch_size=8, resume=True)
    with pytest.raises(ValueError, match="meta must not use"):
        fit_vae(m, x, 1, batch_size=8, meta={"loop": 1})
    with pytest.raises(FileNotFoundError):
        fit_vae(m, x, 1, batch_size=8, checkpoint=tmp_path / "none.npz", resume=True)
    with pytest.raises(ValueError, match=r"\[0, 1\] for likelihood='bernoulli'"):
        fit_vae(m, x + 1, 1, batch_size=8)
    diverged = VAE(16, 8, 4, rng=0)
    diverged.fc4.bias.data[0] = np.inf
    with pytest.raises(FloatingPointError, match="loss became (nan|inf) at step 1"):
        fit_vae(diverged, x, 3, batch_size=8)


# ================================================================================================
# documents
# ================================================================================================
def test_document_words_and_dataset():
    assert document_words("The Quick brown-fox, a x jumps!") == ["quick", "brown", "fox", "jumps"]
    assert "the" in STOP_WORDS
    a = load_documents_dataset(vocab_size=500, seed=0)
    b = load_documents_dataset(vocab_size=500, seed=0)
    assert a.vocab == b.vocab and len(a.vocab) == 500
    np.testing.assert_array_equal(a.train.toarray(), b.train.toarray())
    assert a.train.shape[1] == a.test.shape[1] == 500
    assert a.train.shape[0] > 500 and a.test.shape[0] > 50
    dense = a.train.toarray()
    assert dense.sum(axis=1).min() >= 10 and dense.dtype == np.float32
    # the vocabulary is the training split's most frequent words, most frequent first, ties
    # alphabetical (with min_words=1 the kept documents hold every in-vocabulary word)
    c = load_documents_dataset(vocab_size=500, min_words=1, seed=0)
    freq = c.train.toarray().sum(axis=0)
    assert np.all(np.diff(freq) <= 0)
    assert all(c.vocab[i] < c.vocab[i + 1] for i in range(499) if freq[i] == freq[i + 1])
    text = "alpha beta gamma alpha\n\nbeta gamma delta\n\nalpha delta epsilon"
    s = load_documents_dataset(text, vocab_size=10, min_words=1, test_fraction=0.34)
    assert s.train.shape[0] + s.test.shape[0] <= 3
    with pytest.raises(ValueError, match="at least two paragraphs"):
        load_documents_dataset("just one paragraph")


def test_document_vae_trains_and_reports_perplexity():
    """300 steps on the built-in corpus' paragraphs (about 1 s): held-out perplexity (ELBO
    bound) falls from about 2000 (untrained) to below the add-one unigram model's (~770)."""
    data = load_documents_dataset()
    train, test = data.train, data.test
    m = DocumentVAE(len(data.vocab), 128, 16, rng=0)
    before = m.perplexity(test, rng=0)
    h = fit_vae(m, train, steps=400, batch_size=64, lr=2e-3, test=test, eval_every=200)
    n, t = train.toarray(), test.toarray()
    p = (n.sum(0) + 1) / (n.sum() + n.shape[1])
    unigram = float(np.exp(-(t * np.log(p)).sum() / t.sum()))
    after = h["test_perplexity"][-1]
    assert after == pytest.approx(m.perplexity(test, rng=0))
    assert before > 1500 and after < unigram, (before, after, unigram)
    assert m.perplexity(test, k=20, rng=0) < m.perplexity(test, n_samples=5, rng=0)
    per_doc = m.perplexity(test, rng=0, per_document=True)
    assert np.isfinite(per_doc) and per_doc > 1
    topics = m.topics(data.vocab, top=5)
    assert len(topics) == 16 and all(len(t) == 5 for t in topics)


def test_cli_train_vae_and_docvae(tmp_path, capsys):
    from scratchlm.cli import main
    ck = tmp_path / "vae.npz"
    assert main(["train", "vae", "--steps", "60", "--latent-dim", "2", "--hidden-size", "64",
                 "--out", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "held-out ELBO (nats)" in out and "IWAE bound k=50" in out and ck.exists()
    elbo_ = float(out.split("held-out ELBO (nats) ")[1].split(",")[0])
    iwae = float(out.split("500 images (nats) ")[1].split(";")[0])
    assert np.isfinite(elbo_) and elbo_ < 0
    assert iwae >= elbo_ - 1.0                       # a bound at least as tight (different draws)
    if str(tmp_path / "vae.png") in out:             # with matplotlib
        assert (tmp_path / "vae.png").stat().st_size > 5000
    assert main(["train", "vae", "--out", str(ck), "--resume"]) == 0      # finished: nothing to add
    ck2 = tmp_path / "doc.npz"
    assert main(["train", "docvae", "--steps", "40", "--out", str(ck2)]) == 0
    out = capsys.readouterr().out
    ppl = float(out.split("held-out perplexity ")[1].split(";")[0])
    assert 1 < ppl < 1e5
