"""Activation recomputation in GPT (``recompute=True``): gradients and losses bit-identical to the
stored-activation path on both kernel routes, in float32 and float64, with and without dropout;
only each block's input kept after the forward; evaluation and generation untouched; and the
training run (``train transformer --recompute``) and its resume."""

import numpy as np
import pytest

from scratchlm.kernels import use_backend
from scratchlm.models import GPT, GPTConfig
from scratchlm.nn.module import NO_CACHE
from scratchlm.training import train_model

CFG = dict(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=8)


def _data(B=3, T=12, V=17, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def _two_steps(recompute, dtype, dropout):
    """Two forward/backward passes (the second draws new masks): the losses, every gradient
    (accumulated over both) and the model's generator state afterwards."""
    model = GPT(GPTConfig(**CFG, dropout=dropout), dtype=dtype, rng=5, recompute=recompute)
    idx, targets = _data()
    losses = []
    for _ in range(2):
        _, loss = model(idx, targets)
        model.backward()
        losses.append(loss)
    grads = {k: p.grad.copy() for k, p in model.named_parameters()}
    return losses, grads, model.transformer.drop.rng.bit_generator.state


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradients_are_bit_identical(backend, dtype, dropout):
    with use_backend(backend):
        stored = _two_steps(False, dtype, dropout)
        again = _two_steps(True, dtype, dropout)
    assert stored[0] == again[0]                                   # the losses, exactly
    assert stored[1].keys() == again[1].keys()
    for k, g in stored[1].items():
        assert g.dtype == dtype and np.array_equal(g, again[1][k]), k
    assert stored[2] == again[2]            # the backward leaves the generators where they were


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_input_gradient_is_bit_identical(backend, dtype):
    """One block, dropout on: ``dx`` and every parameter gradient, stored vs recomputed."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 8)).astype(dtype)                    # (B, T, C)
    dout = rng.standard_normal((2, 12, 8)).astype(dtype)
    results = []
    with use_backend(backend):
        for recompute in (False, True):
            block = GPT(GPTConfig(**CFG, dropout=0.3), dtype=dtype, rng=7).transformer.h[0]
            y = block(x, recompute=recompute)
            dx = block.backward(dout)
            results.append((y, dx, [p.grad.copy() for p in block.parameters()]))
    (y0, dx0, g0), (y1, dx1, g1) = results
    assert np.array_equal(y0, y1) and np.array_equal(dx0, dx1) and dx1.dtype == dtype
    assert all(np.array_equal(a, b) for a, b in zip(g0, g1))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_bit_identical_at_a_long_context(backend):
    """T = 640: where F.attention_forward may take another path for long sequences (no dropout
    there); recomputation re-runs whichever ran, so the gradients still match bit for bit."""
    cfg = GPTConfig(vocab_size=17, block_size=640, n_layer=2, n_head=2, n_embd=8)
    idx, targets = _data(B=1, T=640)
    grads = []
    with use_backend(backend):
        for recompute in (False, True):
            model = GPT(cfg, rng=0, recompute=recompute)
            model(idx, targets)
            model.backward()
            grads.append([p.grad for p in model.parameters()])
    assert all(np.array_equal(g, h) for g, h in zip(*grads))


def _array_bytes(obj, seen):
    """Bytes of the distinct arrays reachable from a cache (tuples, lists, dicts); a view counts
    as the array it views, once."""
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) in seen:
            return 0
        seen.add(id(base))
        return base.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_array_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(_array_bytes(o, seen) for o in obj.values())
    return 0


def _cached_bytes(module):
    seen = set()
    return sum(_array_bytes(m._cache, seen) for m in module.modules())


def test_the_forward_keeps_only_each_blocks_input():
    cfg = GPTConfig(vocab_size=17, block_size=32, n_layer=3, n_head=2, n_embd=16, dropout=0.1)
    idx, targets = _data(B=4, T=32)
    stored, recomputing = GPT(cfg, rng=0), GPT(cfg, rng=0, recompute=True)
    for model in (stored, recomputing):
        model(idx, targets)
    x_bytes = 4 * 32 * 16 * 4                                             # (B, T, C) float32
    for block in recomputing.transformer.h:
        x, _ = block._cache
        assert x.shape == (4, 32, 16) and x.dtype == np.float32
        assert all(m._cache is NO_CACHE for m in block.modules() if m is not block)
        assert _cached_bytes(block) == x_bytes
    for block in stored.transformer.h:
        assert _cached_bytes(block) > 10 * x_bytes      # qkv, probabilities, masks, the MLP's 4C
    outside = _cached_bytes(stored) - sum(_cached_bytes(b) for b in stored.transformer.h)
    assert _cached_bytes(recomputing) <= outside + 3 * x_bytes
    recomputing.backward()                              # and the backward leaves nothing behind
    for block in recomputing.transformer.h:
        assert _cached_bytes(block) == x_bytes


def test_evaluation_and_generation_are_unaffected():
    cfg = GPTConfig(**CFG, dropout=0.2)
    idx, targets = _data()
    a, b = GPT(cfg, rng=0), GPT(cfg, rng=0, recompute=True)
    for m in (a, b):
        m.eval()
    assert a(idx, targets)[1] == b(idx, targets)[1]
    assert all(block._cache is None for block in b.transformer.h)         # eval stores as always
    a.backward()
    b.backward()
    assert all(np.array_equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))
    b.train()
    np.testing.assert_array_equal(a.generate(idx[:1, :4], 10, seed=0),
                                  b.generate(idx[:1, :4], 10, seed=0))
    assert b.training and b.recompute


def test_eval_between_forward_and_backward_still_replays_the_training_forward():
    cfg = GPTConfig(**CFG, dropout=0.2)
    idx, targets = _data()
    grads = []
    for recompute in (False, True):
        model = GPT(cfg, rng=0, recompute=recompute)
        model(idx, targets)
        model.eval()                                      # e.g. a callback; masks must not change
        model.backward()
        assert not model.training
        grads.append([p.grad for p in model.parameters()])
    assert all(np.array_equal(g, h) for g, h in zip(*grads))


def test_recompute_is_a_bool_and_not_part_of_the_checkpoint():
    model = GPT(GPTConfig(**CFG), rng=0)
    assert model.recompute is False
    model.recompute = True
    assert model.recompute is True
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="recompute"):
            model.recompute = bad
        with pytest.raises(TypeError, match="recompute"):
            GPT(GPTConfig(**CFG), recompute=bad)
    assert "recompute" not in model.config_dict()
    assert not any("recompute" in k for k in model.state_dict())
    assert model.clone().recompute is True


TEXT = "\n".join(["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60) + "\n"


def test_training_with_recompute_is_the_same_run_and_resumes_with_it(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    opts = dict(corpus=str(corpus), steps=4, batch_size=4, block_size=16, n_layer=2, n_head=2,
                n_embd=16, dropout=0.1, eval_interval=2, sample_length=0)
    quiet = dict(log=lambda m: None)
    plain = train_model("transformer", opts, out=tmp_path / "a.npz", **quiet)
    run = train_model("transformer", opts | dict(recompute=True), out=tmp_path / "b.npz", **quiet)
    assert run.model.recompute is True and plain.model.recompute is False
    assert plain.history["loss"] == run.history["loss"]
    for (k, p), q in zip(plain.model.state_dict().items(), run.model.state_dict().values()):
        assert np.array_equal(p, q), k
    from scratchlm.io import read_checkpoint
    meta = read_checkpoint(tmp_path / "b.npz")[1]["meta"]
    assert meta["options"]["recompute"] is True and "recompute" not in meta["config"]
    longer = train_model("transformer", dict(steps=6), out=tmp_path / "b.npz", resume=True, **quiet)
    assert longer.model.recompute is True
    assert read_checkpoint(tmp_path / "b.npz")[1]["meta"]["options"]["recompute"] is True
