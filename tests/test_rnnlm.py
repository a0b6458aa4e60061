"""RNNLM: gradient checks, PyTorch parity, truncated BPTT with a carried state, generation, the
training loop (resume bit-identical), the train/sample/eval/gradnorms commands."""

import numpy as np
import pytest

from conftest import assert_close, to_torch
from scratchlm.cli import main
from scratchlm.gradcheck import check_module
from scratchlm.models import RNNLM
from scratchlm.training import TrainConfig, fit_lm
from scratchlm.training.evaluate import gradient_norms_over_time

F64 = np.float64
TEXT = "\n".join(["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60) + "\n"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnnlm_gradcheck(cell):
    model = RNNLM(7, 4, 5, cell, num_layers=2, dtype=F64, rng=0)
    idx = np.random.default_rng(0).integers(0, 7, (2, 4))
    check_module(model, idx, raise_on_failure=True)


def test_tied_rnnlm_gradcheck_and_loss_path():
    model = RNNLM(7, 5, 5, "gru", tie_weights=True, dtype=F64, rng=0)
    assert model.decoder.weight is model.encoder.weight
    r = np.random.default_rng(1)
    idx, tgt = r.integers(0, 7, (2, 4)), r.integers(0, 7, (2, 4))
    check_module(model, idx, raise_on_failure=True)
    _, loss = model(idx, tgt)
    model.zero_grad()
    model.backward()                                    # the fused loss path
    g = model.encoder.weight.grad.copy()
    eps = 1e-6
    model.encoder.weight.data[3, 2] += eps
    _, up = model(idx, tgt)
    model.encoder.weight.data[3, 2] -= 2 * eps
    _, down = model(idx, tgt)
    assert g[3, 2] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rnnlm_matches_torch(torch, cell):
    tnn = torch.nn
    model = RNNLM(9, 6, 8, cell, num_layers=2, dtype=F64, rng=0)

    class Ref(tnn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = tnn.Embedding(9, 6, dtype=torch.float64)
            self.rnn = {"lstm": tnn.LSTM, "gru": tnn.GRU, "rnn": tnn.RNN}[cell](
                6, 8, num_layers=2, batch_first=True, dtype=torch.float64)
            self.decoder = tnn.Linear(8, 9, dtype=torch.float64)

        def forward(self, idx):
            return self.decoder(self.rnn(self.encoder(idx))[0])

    ref = Ref()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    r = np.random.default_rng(2)
    idx, tgt = r.integers(0, 9, (3, 7)), r.integers(0, 9, (3, 7))
    logits, loss = model(idx, tgt)
    tlogits = ref(to_torch(torch, idx))
    tloss = torch.nn.functional.cross_entropy(tlogits.reshape(-1, 9), to_torch(torch, tgt).reshape(-1))
    assert_close(logits, tlogits)
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    model.backward()
    tloss.backward()
    tp = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, tp[name].grad)


def test_carried_state_equals_the_whole_sequence():
    model = RNNLM(7, 4, 6, "lstm", num_layers=2, dtype=F64, rng=0)
    idx = np.random.default_rng(3).integers(0, 7, (2, 12))
    full = model(idx)
    state, parts = None, []
    for chunk in np.split(idx, 3, axis=1):
        parts.append(model(chunk, state=state))
        state = model.state
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-13, atol=1e-14)


def test_generate_continues_the_prompt_with_the_carried_state():
    model = RNNLM(7, 4, 6, "gru", rng=0)
    prompt = np.array([[1, 2, 3]])
    out = model.generate(prompt, 5, greedy=True)
    assert out.shape == (1, 8) and (out[:, :3] == prompt).all()
    for t in range(3, 8):                          # each greedy token = argmax of a full re-read
        assert out[0, t] == model(out[:, :t])[0, -1].argmax()
    a = model.generate(prompt, 20, top_k=3, seed=5)
    b = model.generate(prompt, 20, top_k=3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert model.training                          # the mode is restored


def _ids(n=3000, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, 11, n), r.integers(0, 11, 400)


def test_truncated_bptt_training_resumes_bit_identically(tmp_path):
    loop = TrainConfig(steps=10, eval_interval=4, warmup=3, weight_decay=0.1)
    kw = dict(batch_size=4, eval_batches=2, block_size=6, log=lambda m: None)
    train_ids, val_ids = _ids()
    straight = RNNLM(11, 8, 8, "lstm", dropout=0.1, rng=0)
    fit_lm(straight, train_ids, val_ids, loop, checkpoint=tmp_path / "a.npz", **kw)

    class Stop(Exception):
        pass

    def interrupt(step, total, postfix):
        if step == 5:                                # mid-stream: the carried state must be saved
            raise Stop
    first = RNNLM(11, 8, 8, "lstm", dropout=0.1, rng=0)
    with pytest.raises(Stop):
        fit_lm(first, train_ids, val_ids, loop, checkpoint=tmp_path / "b.npz", progress=interrupt,
               **kw)
    resumed = RNNLM(11, 8, 8, "lstm", dropout=0.1, rng=7)
    hist = fit_lm(resumed, train_ids, val_ids, loop, checkpoint=tmp_path / "b.npz", resume=True,
                  **kw)
    assert hist["step"] == list(range(1, 11))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_rnnlm_learns_a_cycle():
    ids = np.tile(np.array([0, 1, 2, 3, 4, 2, 1]), 400)
    model = RNNLM(5, 8, 32, "gru", rng=0)
    hist = fit_lm(model, ids, ids[:300], TrainConfig(steps=150, lr=1e-2, eval_interval=50, warmup=10),
                  batch_size=8, eval_batches=2, block_size=16, log=lambda m: None)
    assert hist["val_loss"][-1] < 0.1 < hist["loss"][0]           # from ln 5 = 1.6 to ~0


def test_gradient_norms_show_the_plain_rnn_vanishing_fastest():
    norms = gradient_norms_over_time(length=40, hidden_size=32, seed=0)
    assert set(norms) == {"rnn", "lstm", "gru"} and all(v.shape == (40,) for v in norms.values())
    decay = {c: v[0] / v[-1] for c, v in norms.items()}
    assert decay["rnn"] < decay["lstm"] and decay["rnn"] < decay["gru"]


def test_bad_input():
    with pytest.raises(ValueError, match="tie_weights needs hidden_size == embed_dim"):
        RNNLM(7, 4, 5, tie_weights=True)
    with pytest.raises(ValueError, match="cell"):
        RNNLM(7, 4, 5, cell="transformer")
    model = RNNLM(7, 4, 5, "lstm", rng=0)
    with pytest.raises(ValueError, match=r"idx must lie in \[0, 7\)"):
        model(np.array([[1, 7]]))
    with pytest.raises(TypeError, match="integer dtype"):
        model(np.array([[1.0, 2.0]]))
    with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
        model(np.array([[1, 2]]), state=np.zeros((1, 1, 5), np.float32))
    with pytest.raises(ValueError, match=r"state h must have shape \(1, 1, 5\)"):
        model(np.array([[1, 2]]), state=(np.zeros((1, 2, 5), np.float32), np.zeros((1, 1, 5), np.float32)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_train_sample_eval_gradnorms(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    ck = tmp_path / "gru.npz"
    assert main(["train", "gru", "--steps", "8", "--corpus", str(corpus), "--out", str(ck),
                 "--hidden-size", "16", "--embed-dim", "8", "--batch-size", "4", "--block-size", "8",
                 "--eval-interval", "4", "--sample-length", "20"]) == 0
    out = capsys.readouterr().out
    assert "trained gru: 8 steps in" in out and ck.exists()
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "the ", "--length", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert "bits/char" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    png = tmp_path / "gn.png"
    assert main(["gradnorms", "--length", "20", "--hidden-size", "16", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and "lstm" in capsys.readouterr().out
