"""Bad input gets a clear ValueError/TypeError naming the argument -- never a deep IndexError,
garbage, or a crash inside a Numba kernel."""

import numpy as np
import pytest

from scratchlm import functional as F, nn

X = np.ones((2, 3), np.float32)


@pytest.mark.parametrize("call,exc,words", [
    # wrong shape
    (lambda: nn.Linear(4, 2)(X), ValueError, ["x", "last dimension 4", "(2, 3)"]),
    (lambda: nn.LayerNorm(4)(X), ValueError, ["normalized_shape (4,)", "(2, 3)"]),
    (lambda: nn.CrossEntropyLoss()(X, np.array([0, 1, 2])), ValueError, ["target", "(2,)", "(3,)"]),
    (lambda: nn.MSELoss()(X, np.ones((3, 2), np.float32)), ValueError, ["target", "shape"]),
    (lambda: nn.GaussianKLLoss()(X, np.ones((2, 4), np.float32)), ValueError, ["logvar", "shape"]),
    (lambda: nn.Softmax(dim=3)(X), ValueError, ["dim", "[-2, 2)"]),
    (lambda: nn.Flatten(2, 1)(np.ones((2, 3, 4))), ValueError, ["flatten"]),
    # wrong dtype
    (lambda: nn.Linear(3, 2)(np.ones((2, 3), np.int64)), TypeError, ["x", "float32 or float64", "int64"]),
    (lambda: nn.ReLU()(np.ones(3, np.float16)), TypeError, ["x", "float16"]),
    (lambda: nn.ReLU()("abc"), TypeError, ["x", "numpy array", "str"]),
    (lambda: nn.Linear(3, 2)(np.ones((2, 3))), TypeError, ["float64", "float32"]),
    (lambda: nn.MSELoss()(X, np.ones((2, 3))), TypeError, ["target", "float64"]),
    (lambda: nn.Embedding(5, 2)(np.array([0.0, 1.0])), TypeError, ["ids", "integer", "float64"]),
    (lambda: nn.Embedding(5, 2)(np.array([True, False])), TypeError, ["ids", "integer", "bool"]),
    (lambda: nn.CrossEntropyLoss()(X, np.array([0.0, 1.0])), TypeError, ["target", "integer"]),
    # NaN / inf
    (lambda: nn.Linear(3, 2)(np.array([[1, np.nan, 0]], np.float32)), ValueError, ["x", "finite", "nan", "(0, 1)"]),
    (lambda: nn.GELU()(np.array([np.inf])), ValueError, ["x", "finite", "inf"]),
    (lambda: nn.CrossEntropyLoss()(np.array([[0.0, -np.inf]]), np.array([0])), ValueError, ["input", "finite"]),
    # ids out of range or negative
    (lambda: nn.Embedding(5, 2)(np.array([[0, 5]])), ValueError, ["ids", "[0, 5)", "got 5", "(0, 1)"]),
    (lambda: nn.Embedding(5, 2)(np.array([1, -1])), ValueError, ["ids", "got -1"]),
    (lambda: nn.CrossEntropyLoss()(X, np.array([0, 3])), ValueError, ["target", "[0, 3)", "got 3"]),
    (lambda: nn.CrossEntropyLoss()(X, np.array([0, -2])), ValueError, ["target", "got -2", "-100"]),
    (lambda: nn.NLLLoss()(X, np.array([0, 7])), ValueError, ["target", "got 7"]),
    # empty arrays
    (lambda: nn.Linear(3, 2)(np.ones((0, 3), np.float32)), ValueError, ["x", "empty", "(0, 3)"]),
    (lambda: nn.Embedding(5, 2)(np.array([], np.int64)), ValueError, ["ids", "empty"]),
    (lambda: nn.CrossEntropyLoss()(np.ones((0, 3)), np.array([], np.int64)), ValueError, ["input", "empty"]),
    # bad hyperparameters
    (lambda: nn.Linear(0, 2), ValueError, ["in_features", ">= 1", "0"]),
    (lambda: nn.Linear(2.5, 2), TypeError, ["in_features", "int"]),
    (lambda: nn.Dropout(1.5), ValueError, ["p", "[0, 1]", "1.5"]),
    (lambda: nn.GELU("fast"), ValueError, ["approximate", "'fast'"]),
    (lambda: nn.CrossEntropyLoss(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    (lambda: nn.CrossEntropyLoss(label_smoothing=2), ValueError, ["label_smoothing"]),
    (lambda: nn.Embedding(5, 2, padding_idx=5), ValueError, ["padding_idx"]),
    (lambda: nn.Linear(2, 2, rng="seed"), TypeError, ["rng", "Generator"]),
    (lambda: nn.Linear(2, 2, dtype=np.int32), TypeError, ["dtype", "int32"]),
    (lambda: nn.Linear(2, 2, bias="no"), TypeError, ["bias", "True or False"]),
    (lambda: nn.Dropout("x"), TypeError, ["p", "number", "str"]),
    (lambda: nn.LayerNorm("abc"), TypeError, ["normalized_shape"]),
    (lambda: nn.LayerNorm((3, 0)), ValueError, ["normalized_shape", ">= 1"]),
    (lambda: nn.LayerNorm(3, eps=-1), ValueError, ["eps", ">= 0"]),
    (lambda: nn.Embedding(5, 2, padding_idx=1.5), TypeError, ["padding_idx", "int"]),
    (lambda: nn.Softmax(dim="a"), TypeError, ["dim", "int"]),
    (lambda: nn.Flatten(start_dim=0.5), TypeError, ["start_dim", "int"]),
    (lambda: nn.CrossEntropyLoss(ignore_index=0.5), TypeError, ["ignore_index", "int"]),
    (lambda: nn.CrossEntropyLoss(np.ones(3)), TypeError, ["positional"]),
    (lambda: nn.NLLLoss()(np.array([[np.nan, 0.0]]), np.array([0])), ValueError, ["input", "NaN"]),
    (lambda: F.dropout_forward(X, 0.5, True, rng=None), TypeError, ["rng", "Generator"]),
    # wrong upstream gradient for reduction='none'
    (lambda: (lambda l: (l(X, np.array([0, 1])), l.backward(np.ones(3, np.float32))))(nn.CrossEntropyLoss(reduction="none")),
     ValueError, ["dloss", "(2,)", "(3,)"]),
])
def test_bad_input_is_named(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def _after_forward(module, *inputs):
    module(*inputs)
    return module


F32 = np.ones((4, 3), np.float32)
IDS = np.array([[0, 1], [2, 3]])


@pytest.mark.parametrize("make,dy,exc,words", [
    # wrong shape: every backward compares dy with the forward output before any kernel runs
    (lambda: _after_forward(nn.Embedding(5, 2), np.array([0, 1])), np.ones((6, 2), np.float32), ValueError, ["dy", "(2, 2)", "(6, 2)"]),
    (lambda: _after_forward(nn.Softmax(), F32), np.ones((2, 3), np.float32), ValueError, ["dy", "(4, 3)", "(2, 3)"]),
    (lambda: _after_forward(nn.LogSoftmax(), F32), np.ones(3, np.float32), ValueError, ["dy", "(4, 3)"]),
    (lambda: _after_forward(nn.GELU("tanh"), F32), np.ones(12, np.float32), ValueError, ["dy", "(4, 3)", "(12,)"]),
    (lambda: _after_forward(nn.LayerNorm(3), F32), np.ones((3, 4), np.float32), ValueError, ["dy", "(4, 3)", "(3, 4)"]),
    (lambda: _after_forward(nn.Flatten(), np.ones((2, 3, 2), np.float32)), np.ones((3, 4), np.float32), ValueError, ["dy", "(2, 6)"]),
    (lambda: _after_forward(nn.ReLU(), F32), np.ones(3, np.float32), ValueError, ["dy", "(4, 3)"]),
    (lambda: _after_forward(nn.Dropout(0.5, rng=0), F32), np.ones((1, 3), np.float32), ValueError, ["dy", "(4, 3)"]),
    (lambda: _after_forward(nn.Linear(3, 2), F32), np.ones((4, 3), np.float32), ValueError, ["dy", "(4, 2)", "(4, 3)"]),
    # wrong dtype: no silent promotion in backward either
    (lambda: _after_forward(nn.Linear(3, 2), F32), np.ones((4, 2)), TypeError, ["dy", "float64", "float32"]),
    (lambda: _after_forward(nn.Tanh(), F32), np.ones((4, 3)), TypeError, ["dy", "float64", "float32"]),
    (lambda: _after_forward(nn.Embedding(5, 2), IDS), np.ones((2, 2, 2)), TypeError, ["dy", "float64"]),
    (lambda: _after_forward(nn.Sigmoid(), F32), [[1.0] * 3] * 4, TypeError, ["dy", "numpy array", "list"]),
    # NaN in the upstream gradient
    (lambda: _after_forward(nn.Linear(3, 2), F32), np.full((4, 2), np.nan, np.float32), ValueError, ["dy", "finite"]),
    (lambda: _after_forward(nn.LayerNorm(3), F32), np.full((4, 3), np.inf, np.float32), ValueError, ["dy", "finite"]),
])
def test_bad_upstream_gradient_is_named(make, dy, exc, words):
    module = make()
    with pytest.raises(exc) as info:
        module.backward(dy)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("dloss,exc,words", [
    (np.ones(2), ValueError, ["dloss", "scalar", "(2,)"]),
    ("one", TypeError, ["dloss", "real number", "str"]),
    (float("nan"), ValueError, ["dloss", "finite"]),
])
def test_bad_loss_upstream_is_named(dloss, exc, words):
    loss = nn.CrossEntropyLoss()
    loss(F32, np.array([0, 1, 2, 0]))
    with pytest.raises(exc) as info:
        loss.backward(dloss)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"
