r"""GPT: the GPT-2 architecture (Radford et al., 2019), with nanoGPT's parameter names.

    idx (B, T) -> wte(idx) + wpe(0..T-1) -> dropout
               -> n_layer x Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
               -> ln_f -> lm_head (tied to wte)          -> logits (B, T, vocab_size)

Block parts (pre-LayerNorm, eps 1e-5):

* ``attn`` -- causal self-attention: ``c_attn`` projects to q, k, v at once ``(3C, C)``, heads of
  size ``C / n_head``, :math:`\mathrm{softmax}(qk^\top/\sqrt{d})\,v`, ``c_proj`` ``(C, C)``;
* ``mlp`` -- ``c_fc`` ``(4C, C)`` -> GELU (tanh approximation) -> ``c_proj`` ``(C, 4C)``.

Initialisation as GPT-2: every weight :math:`\mathcal N(0, 0.02)`, biases 0, and the two residual
projections (``attn.c_proj``, ``mlp.c_proj``) :math:`\mathcal N(0, 0.02/\sqrt{2 n_{layer}})`.

Every layer is a module from :mod:`scratchlm.nn` with its backward beside its forward, so
``GPT.backward`` below reads as the forward run in reverse. Matmuls go through BLAS; LayerNorm,
GELU, the attention softmax and the cross-entropy are fused Numba kernels.

Activation recomputation (gradient checkpointing; Chen et al., 2016): with ``model.recompute =
True``, a training forward keeps of each block only its input ``x`` (B, T, C) and the state of
its random generators; the block's backward runs its forward again from them (the same dropout
masks), then the ordinary backward. Gradients are bit-identical to the stored path; the price is
about one extra forward per step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import (boolean, index_array, make_rng, positive_int, probability, resolve_dtype,
                       trusted)
from ..nn.module import NO_CACHE
from .lm import CachedLanguageModel, SequenceClassifier, any_trainable


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            positive_int(getattr(self, name), name)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        probability(self.dropout, "dropout", allow_one=False)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be True or False, got {self.bias!r}")


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention with a fused qkv projection (nanoGPT's layout)."""

    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.head_size = cfg.n_head, C // cfg.n_head   # (fewer heads when pruned)
        self.c_attn = nn.Linear(C, 3 * C, bias=cfg.bias, dtype=dtype, rng=rng)
        self.c_proj = nn.Linear(C, C, bias=cfg.bias, dtype=dtype, rng=rng)
        self.dropout = cfg.dropout
        self.rng = rng
        self.resid_dropout = nn.Dropout(cfg.dropout, rng=rng)

    def forward(self, x):
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size
        qkv = self.c_attn(x)                                                  # (B, T, 3C)
        q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)              # 3 x (B, nh, T, hs)
                   for t in np.split(qkv, 3, axis=-1))
        y, self._cache = F.attention_forward(q, k, v, is_causal=True, dropout_p=self.dropout,
                                             training=self.training, rng=self.rng)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)                    # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def step(self, x, past):
        """Inference on new positions ``x`` (B, t, C) with ``past = (k, v)`` of the earlier ones
        ((B, nh, Tp, hs) each, or None): returns y and the extended (k, v). No cache for backward."""
        B, t, C = x.shape
        nh, hs = self.n_head, self.head_size
        qkv = self.c_attn.inference(x)                                        # (B, t, 3C)
        q, k, v = (a.reshape(B, t, nh, hs).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        if past is not None:
            k = np.concatenate([past[0], k], axis=2)                          # (B, nh, Tp + t, hs)
            v = np.concatenate([past[1], v], axis=2)
        y, _ = F.attention_forward(q, k, v, is_causal=True)                   # q: the last t positions
        y = self.c_proj.inference(y.transpose(0, 2, 1, 3).reshape(B, t, nh * hs))
        return y, (k, v)

    def backward(self, dout):
        dy = self.c_proj.backward(self.resid_dropout.backward(dout))          # (B, T, C)
        B, T, _ = dy.shape
        nh, hs = self.n_head, self.head_size
        dy = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)                   # (B, nh, T, hs)
        dqkv = np.empty((B, T, 3 * nh * hs), dy.dtype)                        # (B, T, 3C)
        heads = tuple(g.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)          # 3 x (B, nh, T, hs)
                      for g in np.split(dqkv, 3, axis=-1))                    # views of dqkv
        F.attention_backward(dy, self._saved(), out=heads)        # dq, dk, dv written into dqkv
        return self.c_attn.backward(dqkv)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        C = cfg.n_embd
        self.c_fc = nn.Linear(C, 4 * C, bias=cfg.bias, dtype=dtype, rng=rng)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * C, C, bias=cfg.bias, dtype=dtype, rng=rng)
        self.dropout = nn.Dropout(cfg.dropout, rng=rng)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def backward(self, dout):
        return self.c_fc.backward(self.gelu.backward(self.c_proj.backward(self.dropout.backward(dout))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.attn = CausalSelfAttention(cfg, dtype, rng)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.mlp = MLP(cfg, dtype, rng)

    def forward(self, x, recompute=False):
        """``recompute``: keep only ``x`` and the random state; every cache inside is dropped
        and :meth:`backward` rebuilds them by running this forward again."""
        rng_states = _rng_states(self) if recompute else None    # before the dropout draws
        y = self._forward(x)
        if recompute:
            _drop_caches(self)
            self._cache = (x, rng_states)                        # x (B, T, C): all a block keeps
        else:
            self._cache = None                                   # the sub-modules hold theirs
        return y

    def _forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def step(self, x, past):
        """Inference with a KV cache (see ``CausalSelfAttention.step``)."""
        a, past = self.attn.step(self.ln_1(x), past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), past

    def backward(self, dout):
        saved = self._saved()
        if saved is not None:                 # recompute: the same forward, the same masks
            x, rng_states = saved
            with _replaying(self, rng_states):
                self._forward(x)
        # from x2 = x1 + mlp(ln_2(x1)):  dx1 = dx2 + ln_2'(mlp'(dx2))
        d = dout + self.ln_2.backward(self.mlp.backward(dout))
        # from x1 = x + attn(ln_1(x)):   dx = dx1 + ln_1'(attn'(dx1))
        dx = d + self.ln_1.backward(self.attn.backward(d))
        if saved is not None:
            _drop_caches(self)                # one block's activations alive at a time
        return dx


def _rng_states(module):
    """``[(generator, state)]`` for every distinct generator ``module`` draws from (the blocks
    share the model's): what a replay of its forward must start from."""
    gens = {id(g): g for _, g in module.generators()}
    return [(g, g.bit_generator.state) for g in gens.values()]


def _drop_caches(module):
    """Forget the caches of every sub-module (not ``module``'s own)."""
    for m in module.modules():
        if m is not module:
            m._cache = NO_CACHE


@contextmanager
def _replaying(module, rng_states):
    """Run ``module``'s forward again exactly as it ran: training mode (recompute only happens
    in training) and the generators at the states they had then. Afterwards the generators are
    back where they were, so a backward draws nothing as far as the rest of the run can tell."""
    now = [(g, g.bit_generator.state) for g, _ in rng_states]
    was_training = module.training
    module.train(True)
    for g, state in rng_states:
        g.bit_generator.state = state
    try:
        yield
    finally:
        for g, state in now:
            g.bit_generator.state = state
        module.train(was_training)


class _GPTBody:
    """What the language model and the sequence classifier share: ``self.transformer``
    (``wte``, ``wpe``, ``drop``, ``h``, ``ln_f``), recomputation, GPT-2's initialisation, and the
    forward and backward from token ids to the final LayerNorm's output."""

    def _build_body(self, config, dtype, rng, recompute=False):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.recompute = recompute
        self.dtype = resolve_dtype(dtype)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd, dtype=dtype, rng=rng),
            wpe=nn.Embedding(c.block_size, c.n_embd, dtype=dtype, rng=rng),
            drop=nn.Dropout(c.dropout, rng=rng),
            h=nn.ModuleList([Block(c, dtype, rng) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, bias=c.bias, dtype=dtype),
        ))

    @property
    def recompute(self) -> bool:
        return self._recompute

    @recompute.setter
    def recompute(self, value):
        self._recompute = boolean(value, "recompute")

    def _init_weights(self, rng):
        std_residual = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data[...] = rng.normal(0.0, std_residual, p.shape)
            elif name.endswith(".weight") and p.ndim == 2:                  # Linear and Embedding
                p.data[...] = rng.normal(0.0, 0.02, p.shape)
            elif name.endswith(".bias") and ".ln_" not in name and "ln_f" not in name:
                p.data[...] = 0.0

    def _body_forward(self, idx):
        """idx (B, T) checked ids -> ln_f's output (B, T, C)."""
        c = self.config
        T = idx.shape[1]
        if T > c.block_size:
            raise ValueError(f"idx has sequence length {T}, more than block_size {c.block_size}")
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(np.arange(T))                                # (B, T, C)
        x = tr.drop(x)
        recompute = self.recompute and self.training            # evaluation runs as always
        for block in tr.h:
            x = block(x, recompute=recompute)                     # (B, T, C)
        return tr.ln_f(x)                                                     # (B, T, C)

    def _body_backward(self, dh):
        tr = self.transformer
        dx = tr.ln_f.backward(dh)                                             # (B, T, C)
        blocks = list(tr.h)
        for i in reversed(range(len(blocks))):
            if not any_trainable(tr.wte, tr.wpe, *blocks[:i + 1]):
                return                       # everything below is frozen: no work left to do
            dx = blocks[i].backward(dx)
        dx = tr.drop.backward(dx)
        tr.wte.backward(dx)                                                   # into the tied weight
        tr.wpe.backward(dx)                            # (B, T, C): the table sums over B


class GPT(_GPTBody, CachedLanguageModel):
    """``GPT(GPTConfig(...), dtype=np.float32, rng=None)``.

    * ``logits = model(idx)`` -- ``(B, T, vocab_size)`` for every position (nanoGPT returns only
      the last position when there are no targets; here the backward needs them all);
    * ``logits, loss = model(idx, targets)`` -- mean cross-entropy, targets ``-1`` ignored;
    * ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets.

    ``state_dict()`` keys and shapes are nanoGPT's (``transformer.wte.weight``,
    ``transformer.h.0.attn.c_attn.weight`` (3C, C), ..., ``lm_head.weight``, tied to ``wte``).

    ``recompute`` (``GPT(config, recompute=True)`` or ``model.recompute = True`` at any time):
    activation recomputation in training mode -- each block keeps only its input and runs its
    forward again in its backward; bit-identical gradients for about one extra forward per
    step. A memory choice, not architecture: it is not in the config, the state_dict or the
    checkpoint (``train --recompute`` records it in the run's options). Evaluation, ``generate``
    and the KV-cache ``step`` never recompute.
    """

    def __init__(self, config: GPTConfig, dtype=np.float32, rng=None, recompute=False):
        super().__init__()
        rng = make_rng(rng)
        self._build_body(config, dtype, rng, recompute)
        c = self.config
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False, dtype=dtype, rng=rng)
        self.lm_head.weight = self.transformer.wte.weight                   # weight tying
        self._init_weights(rng)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, idx, targets=None):
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        logits = self.lm_head(self._body_forward(idx))                        # (B, T, V)
        return self._logits_and_loss(logits, idx, targets)

    @trusted
    def _backward(self, dlogits):
        self._body_backward(self.lm_head.backward(dlogits))                  # (B, T, C)

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Build from a :class:`GPTConfig` or its :meth:`config_dict` (e.g. a checkpoint's)."""
        return cls(GPTConfig(**config) if isinstance(config, dict) else config, dtype=dtype, rng=rng)

    def config_dict(self) -> dict:
        return asdict(self.config)

    # ------------------------------------------------------------------------------------------
    # Hugging Face GPT-2 checkpoints (local files only)
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Load a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors``) from a
        local path -- nothing is downloaded.

        HF's GPT-2 stores its projections as ``Conv1D`` with weights ``(in, out)``: ``c_attn``,
        ``c_proj`` and ``c_fc`` are transposed into ``Linear``'s ``(out, in)``. The LM head is the
        token embedding (tied), whether or not the file lists ``lm_head.weight``.

        Both files are hostile until checked. ``config.json`` (a regular file of at most 1 MiB,
        JSON nested at most 64 deep) must give GPT-2's sizes as positive ints; the settings this
        architecture cannot honour (``n_inner`` other than ``4 n_embd``, unscaled or
        layer-scaled attention, cross-attention, another activation or epsilon) are refused, not
        ignored. The parameters the config declares must fit in the weights file (2 bytes each
        at least) before anything is allocated. Every tensor must be one GPT-2 has, of the shape
        the config implies, floating point and finite in ``dtype``; none may be missing, and a
        listed ``lm_head.weight`` must equal ``wte.weight``. Each failure is a ``ValueError``
        naming the file and the field or tensor.
        """
        import os
        from .._files import loads_json, read_bytes, regular_file
        from ..io import load_safetensors
        dtype = resolve_dtype(dtype)
        path = os.fspath(path)
        cfg_path = os.path.join(path, "config.json")
        weights_path = os.path.join(path, "model.safetensors")
        for f in (cfg_path, weights_path):
            if not os.path.exists(f):
                raise FileNotFoundError(f"from_pretrained needs {os.path.basename(f)} in {path}: "
                                        f"{f} does not exist")
        hf = loads_json(read_bytes(cfg_path, "config.json", limit=1 << 20), cfg_path)

        def field(key, default, ok, want):
            value = hf.get(key, default)
            if not ok(value):
                text = repr(value)
                raise ValueError(f"{cfg_path}: {key} must be {want}, got "
                                 f"{text if len(text) <= 60 else text[:60] + '...'}")
            return value

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        field("model_type", "gpt2", lambda v: v == "gpt2", "'gpt2'")
        field("activation_function", "gelu_new", lambda v: v in ("gelu_new", "gelu_pytorch_tanh"),
              "GPT-2's tanh GELU ('gelu_new' or 'gelu_pytorch_tanh')")
        field("layer_norm_epsilon", 1e-5, lambda v: is_num(v) and abs(v - 1e-5) <= 1e-12, "1e-5")
        sizes = {}
        for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            if key not in hf:
                raise ValueError(f"{cfg_path} lacks the GPT-2 field {key!r}")
            sizes[key] = field(key, None, lambda v: is_int(v) and v >= 1, "an int >= 1")
        V, P, L, C = (sizes[k] for k in ("vocab_size", "n_positions", "n_layer", "n_embd"))
        field("n_inner", None, lambda v: v is None or v == 4 * C, f"null or 4 * n_embd = {4 * C}")
        field("scale_attn_weights", True, lambda v: v is True, "true (attention scaled by 1/sqrt(d))")
        field("scale_attn_by_inverse_layer_idx", False, lambda v: v is False, "false")
        field("add_cross_attention", False, lambda v: v is False, "false")
        tied = field("tie_word_embeddings", True, lambda v: isinstance(v, bool), "true or false")
        try:
            config = GPTConfig(vocab_size=V, block_size=P, n_layer=L, n_head=sizes["n_head"],
                               n_embd=C, dropout=0.0, bias=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cfg_path}: {exc}") from None
        # the declared model must fit in the weights file before anything of its size exists
        n_params = (V + P + 2) * C + L * (12 * C * C + 13 * C)
        _, weights_size = regular_file(weights_path, "safetensors weights file")
        if 2 * n_params > weights_size:
            raise ValueError(f"{cfg_path} declares {n_params:,} parameters (vocab_size {V}, "
                             f"n_positions {P}, n_layer {L}, n_embd {C}), at least "
                             f"{2 * n_params:,} bytes; {weights_path} has {weights_size:,}")
        shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
        for i in range(L):
            for name, shape in (("ln_1.weight", (C,)), ("ln_1.bias", (C,)),
                                ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
                                ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                                ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                                ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
                                ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))):
                shapes[f"h.{i}.{name}"] = shape
        shapes["lm_head.weight"] = (V, C)
        tensors, _ = load_safetensors(weights_path)
        limit = np.finfo(dtype).max
        found = {}
        for name, value in tensors.items():
            short = name[len("transformer."):] if name.startswith("transformer.") else name
            parts = short.split(".")
            if (len(parts) == 4 and parts[0] == "h" and parts[1].isdigit() and parts[2] == "attn"
                    and parts[3] in ("bias", "masked_bias")):
                continue                                                      # old causal-mask buffers
            if short not in shapes:
                raise ValueError(f"{weights_path}: tensor {name[:80]!r} is not a GPT-2 parameter")
            if short in found:
                raise ValueError(f"{weights_path}: tensors {found[short]!r} and {name!r} are the same "
                                 f"parameter")
            if tuple(value.shape) != shapes[short]:
                raise ValueError(f"{weights_path}: tensor {name!r} has shape {tuple(value.shape)}, "
                                 f"expected {shapes[short]} for the sizes in {cfg_path}")
            if value.dtype.kind != "f":
                raise ValueError(f"{weights_path}: tensor {name!r} has dtype {value.dtype}; weights "
                                 f"must be floating point")
            if value.size and not (np.isfinite(value).all() and (
                    value.dtype.itemsize <= dtype.itemsize or np.abs(value).max() <= limit)):
                raise ValueError(f"{weights_path}: tensor {name!r} holds NaN, inf or values beyond "
                                 f"{dtype.name}'s range")
            found[short] = name
        missing = [k for k in shapes if k not in found and k != "lm_head.weight"]
        if missing:
            raise ValueError(f"{weights_path} lacks {len(missing)} GPT-2 tensor(s): "
                             f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        wte = tensors[found["wte.weight"]]
        if "lm_head.weight" in found:
            if not np.array_equal(tensors[found["lm_head.weight"]], wte):
                raise ValueError(f"{weights_path}: lm_head.weight differs from wte.weight; this GPT "
                                 f"ties its LM head to the token embedding")
        elif not tied:
            raise ValueError(f"{cfg_path}: tie_word_embeddings is false, but {weights_path} has no "
                             f"lm_head.weight")
        model = cls(config, dtype=dtype, rng=0)
        state = {}
        for short, name in found.items():
            value = tensors[name]
            if short.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                               "mlp.c_proj.weight")):
                value = value.T                                               # Conv1D (in, out) -> (out, in)
            state[short if short == "lm_head.weight" else "transformer." + short] = value
        state["lm_head.weight"] = wte
        model.load_state_dict(state, strict=True)
        return model

    # ------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------
    @property
    def context_size(self) -> int:
        """The longest context: ``block_size`` (its learned position embeddings)."""
        return self.config.block_size

    @trusted
    def _step_logits(self, idx_new, start, past):
        """Logits of the last new position; positions start..start+t-1; extends the KV cache
        (``past``: one (k, v) per block, or None)."""
        tr = self.transformer
        t = idx_new.shape[1]
        x = tr.wte.weight.data[idx_new] + tr.wpe.weight.data[start:start + t]   # (B, t, C)
        new_past = []
        for block, p in zip(tr.h, past or [None] * len(tr.h)):
            x, kv = block.step(x, p)
            new_past.append(kv)
        x = tr.ln_f(x[:, -1:])                                                # (B, 1, C)
        return (x @ tr.wte.weight.data.T)[:, 0], new_past                    # (B, V)


class GPTForSequenceClassification(_GPTBody, SequenceClassifier, nn.Module):
    """``GPTForSequenceClassification(config, num_labels=2, pad_token_id=0)``: a GPT body
    (``transformer.*``, nanoGPT's names as :class:`GPT`) and ``score``, pooled at the last token
    that is not padding, as ``transformers``' ``GPT2ForSequenceClassification``; see
    :class:`~scratchlm.models.lm.SequenceClassifier`. :meth:`from_causal_lm` starts one from a
    trained :class:`GPT`."""

    BODY_PREFIX = "transformer."
    CONFIG = GPTConfig
    HIDDEN = "n_embd"
