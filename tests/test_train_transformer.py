"""`train transformer`: the training loop, checkpoints that resume bit-identically, and the
sample / eval / attention commands on a GPT checkpoint."""

import numpy as np
import pytest

from scratchlm.cli import main
from scratchlm.models import GPT, GPTConfig
from scratchlm.training import TrainConfig, fit_lm, load_model

pytestmark = pytest.mark.filterwarnings("ignore:NGramLM.*discounts:RuntimeWarning")

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "5"]
TEXT = "\n".join(["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60) + "\n"


@pytest.fixture()
def corpus_file(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_train_sample_eval_attention(tmp_path, corpus_file, capsys):
    ck = tmp_path / "gpt.npz"
    assert main(["train", "transformer", "--steps", "12", "--corpus", str(corpus_file), "--out", str(ck),
                 "--sample-length", "30", *TINY]) == 0
    out = capsys.readouterr().out
    assert "trained transformer: 12 steps in" in out and "bits/token" in out and ck.exists()
    assert f"wrote {ck}, {tmp_path / 'gpt-loss.png'}" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "gpt-loss.png").stat().st_size > 1000
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "the ", "--length", "20", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ")
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "the ", "--length", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert "validation split of" in capsys.readouterr().out
    png = tmp_path / "att.png"
    assert main(["attention", "--checkpoint", str(ck), "--prompt", "the cat", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and "1 layers x 2 heads over 7 tokens" in capsys.readouterr().out


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, n), rng.integers(0, 11, 400)


def test_resume_is_bit_identical(tmp_path):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1)
    loop = TrainConfig(steps=10, eval_interval=4, warmup=3, weight_decay=0.1)
    kw = dict(batch_size=4, eval_batches=2, log=lambda m: None)
    train_ids, val_ids = _data()
    straight = GPT(cfg, rng=0)
    fit_lm(straight, train_ids, val_ids, loop, checkpoint=tmp_path / "a.npz", **kw)

    class Stop(Exception):
        pass

    def interrupt(step, total, postfix):
        if step == 4:
            raise Stop
    first = GPT(cfg, rng=0)
    with pytest.raises(Stop):
        fit_lm(first, train_ids, val_ids, loop, checkpoint=tmp_path / "b.npz", progress=interrupt,
               **kw)
    resumed = GPT(cfg, rng=99)                               # everything must come from the file
    hist = fit_lm(resumed, train_ids, val_ids, loop, checkpoint=tmp_path / "b.npz", resume=True,
                  **kw)
    assert hist["step"] == list(range(1, 11))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_training_learns_a_simple_source():
    cfg = GPTConfig(vocab_size=5, block_size=12, n_layer=1, n_head=2, n_embd=16)
    ids = np.tile(np.array([0, 1, 2, 3, 4, 2, 1]), 400)          # a deterministic cycle
    model = GPT(cfg, rng=0)
    hist = fit_lm(model, ids, ids[:300], TrainConfig(steps=200, lr=1e-2, min_lr=1e-4, eval_interval=100, warmup=10,
                                                  weight_decay=0.1, betas=(0.9, 0.99)),
                  batch_size=8, eval_batches=2, log=lambda m: None)
    assert hist["val_loss"][0] > hist["val_loss"][-1]
    assert hist["val_loss"][-1] < 0.3                           # nats per token: nearly certain
    model.eval()
    out = model.generate(np.array([[0, 1, 2]]), 11, greedy=True)
    np.testing.assert_array_equal(out[0], np.tile([0, 1, 2, 3, 4, 2, 1], 2)[:14])


def test_transformer_cli_errors(tmp_path, corpus_file, capsys):
    assert main(["train", "transformer", "--steps", "2", "--corpus", str(corpus_file),
                 "--block-size", "100000", "--out", str(tmp_path / "x.npz")]) == 2
    assert "too few for block_size" in capsys.readouterr().err
    assert main(["train", "transformer", "--resume", "--out", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    ngram = tmp_path / "ng.npz"
    assert main(["train", "markov", "--order", "2", "--corpus", str(corpus_file), "--out", str(ngram)]) == 0
    assert main(["attention", "--checkpoint", str(ngram), "--prompt", "x"]) == 2
    assert "holds a markov model; attention takes transformer and llama" in capsys.readouterr().err


def test_load_model_restores_a_gpt(tmp_path, corpus_file):
    ck = tmp_path / "g.npz"
    main(["train", "transformer", "--steps", "3", "--corpus", str(corpus_file), "--out", str(ck), *TINY])
    model, tok, meta, entry = load_model(ck)
    assert isinstance(model, GPT) and meta["loop"]["step"] == 3 and entry.name == "transformer"
    assert tok.vocab_size == model.config.vocab_size


def test_nonfinite_loss_stops_training_with_a_clear_error():
    # Inside a model the layers skip their NaN scans (@trusted); the loop checks the loss instead.
    train_ids, val_ids = _data()
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)
    model.transformer.h[0].mlp.c_fc.weight.data[0, 0] = np.nan
    loop = TrainConfig(steps=3, eval_interval=10, warmup=1)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        fit_lm(model, train_ids, val_ids, loop, batch_size=2, eval_batches=1, log=lambda m: None)


def test_layers_scan_alone_but_not_inside_a_trusted_model():
    from scratchlm import nn
    from scratchlm._checks import _trust, trusted
    lin = nn.Linear(3, 2, rng=0)
    bad = np.array([[1.0, np.nan, 0.0]], np.float32)
    with pytest.raises(ValueError, match="x must be finite"):
        lin(bad)

    @trusted
    def inside(x):
        assert _trust.depth == 1
        return lin(x)

    assert np.isnan(inside(bad)).any()             # no scan inside: NaN flows as in torch
    assert _trust.depth == 0

    @trusted
    def fails():
        raise KeyError("boom")
    with pytest.raises(KeyError):
        fails()
    assert _trust.depth == 0                       # restored after an exception too
    with pytest.raises(ValueError, match="x must be finite"):
        lin(bad)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)
    logits = model(np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="dlogits must be finite"):   # checked at the boundary
        model.backward(np.full_like(logits, np.nan))


def test_recompute_flag_is_recorded_and_kept_on_resume(tmp_path, corpus_file, capsys):
    from scratchlm.io import read_checkpoint
    assert main(["train", "transformer", "--help"]) == 0
    assert "--recompute" in capsys.readouterr().out
    ck = tmp_path / "r.npz"
    assert main(["train", "transformer", "--steps", "3", "--corpus", str(corpus_file), "--out",
                 str(ck), "--sample-length", "0", "--recompute", *TINY]) == 0
    assert read_checkpoint(ck)[1]["meta"]["options"]["recompute"] is True
    assert main(["train", "transformer", "--resume", "--steps", "4", "--out", str(ck),
                 "--sample-length", "0"]) == 2                     # only the length may change
    assert "--sample-length" in capsys.readouterr().err
    assert main(["train", "transformer", "--resume", "--steps", "5", "--out", str(ck)]) == 0
    meta = read_checkpoint(ck)[1]["meta"]
    assert meta["options"]["recompute"] is True and meta["loop"]["step"] == 5
    model, _, _, _ = load_model(ck)             # loading for sample/eval: the architecture only
    assert model.recompute is False
