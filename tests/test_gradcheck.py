"""The public checker catches what it must: wrong gradients, non-accumulation, promotion,
non-determinism; and passes correct layers. Also the hypothesis strategies it ships."""

import numpy as np
import pytest
from hypothesis import given

from scratchlm import functional as F, nn
from scratchlm.gradcheck import GradcheckError, check_function, check_module
from scratchlm.testing import arrays, shapes, token_ids


class Scale(nn.Module):
    """y = w * x with a deliberately configurable bug."""

    def __init__(self, n, bug=None):
        super().__init__()
        self.w = nn.Parameter(np.linspace(0.5, 1.5, n))
        self.bug = bug

    def forward(self, x):
        self._cache = x
        if self.bug == "promote":
            return x * self.w.data.astype(np.float64)
        if self.bug == "random":
            return x * self.w.data * np.random.default_rng().random()
        return x * self.w.data

    def backward(self, dy):
        x = self._cache
        if self.bug == "overwrite":
            self.w.grad = (dy * x).sum(axis=0)            # overwrites instead of accumulating
        elif self.bug == "wrong_dw":
            self.w.grad += (dy * x).sum(axis=0) * 1.001
        else:
            self.w.grad += (dy * x).sum(axis=0).astype(self.w.dtype)
        if self.bug == "transposed_dx":
            return dy[::-1] * self.w.data
        return dy * self.w.data


X = np.random.default_rng(0).standard_normal((4, 3))


def test_correct_module_passes_and_prints_a_table():
    report = check_module(Scale(3), X)
    assert report.ok
    text = str(report)
    for word in ("input[0]", "w", "max rel err", "accumulates", "float32", "deterministic", "PASS"):
        assert word in text
    assert [t.checked for t in report.tensors] == [12, 3]


@pytest.mark.parametrize("bug,what", [("wrong_dw", "w"), ("transposed_dx", "input[0]")])
def test_wrong_gradient_is_caught(bug, what):
    report = check_module(Scale(3, bug), X)
    assert not report.ok
    failing = [t.name for t in report.tensors if not t.ok]
    assert failing == [what]
    with pytest.raises(GradcheckError):
        check_module(Scale(3, bug), X, raise_on_failure=True)


@pytest.mark.parametrize("bug,prop", [("overwrite", "accumulates"), ("promote", "float32"),
                                      ("random", "deterministic")])
def test_property_violations_are_caught(bug, prop):
    report = check_module(Scale(3, bug), X)
    failing = [p.name for p in report.properties if not p.ok]
    assert len(failing) >= 1 and any(prop in f for f in failing), str(report)


def test_large_tensors_are_sampled_and_reported():
    lin = nn.Linear(40, 30, dtype=np.float64, rng=0)
    report = check_module(lin, np.random.default_rng(1).standard_normal((2, 40)), max_entries=50)
    w = next(t for t in report.tensors if t.name == "weight")
    assert (w.checked, w.total) == (50, 1200)
    assert "50/1200" in str(report)
    assert report.ok


def test_check_function_with_pairs_and_integer_inputs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 3))
    ids = rng.integers(0, 7, (2, 4))
    report = check_function(F.embedding_forward, F.embedding_backward, ids, w)
    assert report.ok and [t.name for t in report.tensors] == ["input[1]"]     # ids skipped
    ln = check_function(F.layer_norm_forward, F.layer_norm_backward, rng.standard_normal((4, 3)), (3,),
                        rng.standard_normal(3), rng.standard_normal(3))
    assert ln.ok and [t.name for t in ln.tensors] == ["input[0]", "input[2]", "input[3]"]


def test_check_function_catches_wrong_backward():
    def fwd(x):
        return np.sin(x), x

    def bwd(dy, x):
        return dy * np.cos(x) * (1 + 1e-4)

    assert not check_function(fwd, bwd, np.linspace(-1, 1, 5)).ok
    assert check_function(fwd, lambda dy, x: dy * np.cos(x), np.linspace(-1, 1, 5)).ok


def test_upstream_gradient_is_random_not_ones():
    # a backward that ignores dy (correct only for dy = 1) must fail
    report = check_function(lambda x: (2 * x, None), lambda dy, c: np.full(3, 2.0), np.ones(3))
    assert not report.ok


def test_checker_does_not_modify_the_module():
    lin = nn.Linear(3, 2, rng=0)  # float32
    before = {k: v.copy() for k, v in lin.state_dict().items()}
    check_module(lin, X)
    assert lin.weight.dtype == np.float32
    assert all(np.array_equal(before[k], v) for k, v in lin.state_dict().items())


@given(shapes(2, 4, 2, 5))
def test_shapes_strategy(shape):
    assert 2 <= len(shape) <= 4 and all(2 <= s <= 5 for s in shape)


@given(arrays((3, 4), dtype=np.float32, min_abs=0.1, scale=2.0))
def test_arrays_strategy(x):
    assert x.shape == (3, 4) and x.dtype == np.float32
    assert np.all(np.abs(x) >= 0.1) and np.all(np.isfinite(x))


@given(token_ids(9, (2, 5)))
def test_token_ids_strategy(ids):
    assert ids.shape == (2, 5) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 9
