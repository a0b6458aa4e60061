"""Weight quantization: llama.cpp's Q8_0/Q4_0 bit for bit (against the gguf package's
reference port), the Numba kernels against their NumPy twins over the whole float32 range,
QuantizedLinear's products and backward, quantize() on GPT and Llama, and bad input."""

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.compress import (FORMATS, QuantizedLinear, dequantize_weight, quantize,
                                quantize_weight, quantized_layers)
from scratchlm.gradcheck import check_module
from scratchlm.kernels import quant as K
from scratchlm.kernels import use_backend
from scratchlm.models import GPT, GPTConfig, Llama, LlamaConfig

RNG = np.random.default_rng(0)


def _wide(rows, cols, seed=0):
    """float32 rows spanning the range: each row scaled by e^[-80, 80] (1e-35 to 1e35), with a
    zero block, a block of one value, ties at .5, a huge entry and a row of subnormals."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-80, 80, (rows, 1))))
    x = x.astype(np.float32)
    x[0, :32] = 0
    x[1, :32] = 3.0
    x[2, :32] = np.arange(32, dtype=np.float32) - 15.5          # halves once scaled
    x[3, 40] = 1e38
    x[4] = (rng.standard_normal(cols) * 1e-40).astype(np.float32)   # subnormal
    return x


def _gguf_blocks(d, q):
    """Our (d float32, q) as ggml's byte blocks: 2 bytes of float16 d, then the quants."""
    M, nb = d.shape
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16).view(np.uint8).reshape(M, nb, 2)
    return np.concatenate([d16, q.view(np.uint8).reshape(M, nb, -1)], axis=2).reshape(M, -1)


def _quantize_both(fmt, x):
    out = {}
    for route in ("numba", "numpy"):
        d = np.empty((x.shape[0], x.shape[1] // 32), np.float32)
        q = np.empty((x.shape[0], x.shape[1] // (1 if fmt == "q8_0" else 2)),
                     np.int8 if fmt == "q8_0" else np.uint8)
        getattr(K, f"quantize_{fmt}_{route}")(x, d, q)
        out[route] = (d, q)
    return out


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_blocks_equal_ggmls_reference(fmt):
    gguf = pytest.importorskip("gguf")
    x = np.delete(_wide(64, 256), 4, axis=0)       # (ggml's 1/d overflows on subnormal rows)
    with np.errstate(over="ignore"):
        ref = gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, fmt.upper()))
    for route, (d, q) in _quantize_both(fmt, x).items():
        np.testing.assert_array_equal(_gguf_blocks(d, q), ref, err_msg=route)
    qw, s = quantize_weight(RNG.standard_normal((4, 64)), fmt)     # and back, as ggml reads it
    theirs = gguf.quants.dequantize(_gguf_blocks(s.astype(np.float32), qw),
                                    getattr(gguf.GGMLQuantizationType, fmt.upper()))
    np.testing.assert_array_equal(dequantize_weight(qw, s, fmt), theirs.reshape(4, 64))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_quantize_twins_agree_everywhere(fmt):
    x = _wide(96, 128, seed=2)
    x[5, 7], x[6, 70], x[7, 100] = np.nan, np.inf, -np.inf          # non-finite blocks
    both = _quantize_both(fmt, x)
    (d1, q1), (d2, q2) = both["numba"], both["numpy"]
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(d1.view(np.uint32), d2.view(np.uint32))  # NaNs included
    assert np.isnan(d1[5, 0]) and np.isnan(d1[6, 2]) and np.isnan(d1[7, 3])
    assert not np.isnan(np.delete(d1.ravel(), [5 * 4, 6 * 4 + 2, 7 * 4 + 3])).any()
    zero_code = 0 if fmt == "q8_0" else 8 | 8 << 4
    assert (q1[4] == zero_code).all()                      # subnormal row: 1/d overflows -> 0


def test_an_all_zero_q4_0_block_has_ggmls_negative_zero_scale():
    """ggml's C quantizer starts its max at +0, so a block of zeros (even of -0.0s, which a
    pruned negative weight becomes) gets d = 0 / -8 = -0.0 (bits 0x8000); gguf's Python port
    takes the block's first entry instead and gives +0.0 there. Both routes follow the C code."""
    x = np.full((1, 64), -0.0, np.float32)
    x[0, 32:] = 0.0
    for route, (d, q) in _quantize_both("q4_0", x).items():
        assert (d.astype(np.float16).view(np.uint16) == 0x8000).all(), route
        assert (q == 8 | 8 << 4).all()


def test_rounding_bounds():
    """Each weight is within half a step (q8_0) or one step (q4_0) of its value, plus what
    rounding the step to float16 moves the largest code (127 or 8 steps of 2^-11 relative)."""
    w = RNG.standard_normal((16, 96)).astype(np.float32)
    for fmt, steps in (("q8_0", 0.5 + 127 * 2.0 ** -11), ("q4_0", 1.0 + 8 * 2.0 ** -11)):
        q, s = quantize_weight(w, fmt)
        d = np.abs(s.astype(np.float32)).repeat(32, axis=1)
        err = np.abs(dequantize_weight(q, s, fmt) - w)
        assert (err <= steps * d * (1 + 1e-6)).all(), fmt
    q, s = quantize_weight(w, "int8")
    assert (np.abs(dequantize_weight(q, s, "int8") - w) <= 0.5 * s[:, None] * (1 + 1e-6)).all()
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.abs(q).max() == 127


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_block_products_bit_for_bit(fmt):
    M, N, Kd = 7, 40, 96
    x = _wide(M, Kd, seed=3)[:, ::-1].copy() * np.float32(1e-30)
    w = RNG.standard_normal((N, Kd)).astype(np.float32)
    qw, s = quantize_weight(w, fmt)
    xd = np.empty((M, Kd // 32), np.float32)
    xq = np.empty((M, Kd), np.int8)
    K.quantize_q8_0(x, xd, xq)
    outs = {}
    for route in ("numba", "numpy"):
        out = np.full((M, N), np.nan, np.float32)
        getattr(K, f"{fmt}_matmul_{route}")(xd, K.interleave(xq, 32), s.view(np.uint16),
                                            K.interleave(qw, 32 if fmt == "q8_0" else 16),
                                            out, 3, 29)
        outs[route] = out
    np.testing.assert_array_equal(outs["numba"], outs["numpy"])
    assert np.isnan(outs["numba"][:, :3]).all() and np.isnan(outs["numba"][:, 29:]).all()
    # the formula, in float64 from the dequantized operands
    xdeq = (xq.reshape(M, -1, 32) * xd[..., None]).reshape(M, Kd).astype(np.float64)
    ref = xdeq @ dequantize_weight(qw, s, fmt).astype(np.float64).T
    np.testing.assert_allclose(outs["numba"][:, 3:29], ref[:, 3:29], rtol=1e-5,
                               atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantized_linear(fmt, dtype):
    lin = nn.Linear(64, 24, dtype=dtype, rng=1)
    layer = QuantizedLinear.from_linear(lin, fmt)
    x = RNG.standard_normal((2, 5, 64)).astype(dtype)
    y = layer(x)
    assert y.shape == (2, 5, 24) and y.dtype == dtype
    w_hat = layer.dequantized().astype(np.float64)
    ref = x.astype(np.float64) @ w_hat.T + lin.bias.data
    tol = 1e-5 if fmt == "int8" else 2e-2                          # (q formats round x too)
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol * np.abs(ref).max())
    np.testing.assert_array_equal(layer.inference(x), y)
    with use_backend("numpy"):
        y2 = layer(x)
    if fmt == "int8":
        np.testing.assert_allclose(y2, y, rtol=0, atol=(1e-5 if dtype == np.float32 else 1e-12)
                                   * np.abs(y).max())
    else:
        np.testing.assert_array_equal(y2, y)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dy @ layer.dequantized(), rtol=1e-6)
    assert layer.bias.grad is None                                  # frozen by default
    sd = layer.state_dict()
    assert set(sd) == {"qweight", "scales", "bias"}
    assert sd["scales"].dtype == (np.float32 if fmt == "int8" else np.float16)
    # state_dict holds llama.cpp's layout (the layer computes from an interleaved copy), and
    # loads back into it
    q, s = quantize_weight(lin.weight.data, fmt)
    np.testing.assert_array_equal(sd["qweight"], q)
    assert (fmt == "int8") == np.array_equal(layer.qweight, q)
    other = QuantizedLinear.from_linear(nn.Linear(64, 24, rng=9, dtype=dtype), fmt)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.inference(x), y)


def test_int8_layer_gradcheck():
    """int8 has no activation rounding: its input gradient (and the bias's, when trained) is
    the exact derivative."""
    layer = QuantizedLinear.from_linear(nn.Linear(8, 5, dtype=np.float64, rng=0), "int8")
    layer.bias.requires_grad = True
    report = check_module(layer, RNG.standard_normal((3, 8)))
    assert report.ok, str(report)
    assert layer.to(np.float32).scales.dtype == np.float32          # storage: kept on .to()
    q8 = QuantizedLinear.from_linear(nn.Linear(32, 4, rng=0), "q8_0")
    assert q8.to(np.float64).scales.dtype == np.float16


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_models(fmt):
    idx = RNG.integers(0, 64, (2, 16))
    llama = Llama(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=32, tie_word_embeddings=False), rng=0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64), rng=0)
    for model, n in ((llama, 15), (gpt, 8)):                      # GPT's tied lm_head stays
        model.eval()
        ref = model(idx)
        names = quantize(model, fmt)
        assert len(names) == n and set(quantized_layers(model)) == set(names)
        assert set(names.values()) == {fmt}
        out = model(idx)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < {"int8": 0.03, "q8_0": 0.03, "q4_0": 0.3}[fmt], err
        gen = model.generate(idx[:1, :4], 6, greedy=True)
        assert gen.shape == (1, 10)
        logits, loss = model(idx, idx)                            # it evaluates
        assert np.isfinite(loss)
    assert "lm_head" not in quantize(Llama(llama.config, rng=0), fmt, skip=("lm_head",))


def test_bad_input():
    lin = nn.Linear(40, 8, rng=0)
    with pytest.raises(ValueError, match="fmt must be one of int8, q8_0, q4_0, got 'q5_0'"):
        QuantizedLinear.from_linear(lin, "q5_0")
    with pytest.raises(ValueError, match=r"proj.weight has 40 input features; q8_0 needs a "
                                         r"multiple of 32 \(int8 takes any size\)"):
        quantize_weight(lin.weight.data, "q8_0", "proj.weight")
    assert QuantizedLinear.from_linear(lin, "int8").qweight.shape == (8, 40)
    w = np.ones((2, 32), np.float32)
    w[0, 0] = 1e7                                                   # scale beyond float16
    with pytest.raises(ValueError, match="cannot be stored in q8_0"):
        quantize_weight(w, "q8_0")
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="must be finite"):
        quantize_weight(w, "q4_0")
    layer = QuantizedLinear.from_linear(nn.Linear(32, 4, rng=0), "q8_0")
    with pytest.raises(TypeError, match="float64 but QuantizedLinear holds float32"):
        layer(np.zeros((2, 32)))
    with pytest.raises(ValueError, match="last dimension 32, got shape"):
        layer(np.zeros((2, 31), np.float32))
    with pytest.raises(TypeError, match="x must be a float array"):
        layer(np.zeros((2, 32), np.int64))
    y = layer(np.full((1, 32), np.nan, np.float32))                 # NaN in, NaN out
    assert np.isnan(y).all()
    from scratchlm.finetune import apply_lora
    m = Llama(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=8), rng=0)
    apply_lora(m, ("q_proj",), r=2)
    with pytest.raises(ValueError, match="LoRA layers: merge_lora"):
        quantize(m, "int8")
    with pytest.raises(ValueError, match="no Linear layer to quantize"):
        quantize(nn.Embedding(4, 4), "int8")


@pytest.mark.parametrize("model", ["llama", "transformer"])
def test_quantize_cli(tmp_path, capsys, model):
    from scratchlm.cli import main
    from scratchlm.io import save_checkpoint
    from scratchlm.training import load_model
    from conftest import train_tiny
    ck, _ = train_tiny(tmp_path, model, width=32, text="\n".join(
        ["abcabcabcabc defdefdef", "the cat sat on the mat"] * 60))   # llama: intermediate 40
    capsys.readouterr()
    out = tmp_path / "q.npz"
    assert main(["quantize", "--checkpoint", str(ck), "--all", "--format", "q4_0",
                 "--max-tokens", "200", "--new-tokens", "4", "--out", str(out),
                 "--gguf", str(tmp_path / "q.gguf")]) == 0
    text = capsys.readouterr().out
    assert "GGUF v3" in text
    for fmt in ("float32", "int8", "q8_0", "q4_0"):
        assert f"\n{fmt} " in text, text
    if model == "llama":                            # intermediate 40: down_proj falls back
        assert "in q4_0, 1 in int8 (input size not a multiple of 32)" in text
    q, tok, meta, _ = load_model(out)
    assert set(meta["quantized"]["layers"].values()) <= {"q4_0", "int8"}
    assert quantized_layers(q)
    lm = load_model(ck)[0]
    expected = quantize(lm, "q4_0", fallback="int8")
    assert expected == meta["quantized"]["layers"]
    idx = np.arange(8)[None] % q.config.vocab_size
    np.testing.assert_array_equal(q.eval()(idx), lm.eval()(idx))     # what was saved
    from scratchlm.compress.gguf import load_gguf
    g, gtok = load_gguf(tmp_path / "q.gguf")
    assert gtok.to_dict() == tok.to_dict()
    np.testing.assert_allclose(g.eval()(idx), lm(idx), rtol=1e-5,       # (its int8 layers
                               atol=1e-5)                                # as F32 there)
    assert main(["eval", "--checkpoint", str(out)]) == 0
    assert main(["sample", "--checkpoint", str(out), "--length", "5", "--greedy"]) == 0
    capsys.readouterr()
    assert main(["quantize", "--checkpoint", str(out)]) == 2
    assert "is quantized already (q4_0)" in capsys.readouterr().err
    # a record that does not fit the model
    bad = tmp_path / "bad.npz"
    layers = dict(meta["quantized"]["layers"])
    layers["nonexistent.proj"] = "q8_0"
    save_checkpoint(bad, q, **{**meta, "quantized": {"format": "q4_0", "layers": layers}})
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "meta['quantized'] does not fit the model" in capsys.readouterr().err


def test_int8_is_torchs_per_channel_quantization(torch):
    """int8's codes are torch.quantize_per_channel's (symmetric, zero point 0, the same
    scales): rint of w / scale, halves to even."""
    import warnings
    w = RNG.standard_normal((8, 40)).astype(np.float32)
    w[0, :4] = [0.5, 1.5, 2.5, -2.5]                     # ties once scaled: a row of its own
    w[0, 4:] = 0
    w[0, 5] = 127.0
    q, s = quantize_weight(w, "int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theirs = torch.quantize_per_channel(torch.from_numpy(w), torch.from_numpy(
                s.astype(np.float64)), torch.zeros(8, dtype=torch.long), 0, torch.qint8)
        except (AttributeError, RuntimeError) as exc:  # (deprecated in torch)
            pytest.skip(f"torch.quantize_per_channel unavailable: {exc}")
    np.testing.assert_array_equal(q, theirs.int_repr().numpy())
    assert list(q[0, :4]) == [0, 2, 2, -2]               # halves to even


def test_scale_decoding_is_exact_for_every_float16():
    """The kernels read float16 scales as bits (Numba has no float16): every one of the 65,536
    patterns decodes to NumPy's float32 value (NaNs to NaN), subnormals and -0.0 included."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ref = h.view(np.float16).astype(np.float32)
    got = K._row_scales(h.reshape(256, 256), 3, 256).reshape(-1)
    ref = ref[3 * 256:]
    nan = np.isnan(ref)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()
