"""`train llama`: the command line, its checkpoints with sample / eval / attention, and learning a
known-entropy source as well as the same model in torch."""

import math

import numpy as np
import pytest

from scratchlm.cli import main
from scratchlm.data import MarkovSource
from scratchlm.models import Llama, LlamaConfig
from scratchlm.optim import AdamW

TINY = ["--num-hidden-layers", "1", "--num-attention-heads", "2", "--num-key-value-heads", "1",
        "--hidden-size", "16", "--intermediate-size", "24", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "5"]
TEXT = "\n".join(["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60) + "\n"


def test_train_sample_eval_attention(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    ck = tmp_path / "llama.npz"
    assert main(["train", "llama", "--steps", "10", "--corpus", str(corpus), "--out", str(ck),
                 "--sample-length", "20", "--qk-norm", *TINY]) == 0
    out = capsys.readouterr().out
    assert "trained llama: 10 steps in" in out and ck.exists()
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "the ", "--length", "30",
                 "--seed", "1"]) == 0                                  # past the 16 positions
    assert capsys.readouterr().out.startswith("the ")
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert "validation split of" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    png = tmp_path / "att.png"
    assert main(["attention", "--checkpoint", str(ck), "--prompt", "the cat", "--out",
                 str(png)]) == 0
    assert "1 layers x 2 heads over 7 tokens" in capsys.readouterr().out


@pytest.mark.slow
def test_learns_a_markov_source_as_well_as_torch(torch):
    """1500 AdamW steps on an order-2 Markov source, the same batches for both: the final
    held-out loss of ours and of transformers' LlamaForCausalLM (same initial weights) agree,
    and both approach the source's entropy rate."""
    transformers = pytest.importorskip("transformers")
    from scratchlm.models.hf_llama import hf_config
    src = MarkovSource(12, order=2, concentration=0.3, seed=0)
    train, val = src.sample(200_000, rng=1), src.sample(20_000, rng=2)
    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ours = Llama(cfg, rng=0)
    doc = {k: v for k, v in hf_config(cfg).items() if k not in ("architectures", "model_type")}
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**doc)).float()
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    opt_o = AdamW(ours.parameters(), lr=3e-3, weight_decay=0.0)
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(3)
    T, B = 32, 16

    def batch(ids, rng):
        start = rng.integers(0, ids.size - T - 1, B)
        x = np.stack([ids[s:s + T] for s in start])
        return x, np.stack([ids[s + 1:s + T + 1] for s in start])

    for _ in range(1500):
        x, y = batch(train, rng)
        opt_o.zero_grad()
        ours(x, y)
        ours.backward()
        opt_o.step()
        opt_t.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)).logits.reshape(-1, 12),
                                          torch.from_numpy(y).reshape(-1)).backward()
        opt_t.step()
    vr = np.random.default_rng(4)
    xs, ys = zip(*(batch(val, vr) for _ in range(20)))
    ours.eval()
    loss_o = np.mean([ours(x, y)[1] for x, y in zip(xs, ys)])
    with torch.no_grad():
        loss_t = np.mean([torch.nn.functional.cross_entropy(
            theirs(torch.from_numpy(x)).logits.reshape(-1, 12), torch.from_numpy(y).reshape(-1)
        ).item() for x, y in zip(xs, ys)])
    h = src.entropy_rate(base=math.e)                                  # nats per token
    assert abs(loss_o - loss_t) <= 0.02 * loss_t, (loss_o, loss_t)
    assert loss_o < h + 0.1, (loss_o, h)                               # near the floor


@pytest.mark.parametrize("mode", [["--lora-rank", "2"], ["--full"]])
def test_finetune_cli(tmp_path, capsys, mode):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT + "Reverse: abcdefghij\nSort: jihgfedcba\n", encoding="utf-8")
    ck = tmp_path / "llama.npz"
    assert main(["train", "llama", "--steps", "4", "--corpus", str(corpus), "--out", str(ck),
                 "--sample-length", "0", *TINY, "--block-size", "32"]) == 0
    capsys.readouterr()
    out = tmp_path / ("adapter" if "--full" not in mode else "full.npz")
    assert main(["finetune", "--checkpoint", str(ck), "--task", "reverse", "--steps", "6",
                 "--batch-size", "4", "--n-train", "40", "--n-test", "5", "--out", str(out),
                 *mode]) == 0
    text = capsys.readouterr().out
    assert "held-out exact match (5 examples)" in text and "parameters trained, 6 steps" in text
    if "--full" in mode:
        assert "(full)" in text and out.exists()
        assert main(["sample", "--checkpoint", str(out), "--prompt", "Reverse: abc\n",
                     "--length", "5", "--greedy"]) == 0
    else:
        assert "LoRA r=2" in text and (out / "adapter_model.safetensors").exists()
        assert main(["sample", "--checkpoint", str(ck), "--adapter", str(out), "--prompt",
                     "Reverse: abc\n", "--length", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("Reverse: abc")
    assert main(["finetune", "--checkpoint", str(ck), "--full", "--lora-rank", "4"]) == 2


@pytest.mark.parametrize("model,mode", [("llama", ["--lora-rank", "2"]), ("llama", ["--full"]),
                                        ("transformer", [])])
def test_finetune_classify_cli(tmp_path, capsys, model, mode):
    from scratchlm.finetune import accuracy, classification_examples
    from scratchlm.training import load_model
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT + "abcdefghij\n", encoding="utf-8")
    ck = tmp_path / "lm.npz"
    size = TINY if model == "llama" else ["--n-layer", "1", "--n-head", "2", "--n-embd", "16"]
    assert main(["train", model, "--steps", "3", "--corpus", str(corpus), "--out", str(ck),
                 "--sample-length", "0", *size, "--block-size", "16"]) == 0
    data = tmp_path / "data.csv"
    rows = classification_examples(n_train=60, n_test=0, seed=1)["train"]
    data.write_text("label,text\n" + "".join(f"{'yes' if y else 'no'},{t}\n" for t, y in rows),
                    encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / ("full.npz" if "--full" in mode else "adapter")
    assert main(["finetune", "--checkpoint", str(ck), "--task", "classify", "--data", str(data),
                 "--steps", "5", "--batch-size", "8", "--n-test", "10", "--out", str(out),
                 *mode]) == 0
    text = capsys.readouterr().out
    assert "on classify (no, yes)" in text and "held-out accuracy (10 examples)" in text
    held_out = [(t, int(y)) for t, y in (rows[i] for i in np.random.default_rng(0)
                                                      .permutation(60)[:10])]
    if "--full" in mode:
        clf, tok, meta, _ = load_model(out)              # the classifier, labels in its meta
        assert type(clf).__name__ == "LlamaForSequenceClassification"
        assert meta["finetune"]["labels"] == ["no", "yes"]
        assert f"before, {accuracy(clf, tok, held_out):.1%} after" in text   # what was saved
        assert main(["sample", "--checkpoint", str(out)]) == 2
        assert "holds a sequence classifier" in capsys.readouterr().err
    else:
        import json
        from scratchlm import models
        from scratchlm.finetune import load_adapter
        doc = (out / "adapter_config.json").read_text()
        assert '"SEQ_CLS"' in doc and '"score"' in doc
        info = json.loads((out / "classifier.json").read_text())
        assert info["labels"] == ["no", "yes"]
        lm, tok, _, entry = load_model(ck)               # the base model plus the adapter
        cls = getattr(models, f"{entry.model_class}ForSequenceClassification")
        clf = cls.from_causal_lm(lm, info["num_labels"], info["pad_token_id"])
        load_adapter(clf, out)
        assert f"before, {accuracy(clf, tok, held_out):.1%} after" in text   # what was saved
    assert main(["finetune", "--checkpoint", str(ck), "--task", "reverse", "--data",
                 str(data)]) == 2
    assert "--data is the CSV file of --task classify" in capsys.readouterr().err
