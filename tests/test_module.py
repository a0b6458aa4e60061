"""The Module protocol: registration, dotted names, state_dict, modes, gradients, dtype."""

import numpy as np
import pytest

from scratchlm import nn


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3, dtype=np.float64, rng=0)
        self.block = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, rng=1), nn.ReLU(), nn.Dropout(0.1, rng=2))
        self.head = nn.Linear(3, 5, bias=False, dtype=np.float64, rng=3)
        self.head.weight = self.emb.weight           # weight tying, as GPT-2's lm_head
        self.register_buffer("table", np.arange(6.0))


def test_dotted_names_and_tied_parameters():
    m = Tied()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["emb.weight", "block.0.weight", "block.0.bias"]   # tied weight listed once
    # torch order: a module's own parameters and buffers, then its children
    assert list(m.state_dict()) == ["table", "emb.weight", "block.0.weight", "block.0.bias", "head.weight"]
    assert m.state_dict()["head.weight"] is m.state_dict()["emb.weight"]
    assert m.num_parameters() == 15 + 12 + 4
    assert [n for n, _ in m.named_modules()] == ["", "emb", "block", "block.0", "block.1", "block.2", "head"]
    assert [n for n, _ in m.generators()] == ["block.2.rng"]


def test_state_dict_roundtrip_and_strict_errors():
    a, b = Tied(), Tied()
    for p in a.parameters():
        p.data += 1
    b.load_state_dict(a.state_dict())
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        assert np.array_equal(u, v), k
    sd = dict(a.state_dict())
    sd.pop("block.0.bias")
    sd["extra.weight"] = np.zeros(2)
    sd["emb.weight"] = np.zeros((4, 3))
    with pytest.raises(ValueError) as e:
        b.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: block.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "emb.weight: expected (5, 3), got (4, 3)" in msg
    sd["emb.weight"] = np.zeros((5, 3))
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["block.0.bias"] and unexpected == ["extra.weight"]


def test_train_eval_zero_grad_and_to():
    m = Tied()
    assert all(x.training for x in m.modules())
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    for p in m.parameters():
        p.grad += 1
    m.zero_grad()
    assert all(np.all(p.grad == 0) for p in m.parameters())
    m.to(np.float32)
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in m.parameters())
    assert m.head.weight is m.emb.weight
    assert m.table.dtype == np.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        m.to(np.int32)


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Linear.backward called before forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2), np.float32))


def test_sequential_backward_and_accumulation():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, rng=0), nn.Tanh(), nn.Linear(4, 2, dtype=np.float64, rng=1))
    x = rng.standard_normal((5, 3))
    y = m(x)
    dy = rng.standard_normal(y.shape)
    dx1 = m.backward(dy)
    g1 = [p.grad.copy() for p in m.parameters()]
    dx2 = m.backward(dy)
    assert np.array_equal(dx1, dx2)
    assert all(np.array_equal(p.grad, 2 * g) for p, g in zip(m.parameters(), g1))
    assert len(m) == 3 and isinstance(m[1], nn.Tanh)
    with pytest.raises(TypeError, match="Sequential argument 0"):
        nn.Sequential(lambda x: x)


def test_parameter_basics():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    assert p.shape == (2, 3) and p.dtype == np.float32 and p.grad.shape == (2, 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Parameter(np.ones(3, int))
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        nn.Parameter(np.ones(3, np.float16))


def test_repr_lists_children():
    text = repr(nn.Sequential(nn.Linear(2, 3), nn.GELU("tanh")))
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in text
    assert "(1): GELU(approximate='tanh')" in text


def test_mixed_precision_is_refused():
    lin = nn.Linear(3, 2)  # float32
    with pytest.raises(TypeError, match="dtype float64 but Linear holds float32"):
        lin(np.zeros((1, 3)))


def test_reassigned_buffer_stays_registered():
    m = Tied()
    m.table = np.zeros(6)
    assert "table" in m.state_dict() and np.all(m.state_dict()["table"] == 0)
