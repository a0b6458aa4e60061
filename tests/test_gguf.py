"""GGUF v3: our files round-trip and read in the gguf package with llama.cpp's names, types and
blocks; a file the gguf package's writer made loads in ours; the q/k row permutation is
llama.cpp's rotary convention; and hostile files get a ValueError, never garbage."""

import copy
import struct

import numpy as np
import pytest

from scratchlm.compress import quantize, quantized_layers
from scratchlm.compress.gguf import _permute, _unpermute, export_gguf, load_gguf
from scratchlm.data import CharTokenizer
from scratchlm.models import GPT, GPTConfig, Llama, LlamaConfig

LLAMA = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
GPT_CFG = GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=64)
IDX = np.random.default_rng(0).integers(0, 40, (2, 12))


def _models():
    return [Llama(LLAMA, rng=0), Llama(LlamaConfig(**{**vars(LLAMA), "tie_word_embeddings":
                                                      True}), rng=1), GPT(GPT_CFG, rng=2),
            Llama(LlamaConfig(**{**vars(LLAMA), "intermediate_size": 40}), rng=3)]


@pytest.mark.parametrize("fmt", ["f32", "q8_0", "q4_0"])
def test_round_trip(tmp_path, fmt):
    tok = CharTokenizer.train("abcdefghij klmnop")
    for model in _models():
        expected = copy.deepcopy(model)
        if fmt != "f32":
            quantize(expected, fmt, fallback="int8")
        path = tmp_path / f"{type(model).__name__}.gguf"
        export_gguf(model, path, fmt, tokenizer=tok)
        loaded, tok2 = load_gguf(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        if model.config.__dict__.get("intermediate_size") == 40 and fmt != "f32":
            # down_proj (input 40) fell back to int8; GGUF holds it dequantized, as F32, so it
            # loads as a float Linear: the same weights, summed in another order
            assert "model.layers.0.mlp.down_proj" not in quantized_layers(loaded)
            np.testing.assert_allclose(loaded.eval()(IDX), expected.eval()(IDX), rtol=1e-5,
                                       atol=1e-6)
            continue
        np.testing.assert_array_equal(loaded.eval()(IDX), expected.eval()(IDX))
        assert tok2.to_dict() == tok.to_dict()
        export_gguf(expected, tmp_path / "again.gguf", tokenizer=tok)  # quantized: as it is
        assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("fmt", ["f32", "q8_0", "q4_0"])
def test_the_gguf_package_reads_ours(tmp_path, fmt):
    gguf = pytest.importorskip("gguf")
    model = Llama(LLAMA, rng=0)
    export_gguf(model, tmp_path / "m.gguf", fmt)
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert r.fields["llama.block_count"].contents() == 2
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 + 9 * 2 + 1
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[fmt]
    sd = model.state_dict()
    for ours, theirs, heads in (("model.layers.1.mlp.gate_proj.weight", "blk.1.ffn_gate.weight",
                                 None),
                                ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight",
                                 4),
                                ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight",
                                 2)):
        t = tensors[theirs]
        assert t.tensor_type == qtype and list(t.shape) == list(sd[ours].shape[::-1])
        w = sd[ours] if heads is None else _permute(sd[ours], heads)
        if fmt == "f32":
            np.testing.assert_array_equal(t.data, w)
        else:                           # llama.cpp's blocks of the (permuted) float weight
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1),
                                          gguf.quants.quantize(w, qtype).reshape(-1))
    norm = tensors["blk.0.attn_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(norm.data, sd["model.layers.0.input_layernorm.weight"])


def test_a_file_the_gguf_writer_made_loads(tmp_path):
    gguf = pytest.importorskip("gguf")
    model = GPT(GPT_CFG, rng=3)
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_context_length(32)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_block_count(2)
    w.add_head_count(2)
    w.add_layer_norm_eps(1e-5)
    names = {"transformer.wte.weight": "token_embd.weight",
             "transformer.wpe.weight": "position_embd.weight",
             "transformer.ln_f.weight": "output_norm.weight",
             "transformer.ln_f.bias": "output_norm.bias"}
    for i in range(2):
        for ours, theirs in (("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"),
                             ("attn.c_proj", "attn_output"), ("ln_2", "ffn_norm"),
                             ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")):
            for part in ("weight", "bias"):
                names[f"transformer.h.{i}.{ours}.{part}"] = f"blk.{i}.{theirs}.{part}"
    sd = model.state_dict()
    for ours, theirs in names.items():
        v = sd[ours]
        if ours.endswith(".weight") and ".h." in ours and v.ndim == 2:
            w.add_tensor(theirs, gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0),
                         raw_shape=gguf.quants.quant_shape_to_byte_shape(
                             v.shape, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(theirs, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    loaded, tok = load_gguf(path)
    assert tok is None
    quantize(model, "q8_0")
    np.testing.assert_array_equal(loaded.eval()(IDX), model.eval()(IDX))


def test_the_permutation_is_llama_cpps_rotary_convention():
    """Hugging Face rotates each head's halves (i, i + d/2); llama.cpp's 'normal' rope rotates
    adjacent pairs (2i, 2i + 1) at the same frequencies. With the rows permuted, the rotated
    query-key products are the same."""
    rng = np.random.default_rng(0)
    H, d, C = 2, 8, 16
    wq, wk, x = rng.standard_normal((H * d, C)), rng.standard_normal((H * d, C)), \
        rng.standard_normal((5, C))
    inv = 10000.0 ** (-np.arange(0, d, 2) / d)                       # (d/2,)
    ang = np.arange(5)[:, None] * inv                                # (T, d/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def halves(v):                                                   # v (T, d)
        a, b = v[:, :d // 2], v[:, d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    def pairs(v):
        a, b = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2], out[:, 1::2] = a * cos - b * sin, b * cos + a * sin
        return out
    q, k = (x @ wq.T).reshape(5, H, d), (x @ wk.T).reshape(5, H, d)
    qp, kp = (x @ _permute(wq, H).T).reshape(5, H, d), (x @ _permute(wk, H).T).reshape(5, H, d)
    for h in range(H):
        np.testing.assert_allclose(halves(q[:, h]) @ halves(k[:, h]).T,
                                   pairs(qp[:, h]) @ pairs(kp[:, h]).T, rtol=1e-12)
    np.testing.assert_array_equal(_unpermute(_permute(wq, H), H), wq)


def test_export_refuses():
    with pytest.raises(ValueError, match="gpt2 architecture has biases"):
        export_gguf(GPT(GPTConfig(**{**vars(GPT_CFG), "bias": False})), "x.gguf", "f32")
    with pytest.raises(ValueError, match="no qk_norm"):
        export_gguf(Llama(LlamaConfig(**{**vars(LLAMA), "qk_norm": True})), "x.gguf", "f32")
    with pytest.raises(ValueError, match="fmt must be one of f32, q8_0, q4_0"):
        export_gguf(Llama(LLAMA), "x.gguf", "int8")
    q = Llama(LLAMA)
    quantize(q, "q8_0")
    with pytest.raises(ValueError, match="quantized already"):
        export_gguf(q, "x.gguf", "q4_0")
    with pytest.raises(TypeError, match="takes a GPT or a Llama"):
        export_gguf(object(), "x.gguf")
    from scratchlm.finetune import apply_lora
    lora = Llama(LLAMA)
    apply_lora(lora, ("q_proj",), r=2)
    with pytest.raises(ValueError, match="the model has LoRA layers"):
        export_gguf(lora, "x.gguf", "f32")


def _rewrite(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _entry(key, value):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + (
        struct.pack("<IQ", 8, len(value)) + value.encode() if isinstance(value, str)
        else struct.pack("<II", 4, value))


def _with_key(data, key, value):
    """``data`` with one more metadata key (a string, or a uint32) right after the counts, and
    a padding key that keeps the tensor data where it was (a multiple of 32 bytes inserted)."""
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    entry = _entry(key, value)
    pad = _entry("x.pad", "")
    pad = _entry("x.pad", "p" * (-(len(entry) + len(pad)) % 32))
    return data[:16] + struct.pack("<Q", n_kv + 2) + entry + pad + data[24:]


def test_hostile_files(tmp_path):
    good = tmp_path / "good.gguf"
    export_gguf(Llama(LLAMA, rng=0), good, "q4_0")
    data = good.read_bytes()
    cases = {
        "magic": (b"GGML" + data[4:], "not a GGUF file"),
        "version": (_rewrite(data, 4, "<I", 2), "GGUF version 2"),
        "counts": (_rewrite(data, 8, "<Q", 1 << 60), "cannot fit"),
        "truncated": (data[:len(data) // 2], "past the end|runs past"),
        "header only": (data[:40], "cannot fit"),
    }
    first_key = 24                                     # the first key's length field
    cases["key length"] = (_rewrite(data, first_key, "<Q", 1 << 40), "past the end")
    for name, (blob, match) in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            load_gguf(p)
    p = tmp_path / "lying.gguf"                        # a header promising a huge model
    key = data.index(b"llama.embedding_length") + len(b"llama.embedding_length") + 4
    p.write_bytes(_rewrite(data, key, "<I", 1 << 30))
    with pytest.raises(ValueError, match=r"has shape \(40, 64\); the metadata implies "
                                         r"\(40, 1073741824\)"):
        load_gguf(p)
    key = data.index(b"llama.block_count") + len(b"llama.block_count") + 4
    p.write_bytes(_rewrite(data, key, "<I", 1 << 30))
    with pytest.raises(ValueError, match="a llama of 1073741824 layers has 9663676419 tensors"):
        load_gguf(p)
    key = data.index(b"llama.feed_forward_length") + len(b"llama.feed_forward_length") + 4
    p.write_bytes(_rewrite(data, key, "<I", 1 << 30))   # every axis is checked, not just one
    with pytest.raises(ValueError, match="'blk.0.ffn_gate.weight' has shape"):
        load_gguf(p)
    name = data.index(b"blk.1.ffn_up.weight") + len(b"blk.1.ffn_up.weight")
    p.write_bytes(_rewrite(data, name + 4, "<Q", 0))    # a zero dimension
    with pytest.raises(ValueError, match="'blk.1.ffn_up.weight' has a dimension of size 0"):
        load_gguf(p)
    p.write_bytes(_with_key(data, "llama.rope.scaling.type", "linear"))
    with pytest.raises(ValueError, match="rope scaling .* is not supported"):
        load_gguf(p)
    p.write_bytes(_with_key(data, "scratchlm.tokenizer", 7))
    with pytest.raises(ValueError, match="scratchlm.tokenizer must be a string"):
        load_gguf(p)
    p = tmp_path / "missing.gguf"                      # a tensor renamed: unexpected + missing
    p.write_bytes(data.replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_UP.weight"))
    with pytest.raises(ValueError, match="tensors do not match a llama"):
        load_gguf(p)
    rng = np.random.default_rng(0)                     # random corruption: a ValueError or a
    header = data.index(b"token_embd.weight") + 200    # model, never another exception
    export_gguf(Llama(LLAMA, rng=0), good, "q4_0", tokenizer=CharTokenizer.train("abcdef"))
    data = good.read_bytes()                           # (with a tokenizer key to corrupt too)
    for k in range(300):
        blob = bytearray(data)
        for i in rng.integers(0, header if k % 2 else len(blob), 3):
            blob[i] = rng.integers(0, 256)
        p.write_bytes(bytes(blob))
        try:
            load_gguf(p)
        except ValueError:
            pass
