"""Every layer: gradient check in float64 over hypothesis-drawn shapes and values, and equality
with torch.nn (forward output, input gradient, every parameter gradient) in float64 and float32."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import assert_close, copy_weights_to_torch, to_torch
from scratchlm import nn
from scratchlm.gradcheck import check_module
from scratchlm.testing import arrays, shapes, token_ids

F64 = np.float64


def perturb(module, seed):
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data += (0.5 * rng.standard_normal(p.shape)).astype(p.dtype)
    return module


def assert_gradcheck(module, *inputs):
    report = check_module(module, *inputs)
    assert report.ok, str(report)
    assert report.max_rel <= 1e-6


# ------------------------------------------------------------------------------------------------
# gradient checks over drawn shapes
# ------------------------------------------------------------------------------------------------
@given(shape=shapes(1, 3, 1, 5), out=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 99))
def test_linear_gradcheck(shape, out, bias, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    m = nn.Linear(shape[-1], out, bias=bias, dtype=F64, rng=seed)
    assert_gradcheck(m, x)


@given(ids=token_ids(st.integers(2, 9).map(lambda v: v), shapes(1, 2, 1, 5)), dim=st.integers(1, 4))
def test_embedding_gradcheck(ids, dim):
    m = nn.Embedding(int(ids.max()) + 1, dim, dtype=F64, rng=0)
    assert_gradcheck(m, ids)


@given(x=arrays(shapes(2, 3, 1, 5)), seed=st.integers(0, 99))
def test_layernorm_gradcheck(x, seed):
    assert_gradcheck(perturb(nn.LayerNorm(x.shape[-1], dtype=F64), seed), x)


@given(x=arrays(shapes(3, 3, 1, 4)), seed=st.integers(0, 99), affine=st.booleans())
def test_layernorm_multi_axis_gradcheck(x, seed, affine):
    m = nn.LayerNorm(x.shape[-2:], elementwise_affine=affine, dtype=F64)
    assert_gradcheck(perturb(m, seed), x)


@pytest.mark.parametrize("make", [nn.ReLU, nn.Tanh, nn.Sigmoid, lambda: nn.GELU(),
                                  lambda: nn.GELU("tanh")], ids=["relu", "tanh", "sigmoid", "gelu", "gelu_tanh"])
@given(x=arrays(shapes(1, 3, 1, 5), scale=2.0, min_abs=1e-2))
def test_activation_gradcheck(make, x):
    assert_gradcheck(make(), x)


@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
@given(x=arrays(shapes(1, 3, 1, 5), scale=3.0), data=st.data())
def test_softmax_gradcheck(cls, x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    assert_gradcheck(cls(dim=dim), x)


@given(x=arrays(shapes(1, 3, 1, 6)), p=st.sampled_from([0.0, 0.2, 0.5, 0.9]), seed=st.integers(0, 99))
def test_dropout_gradcheck(x, p, seed):
    assert_gradcheck(nn.Dropout(p, rng=seed), x)


@given(x=arrays(shapes(2, 4, 1, 4)))
def test_flatten_gradcheck(x):
    assert_gradcheck(nn.Flatten(), x)


@given(x=arrays(shapes(2, 2, 1, 4)), seed=st.integers(0, 99))
def test_sequential_gradcheck(x, seed):
    d = x.shape[-1]
    m = nn.Sequential(nn.Linear(d, 6, dtype=F64, rng=seed), nn.GELU("tanh"), nn.Dropout(0.1, rng=seed),
                      nn.LayerNorm(6, dtype=F64), nn.Linear(6, 3, dtype=F64, rng=seed + 1))
    assert_gradcheck(perturb(m, seed), x)


# ------------------------------------------------------------------------------------------------
# parity with torch.nn: same weights -> same outputs and gradients
# ------------------------------------------------------------------------------------------------
def run_both(torch, ours, theirs, x, dtype, seed=0):
    """Forward and backward through both with the same random upstream gradient; compare all."""
    rng = np.random.default_rng(seed)
    x = x.astype(dtype) if x.dtype.kind == "f" else x
    y = ours(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ours.backward(dy)
    xt = to_torch(torch, x, grad=x.dtype.kind == "f")
    yt = theirs(xt)
    yt.backward(to_torch(torch, dy))
    assert y.dtype == dtype
    assert_close(y, yt)
    if x.dtype.kind == "f":
        assert dx.dtype == dtype
        assert_close(dx, xt.grad)
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad.dtype == dtype
        assert_close(p.grad, tparams[name].grad)


DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(torch, dtype, bias):
    ours = nn.Linear(7, 5, bias=bias, dtype=dtype, rng=1)
    theirs = copy_weights_to_torch(torch, ours, torch.nn.Linear(7, 5, bias=bias, dtype=getattr(torch, np.dtype(dtype).name)))
    run_both(torch, ours, theirs, np.random.default_rng(2).standard_normal((3, 4, 7)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(torch, dtype):
    ours = nn.Embedding(10, 6, padding_idx=3, dtype=dtype, rng=1)
    assert np.all(ours.weight.data[3] == 0)
    theirs = copy_weights_to_torch(torch, ours, torch.nn.Embedding(10, 6, padding_idx=3, dtype=getattr(torch, np.dtype(dtype).name)))
    ids = np.array([[1, 3, 3, 9], [0, 1, 1, 3]])
    run_both(torch, ours, theirs, ids, dtype)
    assert np.all(ours.weight.grad[3] == 0)   # the padding row gets no gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kwargs", [((8,), {}), ((2, 4), {}), ((8,), {"bias": False}),
                                          ((8,), {"elementwise_affine": False}), ((8,), {"eps": 1e-3})])
def test_layernorm_matches_torch(torch, dtype, shape, kwargs):
    ours = perturb(nn.LayerNorm(shape, dtype=dtype, **kwargs), 3)
    theirs = copy_weights_to_torch(torch, ours, torch.nn.LayerNorm(shape, dtype=getattr(torch, np.dtype(dtype).name), **kwargs))
    x = np.random.default_rng(4).standard_normal((3, 5) + shape) * 2 + 1
    run_both(torch, ours, theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["ReLU", "Tanh", "Sigmoid", "GELU", "GELU-tanh", "Softmax", "LogSoftmax", "Flatten"])
def test_parameter_free_layers_match_torch(torch, dtype, name):
    make = {
        "ReLU": (nn.ReLU, torch.nn.ReLU), "Tanh": (nn.Tanh, torch.nn.Tanh),
        "Sigmoid": (nn.Sigmoid, torch.nn.Sigmoid),
        "GELU": (nn.GELU, torch.nn.GELU),
        "GELU-tanh": (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh")),
        "Softmax": (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1)),
        "LogSoftmax": (lambda: nn.LogSoftmax(dim=-1), lambda: torch.nn.LogSoftmax(dim=-1)),
        "Flatten": (nn.Flatten, torch.nn.Flatten),
    }[name]
    x = np.random.default_rng(5).standard_normal((3, 4, 5)) * 4
    run_both(torch, make[0](), make[1](), x, dtype)


def test_sigmoid_and_softmax_stay_finite_at_extremes():
    x = np.array([[-1e300, 0.0, 1e300], [-745.0, 710.0, 3.0]])
    for m in (nn.Sigmoid(), nn.Softmax(), nn.LogSoftmax()):
        y = m(x)
        assert np.all(np.isfinite(y)), (m, y)
    assert np.allclose(nn.Softmax()(x)[0], [0, 0, 1])


def test_dropout_semantics():
    x = np.ones((200, 50), np.float32)
    d = nn.Dropout(0.3, rng=0)
    y = d(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    assert np.allclose(y[kept], 1 / 0.7)
    assert np.array_equal(d.backward(np.ones_like(x)), y)       # dx = dy * mask
    d.eval()
    assert d(x) is x or np.array_equal(d(x), x)
    assert np.all(nn.Dropout(1.0, rng=0)(x) == 0)
    # same seed -> same mask; generators are per layer, never global
    assert np.array_equal(nn.Dropout(0.5, rng=7)(x), nn.Dropout(0.5, rng=7)(x))


def test_default_initialisation_matches_torch_distributions():
    m = nn.Linear(400, 300, rng=0)
    bound = 1 / np.sqrt(400)
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.weight.data).max() > 0.95 * bound
    assert abs(m.weight.data.std() - bound / np.sqrt(3)) < 1e-3
    e = nn.Embedding(500, 200, rng=0)
    assert abs(e.weight.data.std() - 1) < 0.01
    ln = nn.LayerNorm(5)
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
