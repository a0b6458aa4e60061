"""Sequence classification: the Llama and GPT classifiers' gradient checks and parity with
transformers' LlamaForSequenceClassification and GPT2ForSequenceClassification, the CSV reader,
and training with and without LoRA."""

import json

import numpy as np
import pytest

from scratchlm.data import CharTokenizer
from scratchlm.finetune import (accuracy, apply_lora, classification_examples,
                                fit_text_classifier, load_adapter, read_labelled_csv,
                                save_adapter)
from scratchlm.gradcheck import check_module
from scratchlm.models import (GPT, GPTConfig, GPTForSequenceClassification, Llama, LlamaConfig,
                              LlamaForSequenceClassification)
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


def test_classifier_adapter_round_trips_with_peft(tmp_path, torch):
    """A LoRA adapter with the head trained in full is PEFT's SEQ_CLS adapter with
    modules_to_save=['score']: ours loads in peft and peft's in ours, with equal logits."""
    import copy
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from test_llama import _float64_reference
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=15, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16, num_labels=3,
        pad_token_id=0, rms_norm_eps=1e-6)).double().eval()
    base = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}

    def fresh():
        m = LlamaForSequenceClassification(CFG, num_labels=3, pad_token_id=0, dtype=np.float64)
        m.load_state_dict(base)
        return m.eval()
    ours = fresh()
    apply_lora(ours, ("q_proj", "v_proj"), r=2, alpha=4, rng=0)
    ours.score.weight.requires_grad = True
    rng = np.random.default_rng(1)
    for p in ours.trainable_parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    save_adapter(ours, tmp_path / "ours")
    doc = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert doc["task_type"] == "SEQ_CLS" and doc["modules_to_save"] == ["score"]
    idx = _padded()
    theirs = peft.PeftModel.from_pretrained(_float64_reference(copy.deepcopy(hf), torch, ours),
                                            tmp_path / "ours").eval()
    np.testing.assert_allclose(ours(idx), theirs(torch.from_numpy(idx)).logits.detach().numpy(),
                               rtol=0, atol=1e-10)
    pm = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, dtype=p.dtype) * 0.3)
    pm.save_pretrained(tmp_path / "peft")
    again = fresh()
    load_adapter(again, tmp_path / "peft")
    assert again.score.weight.requires_grad
    pm = _float64_reference(pm.eval(), torch, again)
    np.testing.assert_allclose(again(idx), pm(torch.from_numpy(idx)).logits.detach().numpy(),
                               rtol=0, atol=1e-10)


GPT_CFG = GPTConfig(vocab_size=15, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1)


def test_gpt_classifier_gradcheck_and_from_causal_lm():
    m = GPTForSequenceClassification(GPT_CFG, num_labels=3, pad_token_id=0, dtype=np.float64,
                                     rng=1)
    idx = _padded()
    report = check_module(m, idx, max_entries=16)
    assert report.ok, str(report)
    assert set(m.state_dict()) == {k for k in GPT(GPT_CFG).state_dict()
                                   if k != "lm_head.weight"} | {"score.weight"}
    lm = GPT(GPT_CFG, dtype=np.float64, rng=2)
    clf = GPTForSequenceClassification.from_causal_lm(lm, num_labels=3, rng=3)
    for k, v in lm.state_dict().items():
        if k != "lm_head.weight":
            np.testing.assert_array_equal(clf.state_dict()[k], v, err_msg=k)
    assert clf.state_dict()["score.weight"].shape == (3, 8)
    clf.eval(), lm.eval()
    h = lm.transformer.ln_f(lm.transformer.h[1](lm.transformer.h[0](
        lm.transformer.wte(idx) + lm.transformer.wpe(np.arange(6)))))    # lm's body by hand
    expected = h[np.arange(3), [3, 5, 1]] @ clf.score.weight.data.T
    np.testing.assert_allclose(clf(idx), expected, rtol=1e-12)


def test_gpt_classifier_matches_transformers(torch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        vocab_size=15, n_positions=8, n_embd=8, n_layer=2, n_head=2, num_labels=3,
        pad_token_id=0)).double().eval()
    cfg = GPTConfig(vocab_size=15, block_size=8, n_layer=2, n_head=2, n_embd=8)
    ours = GPTForSequenceClassification(cfg, num_labels=3, pad_token_id=0, dtype=np.float64)
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")     # HF's Conv1D: (in, out)
    theirs = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    ours.load_state_dict({k: v.T if k.endswith(conv1d) else v for k, v in theirs.items()
                          if not k.endswith(".attn.bias")})        # (HF's causal-mask buffer)
    idx, labels = _padded(), np.array([2, 0, 1])
    out = hf(torch.from_numpy(idx), labels=torch.from_numpy(labels))
    out.loss.backward()
    logits, loss = ours(idx, labels)
    ours.backward()
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(out.loss.item(), rel=1e-10)
    grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g = grads[name].grad.numpy()
        np.testing.assert_allclose(p.grad, g.T if name.endswith(conv1d) else g, rtol=1e-8,
                                   atol=1e-12, err_msg=name)


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


@pytest.mark.parametrize("arch,lora", [("llama", False), ("llama", True), ("gpt", True)])
def test_training_learns_the_builtin_task(arch, lora):
    data = classification_examples(n_train=400, n_test=100, seed=0)
    tok = CharTokenizer.train("abcdefghij")
    if arch == "llama":
        lm = Llama(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                               max_position_embeddings=16), rng=0)
        model = LlamaForSequenceClassification.from_causal_lm(lm, num_labels=2, rng=0)
        targets = ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")
    else:
        lm = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                           n_embd=16), rng=0)
        model = GPTForSequenceClassification.from_causal_lm(lm, num_labels=2, rng=0)
        targets = ("c_attn", "c_fc", "mlp.c_proj")
    if lora:
        apply_lora(model, targets, r=4, rng=0)
        model.score.weight.requires_grad = True          # the head is trained in full (PEFT:
    before = accuracy(model, tok, data["test"])          # modules_to_save)
    fit_text_classifier(model, data["train"], tok, TrainConfig(steps=150, lr=1e-2, warmup=10),
                        batch_size=32, log=lambda m: None)
    after = accuracy(model, tok, data["test"])
    assert after > max(before, 0.7), (before, after)
