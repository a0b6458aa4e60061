"""GGUF v3, llama.cpp's model file: :func:`export_gguf` writes a GPT (architecture ``gpt2``) or a
Llama (``llama``) with its Linear weights in ``f32``, ``q8_0`` or ``q4_0``; :func:`load_gguf`
reads such a file back into our model.

The layout, all little-endian::

    "GGUF"  uint32 version (3)  uint64 tensor_count  uint64 kv_count
    kv_count x   (string key, uint32 value_type, value)
    tensor_count x (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml_type,
                    uint64 offset)
    padding to general.alignment (32), then the tensor data, each tensor at its offset
    (a multiple of 32, counted from the start of the data)

A string is a uint64 length and UTF-8 bytes; an array a uint32 element type, a uint64 count
and the elements. ``ne[0]`` is the length of a row (a Linear weight ``(out, in)`` has
``ne = [in, out]``). ggml types used here: F32 (0), F16 (1, read only), Q4_0 (2), Q8_0 (8);
a Q8_0/Q4_0 row is its blocks of 34/18 bytes (a float16 scale, then the quants).

Names and keys are llama.cpp's (``token_embd.weight``, ``blk.{i}.attn_q.weight``, ...,
``llama.context_length``, ...). As llama.cpp's converter does, the rows of a Llama's
``q_proj``/``k_proj`` are permuted on the way out (llama.cpp rotates adjacent pairs of each
head's dimensions where Hugging Face rotates its two halves) and back on the way in. An
``int8`` layer (no llama.cpp type) is written as its dequantized F32 weight. The tokenizer goes
in as this library's JSON under ``scratchlm.tokenizer`` with ``tokenizer.ggml.model = "none"``:
llama.cpp runs the file on token ids but cannot tokenize text with it.

:func:`load_gguf` treats the file as hostile: every count, length, shape and offset is checked
against the file's size before anything is allocated, only the types above are accepted, every
tensor the architecture needs must be present with the shape the metadata implies and none
other, and nothing is built until the whole file has been read and checked.
"""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np

from .. import nn
from .._checks import resolve_dtype
from .quantize import BLOCK, quantize, quantized_layers

__all__ = ["export_gguf", "load_gguf", "read_gguf"]

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32
_MAX_DIMS = 4

# metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<u1", _I8: "<i1", _U16: "<u2", _I16: "<i2", _U32: "<u4", _I32: "<i4",
           _F32: "<f4", _BOOL: "<u1", _U64: "<u8", _I64: "<i8", _F64: "<f8"}
# ggml tensor types
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8
_TYPE_OF_FMT = {"f32": F32, "q8_0": Q8_0, "q4_0": Q4_0}
_FMT_OF_TYPE = {Q8_0: "q8_0", Q4_0: "q4_0"}
_BLOCK_BYTES = {Q8_0: 2 + BLOCK, Q4_0: 2 + BLOCK // 2}
_ITEM = {F32: 4, F16: 2}
#: llama.cpp's general.file_type for a whole file (LLAMA_FTYPE_*)
_FILE_TYPE = {"f32": 0, "q4_0": 2, "q8_0": 7}


# ------------------------------------------------------------------------------------------------
# the names: ours <-> llama.cpp's
# ------------------------------------------------------------------------------------------------
def _llama_names(c) -> dict:
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    for i in range(c.num_hidden_layers):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        names.update({p + "input_layernorm.weight": g + "attn_norm.weight",
                      p + "self_attn.q_proj.weight": g + "attn_q.weight",
                      p + "self_attn.k_proj.weight": g + "attn_k.weight",
                      p + "self_attn.v_proj.weight": g + "attn_v.weight",
                      p + "self_attn.o_proj.weight": g + "attn_output.weight",
                      p + "post_attention_layernorm.weight": g + "ffn_norm.weight",
                      p + "mlp.gate_proj.weight": g + "ffn_gate.weight",
                      p + "mlp.up_proj.weight": g + "ffn_up.weight",
                      p + "mlp.down_proj.weight": g + "ffn_down.weight"})
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    return names


def _gpt_names(c) -> dict:
    names = {"transformer.wte.weight": "token_embd.weight",
             "transformer.wpe.weight": "position_embd.weight"}
    for i in range(c.n_layer):
        p, g = f"transformer.h.{i}.", f"blk.{i}."
        for ours, theirs in (("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"),
                             ("attn.c_proj", "attn_output"), ("ln_2", "ffn_norm"),
                             ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")):
            for part in ("weight", "bias"):
                names[f"{p}{ours}.{part}"] = f"{g}{theirs}.{part}"
    names["transformer.ln_f.weight"] = "output_norm.weight"
    names["transformer.ln_f.bias"] = "output_norm.bias"
    return names


def _permute(w, n_head):
    """Rows of a q/k weight (n_head * d, ...) from halves order to llama.cpp's pairs order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _unpermute(w, n_head):
    """The inverse of :func:`_permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _heads_of(model, ours):
    """The head count a Llama weight's rows are permuted by (None: not permuted)."""
    c = model.config
    if ours.endswith("self_attn.q_proj.weight"):
        return c.num_attention_heads
    if ours.endswith("self_attn.k_proj.weight"):
        return c.num_key_value_heads or c.num_attention_heads
    return None


def _arch(model):
    from ..finetune.lora import LoRALinear
    from ..models import GPT, Llama
    if not isinstance(model, (GPT, Llama)):
        raise TypeError(f"export_gguf takes a GPT or a Llama, got {type(model).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model has LoRA layers: merge_lora and reload it as a plain model "
                         "(or export the base model and save the adapter) before export_gguf")
    if isinstance(model, Llama):
        c = model.config
        for flag in ("attention_bias", "qk_norm"):
            if getattr(c, flag):
                raise ValueError(f"llama.cpp's llama architecture has no {flag}: this Llama "
                                 f"cannot be exported to GGUF")
        if c.rope_scaling is not None:
            raise ValueError("export_gguf does not write rope_scaling yet (llama.cpp keeps "
                             "llama3 scaling as a rope_freqs tensor)")
        return "llama"
    if isinstance(model, GPT):
        if not model.config.bias:
            raise ValueError("llama.cpp's gpt2 architecture has biases: a GPT with bias=False "
                             "cannot be exported to GGUF")
        return "gpt2"
    raise TypeError(f"export_gguf takes a GPT or a Llama, got {type(model).__name__}")


def _metadata(model, arch, fmt, tokenizer) -> list:
    c = model.config
    kv = [("general.architecture", _STR, arch), ("general.name", _STR, "scratchlm"),
          ("general.file_type", _U32, _FILE_TYPE[fmt])]
    if fmt != "f32":
        kv.append(("general.quantization_version", _U32, 2))
    if arch == "llama":
        head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
        kv += [("llama.context_length", _U32, c.max_position_embeddings),
               ("llama.embedding_length", _U32, c.hidden_size),
               ("llama.block_count", _U32, c.num_hidden_layers),
               ("llama.feed_forward_length", _U32, c.intermediate_size),
               ("llama.attention.head_count", _U32, c.num_attention_heads),
               ("llama.attention.head_count_kv", _U32,
                c.num_key_value_heads or c.num_attention_heads),
               ("llama.rope.freq_base", _F32, float(c.rope_theta)),
               ("llama.rope.dimension_count", _U32, head_dim),
               ("llama.attention.key_length", _U32, head_dim),
               ("llama.attention.value_length", _U32, head_dim),
               ("llama.attention.layer_norm_rms_epsilon", _F32, float(c.rms_norm_eps)),
               ("llama.vocab_size", _U32, c.vocab_size)]
    else:
        kv += [("gpt2.context_length", _U32, c.block_size),
               ("gpt2.embedding_length", _U32, c.n_embd),
               ("gpt2.block_count", _U32, c.n_layer),
               ("gpt2.feed_forward_length", _U32, 4 * c.n_embd),
               ("gpt2.attention.head_count", _U32, c.n_head),
               ("gpt2.attention.layer_norm_epsilon", _F32, 1e-5),
               ("gpt2.vocab_size", _U32, c.vocab_size)]
    kv.append(("tokenizer.ggml.model", _STR, "none"))
    if tokenizer is not None:
        kv.append(("scratchlm.tokenizer", _STR, json.dumps(tokenizer.to_dict())))
    return kv


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype, value) -> bytes:
    if vtype == _STR:
        return _string(value)
    return np.array(value, _SCALAR[vtype]).tobytes()


def _blocks(layer, rows=None) -> bytes:
    """A quantized layer's rows as ggml blocks: per block its float16 scale, then its quants."""
    N = layer.out_features
    nb = layer.in_features // BLOCK
    d = layer.scales.astype("<f2").view(np.uint8).reshape(N, nb, 2)
    q = layer.codes().view(np.uint8).reshape(N, nb, -1)
    out = np.concatenate([d, q], axis=2).reshape(N, -1)
    return out if rows is None else out[rows]


def _tensors(model, names):
    """``[(gguf name, numpy shape, ggml type, bytes)]`` in our state_dict order."""
    state = model.state_dict()
    qlayers = quantized_layers(model)
    out = []
    for ours, theirs in names.items():
        layer_name = ours.rsplit(".", 1)[0]
        heads = _heads_of(model, ours) if theirs.startswith("blk.") else None
        layer = qlayers.get(layer_name)
        if layer is not None and ours.endswith(".weight") and layer.fmt in _TYPE_OF_FMT:
            data = _blocks(layer)                                    # (N, nb * block bytes)
            if heads:
                data = _permute(data, heads)
            out.append((theirs, (layer.out_features, layer.in_features),
                        _TYPE_OF_FMT[layer.fmt], np.ascontiguousarray(data).tobytes()))
            continue
        if layer is not None and ours.endswith(".weight"):            # int8: no ggml type
            w = layer.dequantized().astype("<f4")
        elif layer is not None:                                      # its float bias
            w = layer.bias.data.astype("<f4")
        else:
            w = state[ours].astype("<f4")
        if heads:
            w = _permute(w, heads)
        out.append((theirs, w.shape, F32, np.ascontiguousarray(w).tobytes()))
    return out


def export_gguf(model, path, fmt: str | None = None, tokenizer=None) -> None:
    """Write ``model`` (a :class:`~scratchlm.models.GPT` or :class:`~scratchlm.models.Llama`)
    to ``path`` as GGUF v3 (atomically). ``fmt`` ``"f32"``, ``"q8_0"`` or ``"q4_0"`` quantizes a
    copy's Linear layers first (a layer whose input size is not a multiple of 32 stays F32);
    ``fmt=None`` writes the model as it is (quantized or not). ``tokenizer`` goes in too."""
    import copy
    from ..io import atomic_write
    arch = _arch(model)
    if fmt is not None:
        if fmt not in _TYPE_OF_FMT:
            raise ValueError(f"fmt must be one of f32, q8_0, q4_0 (llama.cpp's types) or None, "
                             f"got {fmt!r}")
        if quantized_layers(model):
            raise ValueError("the model is quantized already: pass fmt=None to write it as it is")
        if fmt != "f32":
            model = copy.deepcopy(model)
            quantize(model, fmt, fallback="int8")
    names = _llama_names(model.config) if arch == "llama" else _gpt_names(model.config)
    want = _expected_shapes(arch, model.config)
    state, modules = model.state_dict(), dict(model.named_modules())
    shapes = {}
    for ours, theirs in names.items():
        layer = modules.get(ours.rsplit(".", 1)[0])
        shapes[theirs] = ((layer.out_features, layer.in_features) if hasattr(layer, "qweight")
                          and ours.endswith(".weight") else state[ours].shape)
    odd = [n for n, shape in want.items() if tuple(shapes[n]) != shape]
    if odd:                         # per-layer sizes (structured pruning) GGUF cannot describe
        raise ValueError(f"{odd[0]} has shape {shapes.get(odd[0])}, not the config's "
                         f"{want[odd[0]]}: a structurally pruned model has no GGUF form here")
    formats = {m.fmt for m in quantized_layers(model).values()} - {"int8"}
    file_fmt = fmt or (formats.pop() if len(formats) == 1 else "f32")
    kv = _metadata(model, arch, file_fmt, tokenizer)
    tensors = _tensors(model, names)

    head = io.BytesIO()
    head.write(MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(kv)))
    for key, vtype, value in kv:
        head.write(_string(key) + struct.pack("<I", vtype) + _value(vtype, value))
    offset = 0
    for name, shape, gtype, data in tensors:
        head.write(_string(name) + struct.pack("<I", len(shape)))
        head.write(struct.pack(f"<{len(shape)}Q", *reversed(shape)))  # ne[0]: the row length
        head.write(struct.pack("<IQ", gtype, offset))
        offset += -(-len(data) // ALIGNMENT) * ALIGNMENT
    header = head.getvalue()

    def write(f):
        f.write(header + b"\0" * (-len(header) % ALIGNMENT))
        for _, _, _, data in tensors:
            f.write(data + b"\0" * (-len(data) % ALIGNMENT))
    atomic_write(path, write)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
class _Reader:
    """Sequential reads from the header bytes, each checked against what is left."""

    def __init__(self, f, size, path):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def take(self, n, what):
        if n < 0 or n > self.size - self.pos:
            raise ValueError(f"{self.path}: {what} needs {n:,} bytes at offset {self.pos:,}, "
                             f"past the end of the file ({self.size:,} bytes)")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{self.path} changed while being read")
        self.pos += n
        return data

    def scalar(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what):
        n = self.scalar("Q", what)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {what} is not UTF-8") from None

    def value(self, vtype, what, depth=0):
        if vtype == _STR:
            return self.string(what)
        if vtype == _ARR:
            if depth:
                raise ValueError(f"{self.path}: {what} is an array of arrays")
            etype, count = self.scalar("I", what), self.scalar("Q", what)
            least = 8 if etype == _STR else np.dtype(_SCALAR.get(etype, "u1")).itemsize
            if etype not in _SCALAR and etype != _STR:
                raise ValueError(f"{self.path}: {what} has unknown element type {etype}")
            if count * least > self.size - self.pos:
                raise ValueError(f"{self.path}: {what} declares {count:,} elements, more than "
                                 f"the file holds")
            if etype == _STR:
                return [self.string(what) for _ in range(count)]
            return np.frombuffer(self.take(count * least, what), _SCALAR[etype]).tolist()
        if vtype not in _SCALAR:
            raise ValueError(f"{self.path}: {what} has unknown value type {vtype}")
        v = np.frombuffer(self.take(np.dtype(_SCALAR[vtype]).itemsize, what), _SCALAR[vtype])[0]
        if vtype == _F32:               # the shortest decimal that is this float32: 1e-06, not
            return float(str(v))        # 9.99999997e-07, so a config round-trips
        return bool(v) if vtype == _BOOL else v.item()


def _nbytes(gtype, shape, path, name):
    if gtype in _ITEM:
        return _ITEM[gtype] * int(np.prod(shape, dtype=object))
    if gtype in _BLOCK_BYTES:
        if shape[-1] % BLOCK:
            raise ValueError(f"{path}: tensor {name!r} has rows of {shape[-1]}, not a multiple of "
                             f"{BLOCK} as its type needs")
        return _BLOCK_BYTES[gtype] * int(np.prod(shape, dtype=object)) // BLOCK
    raise ValueError(f"{path}: tensor {name!r} has ggml type {gtype}; this reader takes F32 (0), "
                     f"F16 (1), Q4_0 (2) and Q8_0 (8)")


def read_gguf(path) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a GGUF v3 file: ``tensors`` maps each name to ``(ggml type,
    numpy shape, raw uint8 bytes as an array)``. Every size is checked first (see the module
    docstring)."""
    from .._files import open_regular
    path = os.fspath(path)
    with open_regular(path, "GGUF file") as (f, size):
        r = _Reader(f, size, path)
        if r.take(4, "the magic") != MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        version = r.scalar("I", "the version")
        if version != VERSION:
            raise ValueError(f"{path}: GGUF version {version}; this reader takes version 3")
        n_tensors, n_kv = r.scalar("Q", "the tensor count"), r.scalar("Q", "the key count")
        if n_tensors * 32 > size or n_kv * 12 > size:
            raise ValueError(f"{path}: {n_tensors:,} tensors and {n_kv:,} keys cannot fit in "
                             f"{size:,} bytes")
        meta = {}
        for k in range(n_kv):
            key = r.string(f"key {k}")
            if key in meta:
                raise ValueError(f"{path}: key {key!r} appears twice")
            meta[key] = r.value(r.scalar("I", key), f"the value of {key!r}")
        infos = []
        for t in range(n_tensors):
            name = r.string(f"tensor {t}'s name")
            n_dims = r.scalar("I", name)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ValueError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            ne = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims, name))
            if 0 in ne:
                raise ValueError(f"{path}: tensor {name!r} has a dimension of size 0")
            gtype, offset = struct.unpack("<IQ", r.take(12, name))
            infos.append((name, tuple(reversed(ne)), gtype, offset))
        alignment = meta.get("general.alignment", ALIGNMENT)
        if not isinstance(alignment, int) or not 1 <= alignment <= 1 << 20:
            raise ValueError(f"{path}: general.alignment must be a positive int, got "
                             f"{alignment!r}")
        start = -(-r.pos // alignment) * alignment
        tensors, spans = {}, []
        for name, shape, gtype, offset in infos:
            if name in tensors:
                raise ValueError(f"{path}: tensor {name!r} appears twice")
            n = _nbytes(gtype, shape, path, name)
            if offset % alignment or start + offset + n > size:
                raise ValueError(f"{path}: tensor {name!r} ({n:,} bytes at offset {offset:,}) "
                                 f"is misaligned or runs past the end of the file")
            spans.append((offset, offset + n, name))
            tensors[name] = (gtype, shape, None)
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise ValueError(f"{path}: tensors {a!r} and {b!r} overlap")
        for name, shape, gtype, offset in infos:
            f.seek(start + offset)
            n = _nbytes(gtype, shape, path, name)
            data = np.frombuffer(f.read(n), np.uint8)
            if data.size != n:
                raise ValueError(f"{path} changed while being read")
            tensors[name] = (gtype, shape, data)
    return meta, tensors


def _expected_shapes(arch, c) -> dict:
    """``{gguf name: numpy shape}`` that a model of config ``c`` has, from the config alone."""
    if arch == "llama":
        V, C, I, L = c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers
        d = c.head_dim or C // c.num_attention_heads
        q, kv = c.num_attention_heads * d, (c.num_key_value_heads or c.num_attention_heads) * d
        out = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
        if not c.tie_word_embeddings:
            out["output.weight"] = (V, C)
        per = {"attn_norm.weight": (C,), "attn_q.weight": (q, C), "attn_k.weight": (kv, C),
               "attn_v.weight": (kv, C), "attn_output.weight": (C, q), "ffn_norm.weight": (C,),
               "ffn_gate.weight": (I, C), "ffn_up.weight": (I, C), "ffn_down.weight": (C, I)}
    else:
        V, C, L = c.vocab_size, c.n_embd, c.n_layer
        out = {"token_embd.weight": (V, C), "position_embd.weight": (c.block_size, C),
               "output_norm.weight": (C,), "output_norm.bias": (C,)}
        per = {"attn_norm.weight": (C,), "attn_norm.bias": (C,), "attn_qkv.weight": (3 * C, C),
               "attn_qkv.bias": (3 * C,), "attn_output.weight": (C, C),
               "attn_output.bias": (C,), "ffn_norm.weight": (C,), "ffn_norm.bias": (C,),
               "ffn_up.weight": (4 * C, C), "ffn_up.bias": (4 * C,),
               "ffn_down.weight": (C, 4 * C), "ffn_down.bias": (C,)}
    for i in range(L):
        out.update({f"blk.{i}.{k}": v for k, v in per.items()})
    return out


def _check_sizes(arch, c, tensors, path):
    """Before the model is built (its size follows the metadata): exactly the tensors a model
    of this config has, each of the shape the config implies, so that a lying header cannot
    make us allocate more than a small multiple of what the file holds."""
    layers = c.num_hidden_layers if arch == "llama" else c.n_layer
    fixed = 2 + (arch == "gpt2") * 2 + (arch == "llama" and not c.tie_word_embeddings)
    per = 9 if arch == "llama" else 12
    if fixed + per * layers != len(tensors):         # (checked before any name is generated)
        raise ValueError(f"{path}: a {arch} of {layers} layers has {fixed + per * layers} "
                         f"tensors; the file holds {len(tensors)}")
    want = _expected_shapes(arch, c)
    extra, missing = sorted(set(tensors) - set(want)), sorted(set(want) - set(tensors))
    if extra or missing:
        raise ValueError(f"{path}: tensors do not match a {arch} of this config: "
                         + (f"unexpected {extra[:3]}" if extra else f"missing {missing[:3]}"))
    for name, shape in want.items():
        if tensors[name][1] != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tensors[name][1]}; the "
                             f"metadata implies {shape}")


def _config(meta, tensors, path):
    try:
        return _make_config(meta, tensors, path)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from None


def _make_config(meta, tensors, path):
    from ..models import GPTConfig, LlamaConfig
    scaled = sorted(k for k in meta if ".rope.scaling" in k)
    if scaled:
        raise ValueError(f"{path}: rope scaling ({scaled[0]}) is not supported by this reader")

    def get(key, kinds=(int,), default=None):
        v = meta.get(key, default)
        if v is None or not isinstance(v, kinds) or isinstance(v, bool):
            raise ValueError(f"{path}: {key} must be a {kinds[0].__name__}, got {v!r:.60}")
        return v
    arch = meta.get("general.architecture")
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path} has no token_embd.weight")
    vocab = tensors["token_embd.weight"][1][0]
    if arch == "llama":
        heads = get("llama.attention.head_count")
        hidden = get("llama.embedding_length")
        head_dim = get("llama.rope.dimension_count", default=hidden // max(heads, 1))
        return arch, LlamaConfig(
            vocab_size=vocab, hidden_size=hidden,
            intermediate_size=get("llama.feed_forward_length"),
            num_hidden_layers=get("llama.block_count"), num_attention_heads=heads,
            num_key_value_heads=get("llama.attention.head_count_kv", default=heads),
            max_position_embeddings=get("llama.context_length"),
            rms_norm_eps=get("llama.attention.layer_norm_rms_epsilon", (float,)),
            rope_theta=get("llama.rope.freq_base", (float,), 10000.0),
            tie_word_embeddings="output.weight" not in tensors,
            head_dim=None if head_dim * heads == hidden else head_dim)
    if arch == "gpt2":
        n_embd = get("gpt2.embedding_length")
        if get("gpt2.feed_forward_length") != 4 * n_embd:
            raise ValueError(f"{path}: gpt2.feed_forward_length must be 4 x embedding_length "
                             f"for our GPT")
        eps = get("gpt2.attention.layer_norm_epsilon", (float,))
        if abs(eps - 1e-5) > 1e-12:
            raise ValueError(f"{path}: gpt2.attention.layer_norm_epsilon must be 1e-5, got {eps}")
        return arch, GPTConfig(vocab_size=vocab, block_size=get("gpt2.context_length"),
                               n_layer=get("gpt2.block_count"),
                               n_head=get("gpt2.attention.head_count"), n_embd=n_embd)
    raise ValueError(f"{path}: general.architecture {arch!r}; this reader takes llama and gpt2")


def load_gguf(path, dtype=np.float32):
    """``(model, tokenizer or None)`` from a GGUF file written by :func:`export_gguf` (or any
    GGUF of the ``llama``/``gpt2`` architectures in F32, F16, Q8_0 and Q4_0, without rope
    scaling). Quantized tensors become :class:`QuantizedLinear` layers holding the same
    blocks."""
    from ..data.tokenizers import Tokenizer
    from ..models import GPT, Llama
    dtype = resolve_dtype(dtype)
    meta, tensors = read_gguf(path)
    arch, config = _config(meta, tensors, path)
    _check_sizes(arch, config, tensors, path)
    model = (Llama if arch == "llama" else GPT)(config, dtype=dtype, rng=0)
    names = _llama_names(config) if arch == "llama" else _gpt_names(config)
    theirs = {v: k for k, v in names.items()}
    state = model.state_dict()
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    plan, floats, blocks = {}, {}, {}
    for gname, (gtype, shape, data) in tensors.items():
        ours = theirs[gname]
        want = state[ours].shape
        if shape != want:
            raise ValueError(f"{path}: tensor {gname!r} has shape {shape}, expected {want}")
        heads = _heads_of(model, ours) if arch == "llama" else None
        if gtype in _BLOCK_BYTES:
            layer = ours.rsplit(".", 1)[0]
            if not ours.endswith(".weight") or layer not in linears:
                raise ValueError(f"{path}: tensor {gname!r} is quantized; only Linear weights "
                                 f"may be")
            rows = data.reshape(shape[0], -1)
            if heads:
                rows = _unpermute(rows, heads)
            nb = shape[1] // BLOCK
            rows = rows.reshape(shape[0], nb, _BLOCK_BYTES[gtype])
            d = np.ascontiguousarray(rows[..., :2]).view("<f2").reshape(shape[0], nb)
            q = np.ascontiguousarray(rows[..., 2:]).reshape(shape[0], -1)
            if not np.isfinite(d).all():
                raise ValueError(f"{path}: tensor {gname!r} has non-finite block scales")
            plan[layer] = _FMT_OF_TYPE[gtype]
            blocks[layer] = (q.view(np.int8) if gtype == Q8_0 else q, d.astype(np.float16))
        else:
            w = data.view("<f4" if gtype == F32 else "<f2").reshape(shape)
            if heads:
                w = _unpermute(w, heads)
            if not np.isfinite(w).all():
                raise ValueError(f"{path}: tensor {gname!r} is not finite")
            floats[ours] = w
    # every name the architecture needs was checked above; not here: the quantized weights
    # (next) and a tied lm_head (the embedding itself)
    model.load_state_dict(floats, strict=False)
    if plan:
        quantize(model, "q8_0", layers=plan)
        model.load_state_dict({f"{layer}.{k}": v for layer, (q, d) in blocks.items()
                               for k, v in (("qweight", q), ("scales", d))}, strict=False)
    tok = meta.get("scratchlm.tokenizer")
    if tok is not None and not isinstance(tok, str):
        raise ValueError(f"{path}: scratchlm.tokenizer must be a string (JSON), got "
                         f"{type(tok).__name__}")
    if tok is not None:
        from .._files import loads_json
        tok = Tokenizer.from_dict(loads_json(tok, f"{path}: scratchlm.tokenizer"))
    return model, tok
