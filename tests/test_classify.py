"""Sequence classification: the Llama classifier's gradient check and parity with transformers'
LlamaForSequenceClassification, the CSV reader, and training with and without LoRA."""

import numpy as np
import pytest

from scratchlm.data import CharTokenizer
from scratchlm.finetune import (accuracy, apply_lora, classification_examples,
                                fit_text_classifier, read_labelled_csv)
from scratchlm.gradcheck import check_module
from scratchlm.models import Llama, LlamaConfig, LlamaForSequenceClassification
from scratchlm.training import TrainConfig

CFG = LlamaConfig(vocab_size=15, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
RNG = np.random.default_rng(0)


def _padded():
    idx = RNG.integers(1, 15, (3, 6))
    idx[0, 4:] = 0                                   # right padding (pad_token_id 0)
    idx[2, 2:] = 0
    return idx


def test_gradcheck_and_last_token():
    m = LlamaForSequenceClassification(CFG, num_labels=3, pad_token_id=0, dtype=np.float64,
                                       rng=1)
    idx = _padded()
    np.testing.assert_array_equal(m.last_token(idx), [3, 5, 1])
    report = check_module(m, idx, max_entries=16)
    assert report.ok, str(report)
    logits, loss = m(idx, np.array([0, 2, 1]))
    assert logits.shape == (3, 3)
    with pytest.raises(ValueError, match="row 0 is all padding"):
        m(np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="labels must lie in"):
        m(idx, np.array([0, 3, 1]))


def test_matches_transformers(torch):
    transformers = pytest.importorskip("transformers")
    from test_llama import _float64_reference
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=15, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16, num_labels=3,
        pad_token_id=0, rms_norm_eps=1e-6)).eval()
    ours = LlamaForSequenceClassification(CFG, num_labels=3, pad_token_id=0, dtype=np.float64)
    ours.load_state_dict({k: v.detach().double().numpy() for k, v in hf.state_dict().items()})
    ref = _float64_reference(hf, torch, ours)
    idx, labels = _padded(), np.array([2, 0, 1])
    out = ref(torch.from_numpy(idx), labels=torch.from_numpy(labels))
    out.loss.backward()
    logits, loss = ours(idx, labels)
    ours.backward()
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(out.loss.item(), rel=1e-10)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, theirs[name].grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)


def test_csv_reader(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text('text,label\n"hello, world",pos\nbad day,neg\nfine,pos\n', encoding="utf-8")
    examples, names = read_labelled_csv(f)
    assert names == ["neg", "pos"] and examples == [("hello, world", 1), ("bad day", 0),
                                                    ("fine", 1)]
    f.write_text("sentence,label\nx,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header naming the columns 'text' and 'label'"):
        read_labelled_csv(f)
    f.write_text("text,label\nx,1\ny,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="1 distinct label"):
        read_labelled_csv(f)
    f.write_text("text,label\nx,1,extra\ny,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_labelled_csv(f)


@pytest.mark.parametrize("lora", [False, True])
def test_training_learns_the_builtin_task(lora):
    data = classification_examples(n_train=400, n_test=100, seed=0)
    tok = CharTokenizer.train("abcdefghij")
    lm = Llama(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=16), rng=0)
    model = LlamaForSequenceClassification.from_causal_lm(lm, num_labels=2, pad_token_id=0, rng=0)
    if lora:
        apply_lora(model, ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"), r=4, rng=0)
        model.score.weight.requires_grad = True          # the head is trained in full (PEFT:
    before = accuracy(model, tok, data["test"])          # modules_to_save)
    fit_text_classifier(model, data["train"], tok, TrainConfig(steps=150, lr=1e-2, warmup=10),
                        batch_size=32, log=lambda m: None)
    after = accuracy(model, tok, data["test"])
    assert after > max(before, 0.7), (before, after)
