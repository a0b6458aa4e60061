r"""Llama: the decoder of Llama 2/3, Mistral, Qwen2/3, SmolLM and TinyLlama (Touvron et al., 2023),
with the parameter names of Hugging Face's ``LlamaForCausalLM``.

    idx (B, T) -> embed_tokens(idx)
               -> num_hidden_layers x LlamaDecoderLayer:
                      h = x + o_proj(attn(input_layernorm(x)))
                      x = h + down_proj(silu(gate_proj(n)) * up_proj(n)),  n = post_attention_layernorm(h)
               -> norm -> lm_head                                  -> logits (B, T, vocab_size)

GPT-2 with four changes:

* **RMSNorm** instead of LayerNorm: :math:`y = x / \sqrt{\overline{x^2} + \epsilon}\,\gamma`, no
  mean, no bias (``rms_norm_eps``);
* **rotary position embeddings** on q and k instead of a learned position table: head vector
  pairs ``(x_i, x_{i+d/2})`` turned by the angle ``t * rope_theta^(-2i/d)`` at position ``t``
  (``functional/rope.py``; ``rope_scaling`` of type ``"llama3"``);
* **SwiGLU** MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, ``intermediate_size`` wide;
* **grouped-query attention**: ``num_key_value_heads`` key/value heads, each shared by
  ``num_attention_heads / num_key_value_heads`` query heads (1: multi-query); the backward sums
  the gradients of the query heads that share one.

And the variants of its descendants: ``attention_bias`` (biases on q, k, v: Qwen2), ``qk_norm``
(an RMSNorm over each head's q and k before the rotation: Qwen3), ``head_dim`` other than
``hidden_size / num_attention_heads`` (Qwen3), tied or untied ``lm_head``.

No dropout and no biases elsewhere. Initialisation as ``transformers``: every Linear and the
embedding :math:`\mathcal N(0, 0.02)`, norms 1, biases 0. :meth:`Llama.from_pretrained` reads a
local Hugging Face checkpoint (llama, mistral, qwen2, qwen3) and :meth:`Llama.save_pretrained`
writes one that ``transformers`` loads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import index_array, make_rng, positive_int, resolve_dtype, trusted
from .lm import CachedLanguageModel, SequenceClassifier, any_trainable


@dataclass
class LlamaConfig:
    """The fields of a Hugging Face Llama ``config.json``, with its names and defaults
    (``num_key_value_heads=None``: as many as the query heads; ``head_dim=None``:
    ``hidden_size // num_attention_heads``)."""
    vocab_size: int = 256
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    qk_norm: bool = False
    head_dim: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            positive_int(getattr(self, name), name)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        positive_int(self.num_key_value_heads, "num_key_value_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                                 f"num_attention_heads ({self.num_attention_heads}), or give head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        positive_int(self.head_dim, "head_dim")
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
            setattr(self, name, float(v))
        self.rope_scaling = F.check_rope_scaling(self.rope_scaling)
        for name in ("attention_bias", "tie_word_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def block_size(self) -> int:
        """The longest context (``max_position_embeddings``): what the training loop and
        evaluation call a block."""
        return self.max_position_embeddings


class AttentionParts(NamedTuple):
    rope_q: F.RopeCache                       # q's rotation (B, H, T, d)
    rope_k: F.RopeCache                       # k's rotation (B, Hkv, T, d)
    attn: F.GroupedAttentionCache             # the attention over (B, H, T, d)
    x_shape: tuple                            # (B, T, C) the input


class LlamaAttention(nn.Module):
    """Grouped-query causal self-attention with rotary embeddings (``self_attn``)."""

    def __init__(self, cfg: LlamaConfig, dtype, rng):
        super().__init__()
        C, H, Hkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = H, Hkv, d
        b = cfg.attention_bias
        self.q_proj = nn.Linear(C, H * d, bias=b, dtype=dtype, rng=rng)
        self.k_proj = nn.Linear(C, Hkv * d, bias=b, dtype=dtype, rng=rng)
        self.v_proj = nn.Linear(C, Hkv * d, bias=b, dtype=dtype, rng=rng)
        self.o_proj = nn.Linear(H * d, C, bias=False, dtype=dtype, rng=rng)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
            self.k_norm = nn.RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
        self.qk_norm = cfg.qk_norm

    def _heads(self, x, proj, norm, n, linear):
        """x (B, T, C) -> (B, n, T, d): project, split the heads, QK-norm them."""
        B, T, _ = x.shape
        h = (proj(x) if linear else _linear(proj, x)).reshape(B, T, n, self.head_dim)  # (B, T, n, d)
        if self.qk_norm and norm is not None:
            h = norm(h) if linear else F.rms_norm_forward(h, self.head_dim, norm.weight.data,
                                                          norm.eps)[0]
        return h.transpose(0, 2, 1, 3)                                        # (B, n, T, d)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self._heads(x, self.q_proj, getattr(self, "q_norm", None), self.heads, True)
        k = self._heads(x, self.k_proj, getattr(self, "k_norm", None), self.kv_heads, True)
        v = self._heads(x, self.v_proj, None, self.kv_heads, True)            # (B, Hkv, T, d)
        q, rq = F.rope_forward(q, cos, sin)                                   # (B, H, T, d)
        k, rk = F.rope_forward(k, cos, sin)                                   # (B, Hkv, T, d)
        y, attn = F.grouped_query_attention_forward(q, k, v, is_causal=True)  # (B, H, T, d)
        self._cache = AttentionParts(rq, rk, attn, x.shape)
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(B, T, -1))         # (B, T, C)

    def step(self, x, cos, sin, past):
        """Inference on new positions ``x`` (B, t, C) (their rotations ``cos``/``sin``) after
        ``past = (k, v)`` ((B, Hkv, Tp, d) each, rotated, or None): returns y and the extended
        (k, v). Keeps no cache for a backward."""
        B, t, C = x.shape
        q = self._heads(x, self.q_proj, getattr(self, "q_norm", None), self.heads, False)
        k = self._heads(x, self.k_proj, getattr(self, "k_norm", None), self.kv_heads, False)
        v = self._heads(x, self.v_proj, None, self.kv_heads, False)
        q, k = F.rope_forward(q, cos, sin)[0], F.rope_forward(k, cos, sin)[0]
        if past is not None:
            k = np.concatenate([past[0], k], axis=2)                          # (B, Hkv, Tp + t, d)
            v = np.concatenate([past[1], v], axis=2)
        y, _ = F.grouped_query_attention_forward(q, k, v, is_causal=True)    # the last t queries
        return _linear(self.o_proj, y.transpose(0, 2, 1, 3).reshape(B, t, -1)), (k, v)

    def backward(self, dout):
        c = self._saved()
        B, T, C = c.x_shape
        dy = self.o_proj.backward(dout)                                       # (B, T, H d)
        dy = dy.reshape(B, T, self.heads, -1).transpose(0, 2, 1, 3)          # (B, H, T, d)
        dq, dk, dv = F.grouped_query_attention_backward(dy, c.attn)          # (B, H|Hkv, T, d)
        dq = F.rope_backward(dq, c.rope_q)                # from q = rope(q0): the inverse rotation
        dk = F.rope_backward(dk, c.rope_k)
        dq, dk, dv = (g.transpose(0, 2, 1, 3) for g in (dq, dk, dv))          # (B, T, n, d)
        if self.qk_norm:
            dq, dk = self.q_norm.backward(dq), self.k_norm.backward(dk)
        dx = self.q_proj.backward(dq.reshape(B, T, -1))                       # (B, T, C) from each
        dx += self.k_proj.backward(dk.reshape(B, T, -1))
        dx += self.v_proj.backward(dv.reshape(B, T, -1))
        return dx


def _linear(layer, x):
    """``layer``'s forward without keeping a cache (inference; a LoRA layer adds its path)."""
    return layer.inference(x)


class LlamaMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: LlamaConfig, dtype, rng):
        super().__init__()
        C, I = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False, dtype=dtype, rng=rng)
        self.up_proj = nn.Linear(C, I, bias=False, dtype=dtype, rng=rng)
        self.down_proj = nn.Linear(I, C, bias=False, dtype=dtype, rng=rng)

    def forward(self, x):
        h, self._cache = F.swiglu_forward(self.gate_proj(x), self.up_proj(x))     # (B, T, I)
        return self.down_proj(h)                                                # (B, T, C)

    def step(self, x):
        h, _ = F.swiglu_forward(_linear(self.gate_proj, x), _linear(self.up_proj, x))
        return _linear(self.down_proj, h)

    def backward(self, dout):
        dgate, dup = F.swiglu_backward(self.down_proj.backward(dout), self._saved())
        return self.gate_proj.backward(dgate) + self.up_proj.backward(dup)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype, rng):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = LlamaAttention(cfg, dtype, rng)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype, rng)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))

    def step(self, x, cos, sin, past):
        """Inference with a KV cache (see :meth:`LlamaAttention.step`)."""
        n = self.input_layernorm
        a, past = self.self_attn.step(F.rms_norm_forward(x, n.normalized_shape, n.weight.data,
                                                         n.eps)[0], cos, sin, past)
        h = x + a
        n = self.post_attention_layernorm
        return h + self.mlp.step(F.rms_norm_forward(h, n.normalized_shape, n.weight.data,
                                                    n.eps)[0]), past

    def backward(self, dout):
        # from x' = h + mlp(post_ln(h)):  dh = dx' + post_ln'(mlp'(dx'))
        dh = dout + self.post_attention_layernorm.backward(self.mlp.backward(dout))
        # from h = x + attn(input_ln(x)):  dx = dh + input_ln'(attn'(dh))
        return dh + self.input_layernorm.backward(self.self_attn.backward(dh))


class _LlamaBody:
    """What the causal LM and the sequence classifier share: ``self.model`` (``embed_tokens``,
    ``layers``, ``norm``; Hugging Face's ``LlamaModel``), the rotary tables, and the forward and
    backward of the body, from token ids to the final normalised hidden states."""

    def _build_body(self, config, dtype, rng):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = c = config
        self.dtype = resolve_dtype(dtype)
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(c.vocab_size, c.hidden_size, dtype=dtype, rng=rng),
            layers=nn.ModuleList([LlamaDecoderLayer(c, dtype, rng)
                                  for _ in range(c.num_hidden_layers)]),
            norm=nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype),
        ))
        self._inv_freq = F.rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)   # (d/2,)
        self._tables = {}

    def _init_weights(self, rng):
        """As ``transformers``: every Linear and the embedding N(0, 0.02), biases 0."""
        for name, p in self.named_parameters():
            if p.ndim == 2:                                             # Linear and Embedding
                p.data[...] = rng.normal(0.0, 0.02, p.shape)
            elif name.endswith(".bias"):
                p.data[...] = 0.0

    def _rope(self, start, T):
        """cos, sin ``(T, d/2)`` for positions ``start..start+T-1`` (the last few kept)."""
        dtype = self.model.embed_tokens.weight.data.dtype            # (the model's, after .to())
        key = (start, T, dtype)
        if key not in self._tables:
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = F.rope_cos_sin(np.arange(start, start + T), self._inv_freq, dtype)
        return self._tables[key]

    def _body_forward(self, idx):
        """idx (B, T) checked ids -> the final normalised hidden states (B, T, C)."""
        c = self.config
        T = idx.shape[1]
        if T > c.max_position_embeddings:
            raise ValueError(f"idx has sequence length {T}, more than max_position_embeddings "
                             f"{c.max_position_embeddings}")
        cos, sin = self._rope(0, T)                                           # (T, d/2) each
        x = self.model.embed_tokens(idx)                                      # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)                                            # (B, T, C)
        return self.model.norm(x)                                             # (B, T, C)

    def _body_backward(self, dh):
        """From the hidden states' gradient (B, T, C) down to the embedding, stopping where
        nothing below is trained."""
        dx = self.model.norm.backward(dh)                                     # (B, T, C)
        layers = list(self.model.layers)
        for i in reversed(range(len(layers))):
            if not any_trainable(self.model.embed_tokens, *layers[:i + 1]):
                return                       # everything below is frozen: no work left to do
            dx = layers[i].backward(dx)
        self.model.embed_tokens.backward(dx)               # (tied: into the head's weight too)


class Llama(_LlamaBody, CachedLanguageModel):
    """``Llama(LlamaConfig(...), dtype=np.float32, rng=None)``, with GPT's calling convention:

    * ``logits = model(idx)`` -- ``(B, T, vocab_size)``, ``T <= max_position_embeddings``;
    * ``logits, loss = model(idx, targets)`` -- mean cross-entropy, targets ``-1`` ignored;
    * ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets;
    * ``model.generate(idx, max_new_tokens, temperature, top_k, top_p, greedy, seed)`` with a
      KV cache (the same tokens as recomputation).

    ``state_dict()`` keys and shapes are ``LlamaForCausalLM``'s: ``model.embed_tokens.weight``,
    ``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.{i}.mlp.{gate,up,
    down}_proj.weight``, ``model.layers.{i}.{input,post_attention}_layernorm.weight``,
    ``model.norm.weight``, ``lm_head.weight``.
    """

    def __init__(self, config: LlamaConfig, dtype=np.float32, rng=None):
        super().__init__()
        rng = make_rng(rng)
        self._build_body(config, dtype, rng)
        c = self.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False, dtype=dtype, rng=rng)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._init_weights(rng)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

    @property
    def context_size(self) -> int:
        return self.config.max_position_embeddings

    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, idx, targets=None):
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        logits = self.lm_head(self._body_forward(idx))                        # (B, T, V)
        return self._logits_and_loss(logits, idx, targets)

    @trusted
    def _backward(self, dlogits):
        self._body_backward(self.lm_head.backward(dlogits))                  # (B, T, C)

    @trusted
    def _step_logits(self, idx_new, start, past):
        """Logits of the last new position; positions start..start+t-1; extends the KV cache
        (``past``: one (k, v) per layer, or None)."""
        t = idx_new.shape[1]
        cos, sin = self._rope(start, t)
        x = self.model.embed_tokens.weight.data[idx_new]                      # (B, t, C)
        layers = self.model.layers
        new_past = []
        for layer, p in zip(layers, past or [None] * len(layers)):
            x, kv = layer.step(x, cos, sin, p)
            new_past.append(kv)
        n = self.model.norm
        x = F.rms_norm_forward(x[:, -1:], n.normalized_shape, n.weight.data, n.eps)[0]
        return _linear(self.lm_head, x)[:, 0], new_past                       # (B, V)

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Build from a :class:`LlamaConfig` or its :meth:`config_dict` (e.g. a checkpoint's)."""
        return cls(LlamaConfig(**config) if isinstance(config, dict) else config, dtype=dtype,
                   rng=rng)

    def config_dict(self) -> dict:
        return asdict(self.config)

    # ------------------------------------------------------------------------------------------
    # Hugging Face checkpoints (local files only): see hf_llama.py for the reading and writing
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Load a local Hugging Face directory of a ``llama``, ``mistral`` (no sliding window),
        ``qwen2`` or ``qwen3`` model: ``config.json`` and ``model.safetensors``, or shards
        ``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json``; bf16,
        fp16 or fp32 weights, converted to ``dtype``. Nothing is downloaded; every file is
        checked before it is trusted (:func:`scratchlm.models.hf_llama.read_pretrained`)."""
        from .hf_llama import read_pretrained
        config, state = read_pretrained(path, dtype)
        model = cls(config, dtype=dtype, rng=0)
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float32 or float64 as the model) to
        the folder ``path`` (created if needed), in the layout ``transformers`` loads:
        ``model_type`` llama, or qwen2 with ``attention_bias``, or qwen3 with ``qk_norm``."""
        from .hf_llama import write_pretrained
        write_pretrained(self, path)


class LlamaForSequenceClassification(_LlamaBody, SequenceClassifier, nn.Module):
    """``LlamaForSequenceClassification(config, num_labels=2, pad_token_id=0)``: a Llama body
    (``model.*``, as :class:`Llama`) and ``score``, with ``transformers``' class's names and
    pooling (the last token that is not padding); see
    :class:`~scratchlm.models.lm.SequenceClassifier` for the calling convention.
    :meth:`from_causal_lm` starts one from a trained :class:`Llama`."""

    BODY_PREFIX = "model."
    CONFIG = LlamaConfig
    HIDDEN = "hidden_size"
