"""Frozen parameters (``requires_grad=False``): no gradient is computed for them, optimizers and
clipping leave them untouched bit for bit, the checker checks only trainable ones, and a
decoder's backward stops where nothing below is trained."""

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.gradcheck import check_module
from scratchlm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchlm.optim import SGD, AdamW, clip_grad_norm_

RNG = np.random.default_rng(0)
LLAMA = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)


def test_parameter_flag():
    p = nn.Parameter(np.ones(3, np.float32))
    assert p.requires_grad and p.grad is not None
    p.requires_grad = False
    assert p.grad is None and "requires_grad=False" in repr(p)
    p.zero_grad()                                             # a no-op, not an error
    assert p.requires_grad_(True) is p and np.array_equal(p.grad, np.zeros(3, np.float32))
    assert nn.Parameter(np.ones(2), requires_grad=False).grad is None
    with pytest.raises(TypeError, match="requires_grad"):
        p.requires_grad = 1


def test_linear_skips_the_frozen_products(monkeypatch):
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    x = RNG.standard_normal((5, 4))
    dy = RNG.standard_normal((5, 3))
    lin(x)
    dx_full = lin.backward(dy)
    lin.weight.requires_grad = False
    lin.zero_grad()
    from scratchlm.kernels import gemm
    calls = []
    real = gemm.matmul
    monkeypatch.setattr("scratchlm.functional.linear.matmul",
                        lambda a, b, *k, **kw: calls.append(a.shape) or real(a, b, *k, **kw))
    lin(x)
    dx = lin.backward(dy)
    np.testing.assert_array_equal(dx, dx_full)
    assert lin.weight.grad is None and np.abs(lin.bias.grad).sum() > 0
    assert calls == [(5, 4), (5, 3)]                  # forward and dx only: no dW = dy^T x


def test_module_helpers_and_state_dict():
    m = Llama(LLAMA, rng=0)
    total = m.num_parameters()
    m.requires_grad_(False)
    assert m.trainable_parameters() == [] and m.num_parameters(trainable_only=True) == 0
    m.lm_head.weight.requires_grad = True
    assert m.trainable_parameters() == [m.lm_head.weight]
    assert m.num_parameters() == total and len(m.state_dict()) == len(list(m.parameters()))


@pytest.mark.parametrize("opt", [lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1),
                                 lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)])
def test_frozen_parameters_stay_bit_identical(opt):
    m = Llama(LLAMA, rng=1)
    for p in m.model.layers[0].parameters():
        p.requires_grad = False
    m.model.embed_tokens.weight.requires_grad = False
    frozen = {id(p): p.data.copy() for p in m.parameters() if not p.requires_grad}
    o = opt(list(m.parameters()))                 # frozen ones given too: passed by
    x = RNG.integers(0, 11, (2, 7))
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    for _ in range(3):
        o.zero_grad()
        m(x, np.roll(x, -1, 1))
        m.backward()
        clip_grad_norm_(list(m.parameters()), 0.5)
        o.step()
    for p in m.parameters():
        if id(p) in frozen:
            assert p.grad is None and p.data.tobytes() == frozen[id(p)].tobytes()
            assert p not in o.state
    moved = [n for n, p in m.named_parameters() if not np.array_equal(p.data, before[n])]
    assert "model.layers.2.mlp.down_proj.weight" in moved and "lm_head.weight" in moved


def test_backward_stops_where_nothing_below_is_trained(monkeypatch):
    m = Llama(LLAMA, rng=2)
    m.requires_grad_(False)
    for p in m.model.layers[2].parameters():
        p.requires_grad = True
    called = []
    for i, layer in enumerate(m.model.layers):
        real = layer.backward
        monkeypatch.setattr(layer, "backward", lambda d, i=i, real=real: called.append(i) or real(d))
    x = RNG.integers(0, 11, (2, 5))
    m(x, x)
    m.backward()
    assert called == [2]                               # layers 1 and 0 and the embedding: skipped
    g = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8), rng=0)
    g.requires_grad_(False)
    g.transformer.h[1].mlp.c_proj.weight.requires_grad = True
    g(x, x)
    g.backward()
    assert np.abs(g.transformer.h[1].mlp.c_proj.weight.grad).sum() > 0


def test_partially_frozen_gradcheck_and_matches_full():
    m = Llama(LlamaConfig(**(vars(LLAMA) | dict(num_hidden_layers=2))), dtype=np.float64, rng=3)
    x = RNG.integers(0, 11, (2, 5))
    m(x, x)
    m.backward()
    full = {n: p.grad.copy() for n, p in m.named_parameters()}
    for n, p in m.named_parameters():
        p.requires_grad = "layers.1" in n or n == "lm_head.weight"
    report = check_module(m, x, max_entries=16)
    assert report.ok, str(report)
    checked = {t.name for t in report.tensors}
    assert "model.embed_tokens.weight" not in checked and "lm_head.weight" in checked
    m.zero_grad()
    m(x, x)
    m.backward()
    for n, p in m.named_parameters():                    # trainable grads as without freezing
        if p.requires_grad:
            np.testing.assert_allclose(p.grad, full[n], rtol=1e-12, atol=1e-15)
