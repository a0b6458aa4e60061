"""LoRA: gradient checks of the wrapped layer (dropout replayed), merge/unmerge, apply_lora's
module matching and errors, adapters on disk, and parity with ``peft``."""

import json

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.finetune import (LoRALinear, apply_lora, load_adapter, lora_layers, merge_lora,
                                save_adapter, unmerge_lora)
from scratchlm.gradcheck import check_module
from scratchlm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchlm.optim import AdamW

RNG = np.random.default_rng(0)
CFG = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)


def _randomise_b(model, seed=0):
    rng = np.random.default_rng(seed)
    for m in lora_layers(model).values():
        m.lora_B.weight.data[...] = rng.standard_normal(m.lora_B.weight.shape) * 0.3


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_lora_linear_gradcheck(dropout):
    layer = LoRALinear(nn.Linear(5, 4, dtype=np.float64, rng=0), r=3, alpha=6, dropout=dropout,
                       rng=1)
    layer.lora_B.weight.data[...] = RNG.standard_normal((4, 3))
    report = check_module(layer, RNG.standard_normal((2, 3, 5)))
    assert report.ok, str(report)
    names = {t.name for t in report.tensors}
    assert names == {"input[0]", "lora_A.weight", "lora_B.weight"}        # the base is frozen


def test_starts_at_the_base_and_merges_exactly():
    base = nn.Linear(6, 5, dtype=np.float64, rng=0)
    x = RNG.standard_normal((3, 6))
    y0 = base(x)
    layer = LoRALinear(base, r=2, alpha=4, rng=0)
    np.testing.assert_array_equal(layer(x), y0)                      # B = 0 at the start
    a = layer.lora_A.weight.data
    assert np.abs(a).max() <= 1 / np.sqrt(6) and a.std() > 0        # PEFT's kaiming-uniform
    layer.lora_B.weight.data[...] = RNG.standard_normal((5, 2))
    y = layer(x)
    np.testing.assert_allclose(y, y0 + 2.0 * (x @ a.T) @ layer.lora_B.weight.data.T, rtol=1e-12)
    m = Llama(CFG, dtype=np.float64, rng=0)
    apply_lora(m, ("q_proj", "v_proj", "down_proj"), r=2, alpha=3, rng=1)
    _randomise_b(m)
    idx = RNG.integers(0, 13, (2, 6))
    before = m(idx)
    w = m.model.layers[0].self_attn.q_proj.base_layer.weight.data.copy()
    merge_lora(m)
    np.testing.assert_allclose(m(idx), before, rtol=1e-10, atol=1e-12)
    assert not np.array_equal(w, m.model.layers[0].self_attn.q_proj.base_layer.weight.data)
    unmerge_lora(m)
    np.testing.assert_allclose(m.model.layers[0].self_attn.q_proj.base_layer.weight.data, w,
                               rtol=1e-13, atol=1e-15)
    # generation with the KV cache goes through the adapters too
    np.testing.assert_array_equal(m.generate(idx[:1, :3], 6, greedy=True),
                                  m.generate(idx[:1, :3], 6, greedy=True, use_cache=False))


def test_apply_lora_freezes_the_rest_and_matches_names():
    m = Llama(CFG, rng=0)
    chosen = apply_lora(m, ("q_proj", "v_proj"), r=4, rng=0)
    assert chosen == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{c}.lora_{ab}.weight" for c in chosen for ab in "AB"}
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in m.state_dict()
    m2 = Llama(CFG, rng=0)
    assert apply_lora(m2, r"model\.layers\.1\..*_proj", r=2) == [
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
        "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    with pytest.raises(ValueError, match=r"pattern 'qproj' matches no Linear of Llama; its Linear "
                                         r"layers: model.layers.0.self_attn.q_proj"):
        apply_lora(Llama(CFG, rng=0), ("q_proj", "qproj"))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(m, ("k_proj",))
    with pytest.raises(ValueError, match="tied"):
        apply_lora(GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=4)),
                   ("lm_head",))
    g = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)
    apply_lora(g, ("c_attn",), r=2)
    x = RNG.integers(0, 7, (2, 5))
    g(x, x)
    g.backward()
    assert [n for n, p in g.named_parameters() if p.requires_grad] == [
        "transformer.h.0.attn.c_attn.lora_A.weight", "transformer.h.0.attn.c_attn.lora_B.weight"]


def test_training_touches_only_the_adapters_and_round_trips(tmp_path):
    m = Llama(CFG, rng=0)
    apply_lora(m, ("q_proj", "v_proj"), r=4, alpha=8, rng=0)
    frozen = {n: p.data.copy() for n, p in m.named_parameters() if not p.requires_grad}
    opt = AdamW(m.trainable_parameters(), lr=1e-2)
    idx = RNG.integers(0, 13, (3, 8))
    for _ in range(3):
        opt.zero_grad()
        m(idx, np.roll(idx, -1, 1))
        m.backward()
        opt.step()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert p.data.tobytes() == frozen[n].tobytes(), n
    save_adapter(m, tmp_path)
    doc = json.loads((tmp_path / "adapter_config.json").read_text())
    assert doc["r"] == 4 and doc["lora_alpha"] == 8 and doc["target_modules"] == ["q_proj", "v_proj"]
    fresh = Llama(CFG, rng=0)
    load_adapter(fresh, tmp_path)
    m.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh(idx), m(idx))


def test_adapter_file_errors(tmp_path):
    m = Llama(CFG, rng=0)
    apply_lora(m, ("q_proj",), r=2)
    save_adapter(m, tmp_path)
    doc = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(doc | {"r": 3}))
    with pytest.raises(ValueError, match="must be a finite float array of shape"):
        load_adapter(Llama(CFG, rng=0), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(doc | {"use_dora": True}))
    with pytest.raises(ValueError, match="use_dora must be False"):
        load_adapter(Llama(CFG, rng=0), tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(Llama(CFG, rng=0), tmp_path / "none")


# ------------------------------------------------------------------------------------------------
# peft
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def hf_pair(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)).eval()
    hf.save_pretrained(tmp_path / "base")
    return hf, tmp_path


def test_peft_parity(hf_pair, torch):
    peft = pytest.importorskip("peft")
    hf, tmp = hf_pair
    from test_llama import _float64_reference     # RMSNorm and rotary tables in float64 too
    ours = Llama.from_pretrained(tmp / "base", dtype=np.float64)
    hf = _float64_reference(hf, torch, ours)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             lora_dropout=0.0)
    pm = peft.get_peft_model(hf, config)
    apply_lora(ours, ("q_proj", "v_proj"), r=4, alpha=8, rng=0)
    rng = np.random.default_rng(5)
    state = {}
    for name, m in lora_layers(ours).items():                  # the same adapters on both sides
        m.lora_B.weight.data[...] = rng.standard_normal(m.lora_B.weight.shape) * 0.1
        state[f"base_model.model.{name}.lora_A.default.weight"] = m.lora_A.weight.data
        state[f"base_model.model.{name}.lora_B.default.weight"] = m.lora_B.weight.data
    theirs = dict(pm.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            theirs[k].copy_(torch.from_numpy(v))
    _compare_steps(ours, pm, torch)
    # our adapter file loads in peft; peft's loads in ours
    save_adapter(ours, tmp / "ours")
    hf2 = _float64_reference(type(hf).from_pretrained(tmp / "base").eval(), torch, ours)
    loaded = peft.PeftModel.from_pretrained(hf2, tmp / "ours").eval()
    idx = np.random.default_rng(7).integers(0, 29, (2, 9))
    ours.eval()
    np.testing.assert_allclose(ours(idx), loaded(torch.from_numpy(idx)).logits.detach().numpy(),
                               rtol=0, atol=1e-10)
    pm.save_pretrained(tmp / "peft")
    again = Llama.from_pretrained(tmp / "base", dtype=np.float64)
    load_adapter(again, tmp / "peft")
    pm.eval()
    np.testing.assert_allclose(again(idx), pm(torch.from_numpy(idx)).logits.detach().numpy(),
                               rtol=0, atol=1e-10)


def _compare_steps(ours, pm, torch):
    """10 AdamW steps on the adapters of both: equal logits, equal lora gradients, equal adapters."""
    opt_o = AdamW(ours.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    opt_t = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2,
                              weight_decay=0.0)
    theirs = dict(pm.named_parameters())
    rng = np.random.default_rng(3)
    for _ in range(10):
        idx, y = rng.integers(0, 29, (2, 8)), rng.integers(0, 29, (2, 8))
        opt_o.zero_grad()
        logits, loss = ours(idx, y)
        ours.backward()
        opt_t.zero_grad()
        out = pm(torch.from_numpy(idx)).logits
        t = torch.nn.functional.cross_entropy(out.reshape(-1, 29), torch.from_numpy(y).reshape(-1))
        t.backward()
        np.testing.assert_allclose(logits, out.detach().numpy(), rtol=0, atol=1e-10)
        for name, m in lora_layers(ours).items():
            for ab in "AB":
                g = theirs[f"base_model.model.{name}.lora_{ab}.default.weight"].grad.numpy()
                np.testing.assert_allclose(getattr(m, f"lora_{ab}").weight.grad, g, rtol=1e-8,
                                           atol=1e-12)
        opt_o.step()
        opt_t.step()
    for name, m in lora_layers(ours).items():
        for ab in "AB":
            np.testing.assert_allclose(
                getattr(m, f"lora_{ab}").weight.data,
                theirs[f"base_model.model.{name}.lora_{ab}.default.weight"].detach().numpy(),
                rtol=1e-9, atol=1e-12)


def test_nothing_changes_before_an_error(tmp_path):
    """apply_lora and load_adapter check everything first: a failure leaves the model as it was
    (nothing frozen, nothing wrapped)."""
    from scratchlm.compress import prune
    m = Llama(CFG, rng=0)
    prune(m, 0.5)
    with pytest.raises(ValueError, match="is pruned .*LoRA's dense update"):
        apply_lora(m, ("q_proj",), r=2)
    assert not lora_layers(m) and all(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="alpha"):
        apply_lora(Llama(CFG, rng=0), ("q_proj",), r=2, alpha=float("nan"))
    src = Llama(CFG, rng=0)
    apply_lora(src, ("q_proj",), r=2)
    save_adapter(src, tmp_path)
    doc = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(doc | {"r": 3}))
    fresh = Llama(CFG, rng=0)
    with pytest.raises(ValueError, match="must be a finite float array of shape"):
        load_adapter(fresh, tmp_path)
    assert not lora_layers(fresh) and all(p.requires_grad for p in fresh.parameters())
