"""Supervised fine-tuning: the prompt masked out of the loss (checked against a torch
computation), right padding, the one loop's resume, and LoRA through fit_sft."""

import numpy as np
import pytest

from scratchlm.data import CharTokenizer
from scratchlm.finetune import (apply_lora, eos_id_of, exact_match, fit_sft,
                                instruction_examples, sft_batch)
from scratchlm.finetune.sft import _encode
from scratchlm.models import Llama, LlamaConfig
from scratchlm.training import TrainConfig

DATA = instruction_examples("reverse", n_train=64, n_val=8, n_test=8, seed=0, max_len=6)
TOK = CharTokenizer.train("".join(p + r for split in DATA.values() for p, r in split))
EOS = eos_id_of(TOK)


def _model(seed=0):
    return Llama(LlamaConfig(vocab_size=TOK.vocab_size, hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=32), rng=seed)


def test_examples_and_batches():
    prompt, response = DATA["train"][0]
    assert prompt.startswith("Reverse: ") and prompt.endswith("\n")
    assert response == prompt[len("Reverse: "):-1][::-1]
    enc = [_encode(TOK, p, r, EOS) for p, r in DATA["train"][:3]]
    x, y = sft_batch(enc, EOS, 32)
    for b, (ids, n_prompt) in enumerate(enc):
        n = ids.size - 1
        np.testing.assert_array_equal(x[b, :n], ids[:-1])
        assert (y[b, :n_prompt - 1] == -1).all() and (y[b, n:] == -1).all()   # prompt, padding
        np.testing.assert_array_equal(y[b, n_prompt - 1:n], ids[n_prompt:])  # response + eos
        assert y[b, n - 1] == EOS
    with pytest.raises(ValueError, match="more than the model's context"):
        sft_batch(enc, EOS, 4)


def test_masked_loss_equals_torch(torch):
    model = _model()
    model.eval()
    enc = [_encode(TOK, p, r, EOS) for p, r in DATA["train"][:4]]
    x, y = sft_batch(enc, EOS, 32)
    logits, loss = model(x, y)
    # torch: log-softmax of the same logits, the response tokens picked by their positions alone
    logp = torch.log_softmax(torch.from_numpy(logits.astype(np.float64)), dim=-1)
    terms = []
    for b, (ids, n_prompt) in enumerate(enc):
        for t in range(n_prompt - 1, ids.size - 1):
            terms.append(logp[b, t, int(ids[t + 1])])
    assert loss == pytest.approx(-torch.stack(terms).mean().item(), rel=1e-6)


def test_fit_sft_learns_and_resumes(tmp_path):
    config = TrainConfig(steps=12, lr=3e-3, eval_interval=6, warmup=2, save_interval=4)
    kw = dict(batch_size=8, val_examples=DATA["val"], log=lambda m: None)
    straight = _model()
    hist = fit_sft(straight, DATA["train"], TOK, config, checkpoint=tmp_path / "a.npz", **kw)
    assert hist["val_loss"][-1] < hist["val_loss"][0]

    class Stop(Exception):
        pass

    def interrupt(step, total, info):
        if step == 5:
            raise Stop
    first = _model()
    with pytest.raises(Stop):
        fit_sft(first, DATA["train"], TOK, config, checkpoint=tmp_path / "b.npz",
                progress=interrupt, **kw)
    resumed = _model(seed=9)
    fit_sft(resumed, DATA["train"], TOK, config, checkpoint=tmp_path / "b.npz", resume=True, **kw)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert 0.0 <= exact_match(straight, TOK, DATA["test"]) <= 1.0


def test_fit_sft_with_lora_moves_only_the_adapters():
    model = _model()
    apply_lora(model, ("q_proj", "v_proj", "down_proj"), r=2, rng=0)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    fit_sft(model, DATA["train"], TOK, TrainConfig(steps=4, lr=1e-2), batch_size=8,
            log=lambda m: None)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.data.tobytes() == frozen[n].tobytes(), n
    assert any(np.abs(p.data).sum() > 0 for n, p in model.named_parameters()
               if n.endswith("lora_B.weight"))


@pytest.mark.slow
def test_fit_sft_reaches_exact_match():
    data = instruction_examples("reverse", n_train=2000, n_val=50, n_test=100, seed=1, max_len=6)
    model = Llama(LlamaConfig(vocab_size=TOK.vocab_size, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=32), rng=0)
    fit_sft(model, data["train"], TOK, TrainConfig(steps=1500, lr=3e-3, warmup=50,
                                                   weight_decay=0.0), batch_size=32,
            log=lambda m: None)
    assert exact_match(model, TOK, data["test"]) >= 0.9
