"""ConvLM: gradient checks, causality, PyTorch parity, generation within the receptive field,
training and the train/sample/eval commands."""

import numpy as np
import pytest

from conftest import assert_close, to_torch
from scratchlm.cli import main
from scratchlm.gradcheck import check_module
from scratchlm.models import ConvLM
from scratchlm.training import TrainConfig, fit_lm

F64 = np.float64


@pytest.mark.parametrize("gated", [False, True])
def test_convlm_gradcheck(gated):
    model = ConvLM(7, channels=4, kernel_size=3, dilations=(1, 2), gated=gated, dtype=F64, rng=0)
    idx = np.random.default_rng(0).integers(0, 7, (2, 6))
    check_module(model, idx, raise_on_failure=True)


def test_add_relu_gradcheck_and_refusals():
    """The blocks' fused ``r + ReLU(h)``: gradient-checked in float64 (h away from the kink),
    one shape and dtype required of its two inputs."""
    from scratchlm import functional as F
    from scratchlm.gradcheck import check_function
    rng = np.random.default_rng(3)
    r = rng.standard_normal((2, 3, 5))
    h = rng.standard_normal((2, 3, 5))
    h[np.abs(h) < 0.1] += 0.3                                        # no entry at the kink
    assert check_function(F.add_relu_forward, F.add_relu_backward, r, h).ok
    with pytest.raises(ValueError, match="h"):
        F.add_relu_forward(r, h[:, :, :4])
    with pytest.raises(TypeError, match="h"):
        F.add_relu_forward(r, h.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_add_relu_matches_torch(torch, dtype):
    """``r + relu(h)`` and its two gradients against torch's autograd, both kernel routes, the
    dtype kept (h with exact zeros: torch's ReLU gives them no gradient, as ours)."""
    import scratchlm
    from scratchlm import functional as F
    rng = np.random.default_rng(4)
    r, h = (rng.standard_normal((3, 4, 5)).astype(dtype) for _ in range(2))
    h[0, 0, :2] = 0.0
    dy = rng.standard_normal((3, 4, 5)).astype(dtype)
    tr, th = to_torch(torch, r, grad=True), to_torch(torch, h, grad=True)
    ty = tr + torch.relu(th)
    ty.backward(to_torch(torch, dy))
    for backend in ("numba", "numpy"):
        with scratchlm.use_backend(backend):
            y, cache = F.add_relu_forward(r, h)
            dr, dh = F.add_relu_backward(dy, cache)
        assert y.dtype == dr.dtype == dh.dtype == dtype
        assert_close(y, ty)
        assert_close(dr, tr.grad)
        assert_close(dh, th.grad)


def test_convlm_is_causal():
    model = ConvLM(11, channels=8, kernel_size=5, dilations=(1, 2, 4, 8), dtype=F64, rng=0)
    r = np.random.default_rng(1)
    idx = r.integers(0, 11, (2, 40))
    base = model(idx)
    for t in (0, 7, 25, 39):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1) % 11                  # change one token ...
        out = model(changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])    # ... earlier outputs never move
        assert not np.allclose(out[:, t], base[:, t])             # ... its own output does
    # the gradient of an early output reaches no later input either
    d = np.zeros_like(base)
    d[:, 10] = 1.0
    model.zero_grad()
    model(idx)
    model.backward(d)
    later = np.unique(idx[:, 11:])
    earlier = np.unique(idx[:, :11])
    only_later = np.setdiff1d(later, earlier)
    assert np.all(model.embed.weight.grad[only_later] == 0)


def test_convlm_matches_torch(torch):
    from benchmarks.workloads.conv import torch_convlm
    tF = torch.nn.functional
    model = ConvLM(9, channels=6, kernel_size=3, dilations=(1, 2, 4), dtype=F64, rng=0)
    ref = torch_convlm(torch, model)
    r = np.random.default_rng(2)
    idx, tgt = r.integers(0, 9, (3, 10)), r.integers(0, 9, (3, 10))
    logits, loss = model(idx, tgt)
    tlogits = ref(to_torch(torch, idx))
    tloss = tF.cross_entropy(tlogits.reshape(-1, 9), to_torch(torch, tgt).reshape(-1))
    assert_close(logits, tlogits)
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    model.backward()
    tloss.backward()
    tp = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, tp[name].grad)


def test_generation_reads_the_receptive_field_only():
    model = ConvLM(7, channels=8, kernel_size=3, dilations=(1, 2), rng=0)
    assert model.config.receptive_field == 7
    prompt = np.random.default_rng(3).integers(0, 7, (1, 12))
    out = model.generate(prompt, 6, greedy=True)
    assert out.shape == (1, 18) and (out[:, :12] == prompt).all()
    for t in range(12, 18):                       # each greedy token = argmax over the full prefix
        assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_convlm_learns_a_cycle():
    ids = np.tile(np.array([0, 1, 2, 3, 4, 2, 1]), 400)
    model = ConvLM(5, channels=16, kernel_size=3, dilations=(1, 2), rng=0)
    hist = fit_lm(model, ids, ids[:300], TrainConfig(steps=120, lr=1e-2, eval_interval=60, warmup=10),
                  batch_size=8, eval_batches=2, block_size=32, log=lambda m: None)
    assert hist["val_loss"][-1] < 0.1 < hist["loss"][0]


def test_bad_input():
    with pytest.raises(ValueError, match="dilations"):
        ConvLM(7, dilations=())
    with pytest.raises(ValueError, match="kernel_size"):
        ConvLM(7, kernel_size=0)
    model = ConvLM(7, channels=4, rng=0)
    with pytest.raises(ValueError, match=r"idx must lie in \[0, 7\)"):
        model(np.array([[1, 9]]))
    with pytest.raises(TypeError, match="integer dtype"):
        model(np.array([[1.0]]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_train_sample_eval_convlm(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join(["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60) + "\n",
                      encoding="utf-8")
    ck = tmp_path / "convlm.npz"
    assert main(["train", "convlm", "--steps", "6", "--corpus", str(corpus), "--out", str(ck),
                 "--channels", "8", "--dilations", "1", "2", "--batch-size", "4", "--block-size", "32",
                 "--eval-interval", "3", "--sample-length", "20"]) == 0
    assert ": 6 steps in" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "the ", "--length", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert "bits/char" in capsys.readouterr().out
    assert main(["train", "convlm", "--out", str(ck), "--resume"]) == 0   # every option from the file
    assert ": 6 steps in" in capsys.readouterr().out
    assert main(["train", "convlm", "--out", str(ck), "--resume", "--steps", "8"]) == 0   # extended
    assert ": 8 steps in" in capsys.readouterr().out
    assert main(["train", "convlm", "--out", str(ck), "--resume", "--channels", "16"]) == 2
    assert "only --steps or --time may change, got --channels" in capsys.readouterr().err
