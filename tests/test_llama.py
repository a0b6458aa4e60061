"""The Llama model: gradient checks, the KV cache, bad input, and equality with ``transformers``'
LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM loaded from and saved to local folders."""

import json
import types

import numpy as np
import pytest

import scratchlm
from scratchlm import functional as F
from scratchlm.gradcheck import check_module
from scratchlm.models import Llama, LlamaConfig
from scratchlm.optim import AdamW

TINY = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)


@pytest.mark.parametrize("extra", [dict(), dict(tie_word_embeddings=True),
                                   dict(attention_bias=True, num_key_value_heads=1),
                                   dict(qk_norm=True, head_dim=4, num_key_value_heads=4)])
def test_llama_gradcheck(extra):
    cfg = LlamaConfig(**(TINY | extra))
    m = Llama(cfg, dtype=np.float64, rng=3)
    for p in m.parameters():                              # norms and biases off their init values
        if p.ndim == 1:
            p.data[...] = 1 + 0.3 * np.random.default_rng(p.size).standard_normal(p.shape)
    idx = np.random.default_rng(5).integers(0, 11, (2, 5))
    report = check_module(m, idx, max_entries=24)
    assert report.ok, str(report)


def test_state_dict_names_are_hf():
    m = Llama(LlamaConfig(**(TINY | dict(attention_bias=True, qk_norm=True))), rng=0)
    keys = set(m.state_dict())
    for k in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
              "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.bias",
              "model.layers.0.self_attn.k_norm.weight", "model.layers.0.mlp.gate_proj.weight",
              "model.layers.0.post_attention_layernorm.weight", "model.norm.weight",
              "lm_head.weight"):
        assert k in keys, k
    assert m.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape == (4, 8)  # 2 heads of 2


def test_float32_and_routes_agree():
    idx = np.random.default_rng(6).integers(0, 11, (2, 9))
    m = Llama(LlamaConfig(**TINY), rng=2)
    logits, loss = m(idx, idx)
    assert logits.dtype == np.float32
    m.backward()
    assert all(p.grad.dtype == np.float32 for p in m.parameters())
    m64 = Llama(LlamaConfig(**TINY), dtype=np.float64, rng=2)
    outs = {}
    for route in ("numba", "numpy"):
        with scratchlm.use_backend(route):
            m64.zero_grad()
            lg, _ = m64(idx, idx)
            m64.backward()
            outs[route] = (lg, [p.grad.copy() for p in m64.parameters()])
    np.testing.assert_allclose(outs["numba"][0], outs["numpy"][0], rtol=1e-12, atol=1e-13)
    for a, b in zip(outs["numba"][1], outs["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(seed=3, top_k=5),
                                    dict(seed=4, top_p=0.8, temperature=0.7)])
def test_kv_cache_generation_equals_recomputation(kwargs):
    m = Llama(LlamaConfig(**(TINY | dict(max_position_embeddings=8))), dtype=np.float64, rng=0)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    cached = m.generate(prompt, 12, **kwargs)                        # runs past the 8 positions
    plain = m.generate(prompt, 12, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, plain)
    assert cached.shape == (2, 15)
    m.eval()
    greedy = m.generate(prompt, 1, greedy=True)
    assert np.array_equal(greedy[:, 3], m(prompt)[:, -1].argmax(-1))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: LlamaConfig(**(TINY | dict(num_key_value_heads=3))), ValueError,
     r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
    (lambda: LlamaConfig(**(TINY | dict(head_dim=3))), ValueError, "even head_dim"),
    (lambda: LlamaConfig(**(TINY | dict(hidden_size=10))), ValueError, "divisible by"),
    (lambda: LlamaConfig(**(TINY | dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))),
     ValueError, "'dynamic' is not supported"),
    (lambda: Llama(LlamaConfig(**TINY))(np.zeros((1, 17), np.int64)), ValueError,
     "sequence length 17, more than max_position_embeddings 16"),
    (lambda: Llama(LlamaConfig(**TINY))(np.full((1, 3), 11)), ValueError, r"idx must lie in"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------------
KINDS = {
    "llama": lambda t: (t.LlamaConfig, t.LlamaForCausalLM,
                        dict(rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8})),
    "llama-tied": lambda t: (t.LlamaConfig, t.LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "qwen2": lambda t: (t.Qwen2Config, t.Qwen2ForCausalLM, dict()),
    "qwen3": lambda t: (t.Qwen3Config, t.Qwen3ForCausalLM, dict(head_dim=6)),
}


def _hf_model(torch, transformers, kind, seed=0):
    config_cls, model_cls, extra = KINDS[kind](transformers)
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                     rms_norm_eps=1e-5, rope_theta=1000.0, **extra)
    model = model_cls(cfg).eval()
    with torch.no_grad():                                # norms and biases off their init values
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _float64_reference(model, torch, ours):
    """Make a .double() transformers model compute in float64 throughout: stock transformers
    casts RMSNorm's statistics and the rotary cos/sin to float32 even then (see the issue), so
    those two pieces are replaced by float64 versions of the same formulas."""
    model = model.double()
    c = ours.config
    inv = torch.from_numpy(F.rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling))

    def rms_forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    def rotary_forward(self, x, position_ids):
        freqs = position_ids[..., None].double() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward = types.MethodType(rms_forward, m)
        elif name.endswith("RotaryEmbedding"):
            m.forward = types.MethodType(rotary_forward, m)
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_transformers(tmp_path, torch, kind):
    transformers = pytest.importorskip("transformers")
    hf = _hf_model(torch, transformers, kind)
    hf.save_pretrained(tmp_path)
    idx = np.random.default_rng(0).integers(0, 37, (2, 12))
    tidx = torch.from_numpy(idx)
    # float32 against stock transformers
    ours32 = Llama.from_pretrained(tmp_path, dtype=np.float32)
    ref32 = hf(tidx).logits.detach().numpy()
    np.testing.assert_allclose(ours32(idx), ref32, atol=1e-4, rtol=0)
    # float64 against the float64 reference: logits and every parameter's gradient
    ours = Llama.from_pretrained(tmp_path, dtype=np.float64)
    ref = _float64_reference(hf, torch, ours)
    targets = np.roll(idx, -1, axis=1)
    out = ref(tidx, labels=None)
    loss_ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 37),
                                                 torch.from_numpy(targets).reshape(-1))
    loss_ref.backward()
    logits, loss = ours(idx, targets)
    ours.backward()
    scale = np.abs(out.logits.detach().numpy()).max()
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), rtol=0, atol=1e-10 * scale)
    assert abs(loss - loss_ref.item()) <= 1e-10 * abs(loss)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        g = theirs[name].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=0, atol=1e-9 * max(np.abs(g).max(), 1e-3),
                                   err_msg=name)
    # greedy generation: the same tokens
    prompt = idx[:1, :5]
    theirs_gen = ref.generate(torch.from_numpy(prompt), max_new_tokens=10, do_sample=False,
                              pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours.generate(prompt, 10, greedy=True), theirs_gen)


def test_adamw_steps_match_transformers(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    hf = _hf_model(torch, transformers, "qwen3", seed=1)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path, dtype=np.float64)
    ref = _float64_reference(hf, torch, ours).train()
    opt_ours = AdamW(ours.parameters(), lr=3e-3, weight_decay=0.1)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.1)
    rng = np.random.default_rng(2)
    for _ in range(10):
        idx = rng.integers(0, 37, (3, 10))
        y = rng.integers(0, 37, (3, 10))
        opt_ours.zero_grad()
        _, loss = ours(idx, y)
        ours.backward()
        opt_ours.step()
        opt_ref.zero_grad()
        t = torch.nn.functional.cross_entropy(ref(torch.from_numpy(idx)).logits.reshape(-1, 37),
                                              torch.from_numpy(y).reshape(-1))
        t.backward()
        opt_ref.step()
        assert abs(loss - t.item()) <= 1e-9 * abs(loss)


@pytest.mark.parametrize("extra", [dict(), dict(attention_bias=True), dict(qk_norm=True, head_dim=6),
                                   dict(tie_word_embeddings=True)])
def test_save_pretrained_loads_in_transformers(tmp_path, torch, extra):
    transformers = pytest.importorskip("transformers")
    ours = Llama(LlamaConfig(**(TINY | dict(vocab_size=29) | extra)), rng=4)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    idx = np.random.default_rng(1).integers(0, 29, (2, 7))
    np.testing.assert_allclose(ours(idx), hf(torch.from_numpy(idx)).logits.detach().numpy(),
                               atol=1e-5, rtol=0)
    again = Llama.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again(idx), ours(idx))


def test_sharded_and_bf16_checkpoints(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    hf = _hf_model(torch, transformers, "llama")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    idx = np.random.default_rng(3).integers(0, 37, (1, 9))
    ref = hf(torch.from_numpy(idx)).logits.detach().numpy()
    np.testing.assert_allclose(Llama.from_pretrained(tmp_path / "sharded")(idx), ref, atol=1e-4)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ours = Llama.from_pretrained(tmp_path / "bf16")                # bf16 -> float32, exactly
    w = hf.model.embed_tokens.weight.float().detach().numpy()
    np.testing.assert_array_equal(ours.model.embed_tokens.weight.data, w)
    hf.to(torch.float16).save_pretrained(tmp_path / "fp16")
    assert Llama.from_pretrained(tmp_path / "fp16", dtype=np.float64).dtype == np.float64


def test_from_pretrained_errors(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Llama.from_pretrained(tmp_path)
    hf = _hf_model(torch, transformers, "llama")
    hf.save_pretrained(tmp_path / "ok", max_shard_size="20KB")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())

    def variant(name, change=None, remove=None):
        import shutil
        d = tmp_path / name
        shutil.copytree(tmp_path / "ok", d)
        if change:
            (d / "config.json").write_text(json.dumps(cfg | change))
        if remove:
            (d / remove).unlink()
        return d

    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not supported"):
        Llama.from_pretrained(variant("neox", {"model_type": "gpt_neox"}))
    index = json.loads((tmp_path / "ok" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    with pytest.raises(FileNotFoundError, match=f"lists the shard {shard}, which is missing"):
        Llama.from_pretrained(variant("noshard", remove=shard))
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        Llama.from_pretrained(variant("gelu", {"hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="must divide num_attention_heads"):
        Llama.from_pretrained(variant("heads", {"num_key_value_heads": 3}))
    with pytest.raises(ValueError, match="has shape"):
        Llama.from_pretrained(variant("size", {"intermediate_size": 20}))
    with pytest.raises(ValueError, match="sliding_window must be null"):
        Llama.from_pretrained(variant("mistral", {"model_type": "mistral", "sliding_window": 8}))
    bad = variant("traversal")
    doc = json.loads((bad / "model.safetensors.index.json").read_text())
    doc["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="plain .safetensors file names"):
        Llama.from_pretrained(bad)
