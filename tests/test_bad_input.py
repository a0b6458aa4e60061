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
    (lambda: F.dropout_forward(X, 0.5, True, rng=None), TypeError, ["rng", "Generator"]),
    # wrong upstream gradient for reduction='none'
    (lambda: (lambda l: (l(X, np.array([0, 1])), l.backward(np.ones(3))))(nn.CrossEntropyLoss(reduction="none")),
     ValueError, ["dloss", "(2,)", "(3,)"]),
])
def test_bad_input_is_named(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
