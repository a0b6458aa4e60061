"""Hugging Face Llama-family checkpoints on disk: reading them into a :class:`~scratchlm.models.
llama.Llama` and writing one back (local files only: nothing is downloaded).

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or shards
``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json`` (its
``weight_map``: tensor name -> shard file). Supported ``model_type``:

========== ================================================================================
llama      Llama 2/3/3.1 (``rope_scaling`` llama3), TinyLlama, SmolLM
mistral    Mistral without a sliding window (``sliding_window`` null)
qwen2      Qwen2/2.5: biases on q, k, v (``attention_bias`` here)
qwen3      Qwen3: RMSNorm on each head's q and k (``qk_norm`` here), explicit ``head_dim``
========== ================================================================================

Every file is hostile until checked: ``config.json`` and the index at most 1 MiB of JSON;
each setting this model cannot honour (another activation, biases on the MLP or on
``o_proj``, a sliding window, a rope type other than llama3) is refused by name, not ignored;
shard names must be plain file names in the directory (no path), and every shard must exist;
the parameters the config declares must fit in the weight files (2 bytes each at least) before
anything of their size is allocated; every tensor must be one this architecture has, of the
shape the config implies, floating point, finite in the target dtype, and none may be missing.
Both config formats are read: ``rope_theta`` + ``rope_scaling`` (transformers 4) and
``rope_parameters`` (transformers 5). bf16 and fp16 weights are converted exactly to float32
(then to the model's dtype).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._files import loads_json, read_bytes, regular_file

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_INDEX = "model.safetensors.index.json"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _excerpt(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _config(hf: dict, cfg_path: str):
    """The :class:`LlamaConfig` a Hugging Face ``config.json`` (a dict) describes."""
    from .llama import LlamaConfig

    def field(key, default, ok, want):
        value = hf.get(key, default)
        if not ok(value):
            raise ValueError(f"{cfg_path}: {key} must be {want}, got {_excerpt(value)}")
        return value

    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"{cfg_path}: model_type {_excerpt(kind)} is not supported; this Llama "
                         f"reads {', '.join(SUPPORTED)}")
    field("hidden_act", "silu", lambda v: v == "silu", "'silu' (the SwiGLU MLP)")
    field("mlp_bias", False, lambda v: v is False, "false (no biases in the MLP)")
    if kind == "mistral":
        field("sliding_window", None, lambda v: v is None,
              "null (sliding-window attention is not implemented)")
    if kind in ("qwen2", "qwen3"):
        field("use_sliding_window", False, lambda v: v is False,
              "false (sliding-window attention is not implemented)")
    bias = kind == "qwen2"                                    # Qwen2: q, k, v always have biases
    if kind != "qwen2":
        field("attention_bias", False, lambda v: v is False,
              f"false ({kind} puts a bias on o_proj too, which this model does not have)")
    sizes = {}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in hf:
            raise ValueError(f"{cfg_path} lacks the field {key!r}")
        sizes[key] = field(key, None, lambda v: _is_int(v) and v >= 1, "an int >= 1")
    for key in ("num_key_value_heads", "head_dim"):
        sizes[key] = field(key, None, lambda v: v is None or (_is_int(v) and v >= 1),
                           "null or an int >= 1")
    sizes["max_position_embeddings"] = field("max_position_embeddings", 2048,
                                             lambda v: _is_int(v) and v >= 1, "an int >= 1")
    eps = field("rms_norm_eps", 1e-6, lambda v: _is_num(v) and v > 0, "a positive number")
    params = hf.get("rope_parameters")
    if params is not None:                                    # transformers 5
        if not isinstance(params, dict):
            raise ValueError(f"{cfg_path}: rope_parameters must be an object, got "
                             f"{_excerpt(params)}")
        theta = params.get("rope_theta", 10000.0)
        scaling = params if params.get("rope_type", "default") != "default" else None
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = hf.get("rope_scaling")
    if not (_is_num(theta) and theta > 0):
        raise ValueError(f"{cfg_path}: rope_theta must be a positive number, got {_excerpt(theta)}")
    tied = field("tie_word_embeddings", False, lambda v: isinstance(v, bool), "true or false")
    try:
        return LlamaConfig(**sizes, rms_norm_eps=eps, rope_theta=theta, rope_scaling=scaling,
                           attention_bias=bias, tie_word_embeddings=tied, qk_norm=kind == "qwen3")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: {exc}") from None


def parameter_shapes(config) -> dict:
    """``{name: shape}`` of every parameter of a Llama with ``config``, in Hugging Face's
    names (``lm_head.weight`` included, tied or not)."""
    c = config
    C, I, H, Hkv, d = (c.hidden_size, c.intermediate_size, c.num_attention_heads,
                       c.num_key_value_heads, c.head_dim)
    shapes = {"model.embed_tokens.weight": (c.vocab_size, C), "model.norm.weight": (C,),
              "lm_head.weight": (c.vocab_size, C)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        layer = {"input_layernorm.weight": (C,), "post_attention_layernorm.weight": (C,),
                 "self_attn.q_proj.weight": (H * d, C), "self_attn.k_proj.weight": (Hkv * d, C),
                 "self_attn.v_proj.weight": (Hkv * d, C), "self_attn.o_proj.weight": (C, H * d),
                 "mlp.gate_proj.weight": (I, C), "mlp.up_proj.weight": (I, C),
                 "mlp.down_proj.weight": (C, I)}
        if c.attention_bias:
            layer.update({"self_attn.q_proj.bias": (H * d,), "self_attn.k_proj.bias": (Hkv * d,),
                          "self_attn.v_proj.bias": (Hkv * d,)})
        if c.qk_norm:
            layer.update({"self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,)})
        shapes.update({p + k: v for k, v in layer.items()})
    return shapes


def _weight_files(path: str) -> list:
    """The safetensors files of the checkpoint in ``path``: the single file, or every shard the
    index names (each a plain file name in ``path``, each existing)."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, _INDEX)
    if os.path.exists(single):
        return [single]
    if not os.path.exists(index):
        raise FileNotFoundError(f"from_pretrained needs model.safetensors or {_INDEX} in {path}: "
                                f"neither exists")
    doc = loads_json(read_bytes(index, _INDEX, limit=1 << 24), index)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: weight_map must be a non-empty object of tensor name -> file")
    files = []
    for name, file in weight_map.items():
        if not (isinstance(file, str) and file and os.path.basename(file) == file
                and file not in (".", "..") and file.endswith(".safetensors")):
            raise ValueError(f"{index}: tensor {_excerpt(name)} maps to {_excerpt(file)}; shards "
                             f"must be plain .safetensors file names in the checkpoint folder")
        if file not in files:
            files.append(file)
    for file in files:
        if not os.path.exists(os.path.join(path, file)):
            raise FileNotFoundError(f"{index} lists the shard {file}, which is missing from {path}")
    return [os.path.join(path, f) for f in files]


def read_pretrained(path, dtype):
    """``(LlamaConfig, state_dict)`` of the Hugging Face checkpoint folder ``path`` (see the
    module docstring for what is checked); the state holds every parameter in ``dtype``."""
    from ..io import load_safetensors
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"from_pretrained needs config.json in {path}: {cfg_path} does "
                                f"not exist")
    config = _config(loads_json(read_bytes(cfg_path, "config.json", limit=1 << 20), cfg_path),
                     cfg_path)
    files = _weight_files(path)
    shapes = parameter_shapes(config)
    needed = {k: v for k, v in shapes.items()
              if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    n_params = sum(int(np.prod(s)) for s in needed.values())
    total = sum(regular_file(f, "safetensors weights file")[1] for f in files)
    if 2 * n_params > total:
        raise ValueError(f"{cfg_path} declares {n_params:,} parameters, at least "
                         f"{2 * n_params:,} bytes; the weight files hold {total:,}")
    limit = np.finfo(dtype).max
    state, where = {}, {}
    for file in files:
        tensors, _ = load_safetensors(file)
        for name, value in tensors.items():
            if name.endswith("rotary_emb.inv_freq"):
                continue                                  # a buffer older checkpoints carry
            if name not in shapes:
                raise ValueError(f"{file}: tensor {_excerpt(name)} is not a parameter of this "
                                 f"{type(config).__name__} (model_type and sizes in {cfg_path})")
            if name in where:
                raise ValueError(f"{file}: tensor {name!r} is also in {where[name]}")
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"{file}: tensor {name!r} has shape {tuple(value.shape)}, "
                                 f"expected {shapes[name]} for the sizes in {cfg_path}")
            if value.dtype.kind != "f":
                raise ValueError(f"{file}: tensor {name!r} has dtype {value.dtype}; weights must "
                                 f"be floating point")
            if value.size and not (np.isfinite(value).all() and (
                    value.dtype.itemsize <= np.dtype(dtype).itemsize
                    or np.abs(value).max() <= limit)):
                raise ValueError(f"{file}: tensor {name!r} holds NaN, inf or values beyond "
                                 f"{np.dtype(dtype).name}'s range")
            where[name] = file
            state[name] = value.astype(dtype, copy=False)
        del tensors
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"the weights in {path} lack {len(missing)} tensor(s): "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if config.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        if head is not None and not np.array_equal(head, state["model.embed_tokens.weight"]):
            raise ValueError(f"{path}: lm_head.weight differs from model.embed_tokens.weight but "
                             f"{cfg_path} says tie_word_embeddings")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return config, state


def hf_config(config) -> dict:
    """The ``config.json`` dict of a :class:`LlamaConfig`: model_type llama, qwen2 (with
    ``attention_bias``) or qwen3 (with ``qk_norm``)."""
    c = config
    if c.qk_norm and c.attention_bias:
        raise ValueError("qk_norm with attention_bias has no Hugging Face model type (qwen3 "
                         "would put a bias on o_proj too)")
    kind = "qwen3" if c.qk_norm else "qwen2" if c.attention_bias else "llama"
    doc = {"architectures": [_ARCH[kind]], "model_type": kind, "hidden_act": "silu",
           "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
           "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
           "num_attention_heads": c.num_attention_heads,
           "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
           "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
           "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling,
           "tie_word_embeddings": c.tie_word_embeddings, "initializer_range": 0.02,
           "use_cache": True}
    if kind == "llama":
        doc.update(attention_bias=False, mlp_bias=False)
    elif kind == "qwen3":
        doc.update(attention_bias=False)
    if kind != "llama":
        doc.update(use_sliding_window=False, sliding_window=None)
    return doc


def write_pretrained(model, path) -> None:
    """``config.json`` + ``model.safetensors`` of ``model`` in the folder ``path`` (each file
    written atomically); the tied head is left out, as ``transformers`` saves it."""
    from ..compress.prune import structure_of
    from ..io import atomic_write, save_safetensors
    c = model.config
    for name, counts in structure_of(model).items():     # what transformers' config can hold
        if counts != {"heads": c.num_key_value_heads or c.num_attention_heads,
                      "neurons": c.intermediate_size}:
            raise ValueError(f"{name} has {counts}: a structurally pruned model has per-layer "
                             f"sizes that a Hugging Face config cannot describe")
    odd = next((n for n, m in model.named_modules() if hasattr(m, "qweight") or
                hasattr(m, "lora_A")), None)
    if odd is not None:
        raise ValueError(f"{odd} is quantized or a LoRA layer: save_pretrained writes float "
                         f"weights (merge or reload the float model first)")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    doc = hf_config(model.config)
    doc["torch_dtype"] = "float64" if model.dtype == np.float64 else "float32"
    tensors = {k: v for k, v in model.state_dict().items()      # (a pruned layer's mask: its
               if not (k == "lm_head.weight" and model.config.tie_word_embeddings)  # weights
               and not k.endswith(".weight_mask")}                          # hold the zeros)
    save_safetensors(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
    text = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(path, "config.json"), lambda f: f.write(text))
