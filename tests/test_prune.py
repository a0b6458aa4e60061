"""Pruning: MaskedLinear's backward (gradient-checked with a mask), the criteria and patterns
against computations by hand, a pruned model that fine-tunes through the one loop and stays
pruned bit for bit, pruned checkpoints, the prune command, and bad input."""

import copy

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.compress import (MaskedLinear, input_norms, prune, pruned_layers, quantize,
                                quantized_layers, sparsity_of)
from scratchlm.gradcheck import check_module
from scratchlm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchlm.training import TrainConfig
from scratchlm.training.fit import fit_lm

RNG = np.random.default_rng(0)
LLAMA = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


def test_masked_linear_gradcheck_and_masks():
    lin = nn.Linear(6, 5, dtype=np.float64, rng=0)
    mask = RNG.random((5, 6)) > 0.4
    layer = MaskedLinear(lin, mask)
    assert (layer.weight.data[~mask] == 0).all() and layer.weight is lin.weight
    report = check_module(layer, RNG.standard_normal((3, 6)))
    assert report.ok, str(report)
    x = RNG.standard_normal((4, 6))
    y = layer(x)
    np.testing.assert_allclose(y, x @ (lin.weight.data * mask).T + lin.bias.data, rtol=1e-12)
    layer.weight.grad[...] = 0
    layer.backward(np.ones_like(y))
    assert (layer.weight.grad[~mask] == 0).all() and (layer.weight.grad[mask] != 0).any()
    f32 = MaskedLinear(nn.Linear(6, 5, rng=0), mask)
    assert f32(x.astype(np.float32)).dtype == np.float32 and f32.weight_mask.dtype == np.float32


def test_criteria_scopes_and_patterns():
    model = Llama(LLAMA, rng=0)
    w = {n: m.weight.data.copy() for n, m in model.named_modules() if type(m) is nn.Linear}
    out = prune(model, 0.5)                                        # magnitude, per layer
    assert set(out) == set(w) - {"lm_head"} and all(v == 0.5 for v in out.values())
    for name, m in pruned_layers(model).items():                   # the smallest half went
        kept, gone = np.abs(w[name][m.weight_mask == 1]), np.abs(w[name][m.weight_mask == 0])
        assert kept.min() >= gone.max()
    g = Llama(LLAMA, rng=0)
    prune(g, 0.3, scope="global")
    allw = np.concatenate([np.abs(w[n]).ravel() for n in out])
    cut = np.sort(allw)[int(0.3 * allw.size) - 1]
    for name, m in pruned_layers(g).items():
        assert (np.abs(w[name])[m.weight_mask == 0] <= cut).all()
    assert abs(sparsity_of(g) - 0.3) < 1e-3
    two = Llama(LLAMA, rng=0)
    prune(two, 0.5, pattern="2:4")
    for m in pruned_layers(two).values():
        assert (m.weight_mask.reshape(m.out_features, -1, 4).sum(axis=2) == 2).all()


def test_wanda_scores_by_hand():
    """Wanda's input norms are each layer's inputs' column norms over the calibration tokens,
    and each row keeps its largest |W| * norm."""
    model = Llama(LLAMA, rng=0)
    calib = RNG.integers(0, 32, (2, 10))
    layer = model.model.layers[0].mlp.down_proj
    norms = input_norms(model, {"down": layer}, [calib])["down"]
    model.eval()
    seen = []
    model.model.layers[0].mlp.down_proj.forward = lambda x: (seen.append(x), type(layer).forward(
        layer, x))[1]
    model(calib)
    del model.model.layers[0].mlp.down_proj.__dict__["forward"]
    x = seen[0].reshape(-1, layer.in_features).astype(np.float64)
    np.testing.assert_allclose(norms, np.sqrt((x ** 2).sum(axis=0)), rtol=1e-12)
    w = layer.weight.data.copy()
    prune(model, 0.25, criterion="wanda", calibration=[calib])
    m = model.model.layers[0].mlp.down_proj
    score = np.abs(w) * norms
    for r in range(w.shape[0]):
        kept, gone = score[r][m.weight_mask[r] == 1], score[r][m.weight_mask[r] == 0]
        assert gone.size == int(0.25 * w.shape[1]) and kept.min() >= gone.max()


def test_finetuning_keeps_it_pruned(tmp_path):
    """100 AdamW steps (weight decay on) through the one loop: the pruned entries stay exactly
    zero, the masks do not move, the kept weights do; the checkpoint reloads pruned."""
    from scratchlm.io import save_checkpoint
    from scratchlm.training import load_model
    model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16), rng=0)
    prune(model, 0.6)
    masks = {n: m.weight_mask.copy() for n, m in pruned_layers(model).items()}
    before = {n: m.weight.data.copy() for n, m in pruned_layers(model).items()}
    ids = RNG.integers(0, 16, 2000)
    fit_lm(model, ids[:1500], ids[1500:], TrainConfig(steps=100, lr=1e-2, weight_decay=0.1),
           batch_size=4, log=lambda m: None)
    for n, m in pruned_layers(model).items():
        np.testing.assert_array_equal(m.weight_mask, masks[n])
        assert (m.weight.data[masks[n] == 0] == 0).all()
        assert not np.array_equal(m.weight.data, before[n])
    path = tmp_path / "pruned.npz"
    save_checkpoint(path, model, model="transformer", config=model.config_dict(),
                    pruned=sorted(pruned_layers(model)))
    again = load_model(path)[0]
    assert set(pruned_layers(again)) == set(masks)
    idx = ids[:16][None]
    np.testing.assert_array_equal(again.eval()(idx), model.eval()(idx))
    prune(model, 0.8)                                       # again: the old mask is kept too
    for n, m in pruned_layers(model).items():
        assert (m.weight_mask <= masks[n]).all() and abs(m.sparsity() - 0.8) < 0.02
    quantize(model, "int8")                                 # pruned zeros quantize to zeros
    for name, m in quantized_layers(model).items():
        assert (m.dequantized()[masks[name] == 0] == 0).all()


def test_bad_input():
    model = Llama(LLAMA, rng=0)
    for kwargs, match in (({"sparsity": 1.0}, r"sparsity must be a number in \[0, 1\), got 1.0"),
                          ({"sparsity": -0.1}, "sparsity must be"),
                          ({"sparsity": True}, "sparsity must be"),
                          ({"criterion": "taylor"}, "criterion must be one of magnitude, wanda"),
                          ({"pattern": "4:8"}, "pattern must be one of unstructured, 2:4"),
                          ({"scope": "head"}, "scope must be one of row, layer, global"),
                          ({"pattern": "2:4", "sparsity": 0.6}, "2:4 pattern prunes exactly"),
                          ({"criterion": "wanda"}, "wanda criterion needs calibration")):
        with pytest.raises(ValueError, match=match):
            prune(model, **{"sparsity": 0.5, **kwargs})
    odd = Llama(LlamaConfig(**{**vars(LLAMA), "intermediate_size": 46}), rng=0)
    with pytest.raises(ValueError, match="down_proj has 46 input features; the 2:4 pattern"):
        prune(odd, 0.5, pattern="2:4")
    with pytest.raises(ValueError, match="mask must have the weight's shape"):
        MaskedLinear(nn.Linear(3, 2), np.ones((3, 2)))


@pytest.mark.slow
def test_prune_cli(tmp_path, capsys):
    from scratchlm.cli import main
    from conftest import train_tiny
    ck, _ = train_tiny(tmp_path, steps=30, width=32, text="\n".join(
        ["abcabcabcabc defdefdef", "the cat sat on the mat"] * 80))
    capsys.readouterr()
    out = tmp_path / "p.npz"
    assert main(["prune", "--checkpoint", str(ck), "--method", "wanda", "--sparsity", "0.5",
                 "--finetune-steps", "5", "--calibration", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wanda at 50%" in text and "after 5 fine-tuning steps" in text
    assert main(["eval", "--checkpoint", str(out)]) == 0
    assert main(["prune", "--checkpoint", str(ck), "--sweep", "--png",
                 str(tmp_path / "s.png"), "--calibration", "4", "--max-tokens", "300"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(out)]) == 2
    assert "pruned already" in capsys.readouterr().err
    assert main(["prune", "--checkpoint", str(ck), "--method", "2:4", "--sparsity", "0.7"]) == 2
    heads = tmp_path / "h.npz"
    assert main(["prune", "--checkpoint", str(ck), "--method", "heads", "--sparsity", "0.5",
                 "--calibration", "4", "--out", str(heads)]) == 0
    assert "50% of the heads" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(heads), "--length", "5", "--greedy"]) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_structured_pruning_shrinks_and_stays_a_model(arch, tmp_path):
    """Removing heads (a Llama's: whole key/value groups) and MLP neurons slices the matrices;
    the smaller model equals the full one with those units' outputs zeroed, gradient-checks,
    generates, and its checkpoint reloads with the smaller shapes."""
    from scratchlm.compress.prune import prune_structured, shrink, structure_of
    from scratchlm.io import save_checkpoint
    from scratchlm.training import load_model
    if arch == "llama":
        cfg = LlamaConfig(**{**vars(LLAMA), "num_hidden_layers": 1})
        full = Llama(cfg, dtype=np.float64, rng=0)
        attn, mlp = full.model.layers[0].self_attn, full.model.layers[0].mlp
        block, name = "model.layers.0", "llama"
    else:
        cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=4, n_embd=32)
        full = GPT(cfg, dtype=np.float64, rng=0)
        attn, mlp = full.transformer.h[0].attn, full.transformer.h[0].mlp
        block, name = "transformer.h.0", "transformer"
    idx = RNG.integers(0, 32, (2, 10))
    small = copy.deepcopy(full)
    shrink(small, {block: {"heads": [1], "neurons": list(range(0, 48 if arch == "llama"
                                                                  else 128, 2))}})
    # the same function as the full model with the removed units' output columns zeroed
    o = attn.o_proj if arch == "llama" else attn.c_proj
    down = mlp.down_proj if arch == "llama" else mlp.c_proj
    size = o.in_features // (attn.kv_heads if arch == "llama" else attn.n_head)
    keep = np.zeros(o.in_features, bool)
    keep[size:2 * size] = True
    o.weight.data[:, ~keep] = 0
    down.weight.data[:, 1::2] = 0
    np.testing.assert_allclose(small.eval()(idx), full.eval()(idx), rtol=1e-12, atol=1e-12)
    report = check_module(small.train(), idx, max_entries=12)
    assert report.ok, str(report)
    assert small.generate(idx[:1, :3], 3, greedy=True).shape == (1, 6)
    m32 = (Llama if arch == "llama" else GPT)(cfg, rng=1)
    structure = prune_structured(m32, heads=0.5, neurons=0.25, calibration=[idx])
    assert all(v["heads"] == (1 if arch == "llama" else 2) for v in structure.values())
    path = tmp_path / "s.npz"
    save_checkpoint(path, m32, model=name, config=m32.config_dict(), structure=structure)
    again = load_model(path)[0]
    assert structure_of(again) == structure
    np.testing.assert_array_equal(again.eval()(idx), m32.eval()(idx))
    from scratchlm.compress.gguf import export_gguf
    with pytest.raises(ValueError, match="structurally pruned model has no GGUF form"):
        export_gguf(m32, tmp_path / "x.gguf", "f32")
    if arch == "llama":
        with pytest.raises(ValueError, match="a Hugging Face config cannot describe"):
            m32.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="heads must be a fraction"):
        prune_structured(m32, heads=1.0)
    with pytest.raises(ValueError, match="at least one"):
        shrink(m32, {block: {"heads": []}})


def test_masked_linear_is_torchs_pruning(torch):
    """torch.nn.utils.prune with the same mask: the same outputs, and the gradient of the
    pruned weight (torch's weight_orig.grad times the mask) equal to ours."""
    mask = RNG.random((5, 6)) > 0.5
    lin = nn.Linear(6, 5, dtype=np.float64, rng=0)
    theirs = torch.nn.Linear(6, 5).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(lin.weight.data))
        theirs.bias.copy_(torch.from_numpy(lin.bias.data))
    from torch.nn.utils import prune as torch_prune
    torch_prune.custom_from_mask(theirs, "weight", torch.from_numpy(mask))
    ours = MaskedLinear(lin, mask)
    x, dy = RNG.standard_normal((3, 6)), RNG.standard_normal((3, 5))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours(x), ty.detach().numpy(), rtol=1e-12)
    dx = ours.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight_orig.grad.numpy() * mask,
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(ours.weight_mask, theirs.weight_mask.numpy())
