"""Llama: one training step (W9) and greedy generation with the KV cache against ``transformers``.

The reference is ``transformers``' ``LlamaForCausalLM`` (SDPA attention) carrying our weights:
the state_dict names are the same, so they load one to one.
"""

from __future__ import annotations

import numpy as np

from .base import SCRATCHLM, TORCH, Unavailable, Workload


def _config(quick, max_positions):
    from scratchlm.models import LlamaConfig
    return LlamaConfig(vocab_size=256, hidden_size=256 if not quick else 64,
                       intermediate_size=688 if not quick else 172,
                       num_hidden_layers=4 if not quick else 2, num_attention_heads=8,
                       num_key_value_heads=2, max_position_embeddings=max_positions)


def _models(cfg, torch=None):
    from scratchlm.models import Llama
    from scratchlm.models.hf_llama import hf_config
    ours = Llama(cfg, rng=0)
    if torch is None:
        return ours, None
    try:
        import transformers
    except Exception as exc:
        raise Unavailable(f"transformers not importable: {exc}") from exc
    doc = hf_config(cfg)
    doc.pop("architectures")
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **{k: v for k, v in doc.items() if k != "model_type"}, attn_implementation="sdpa"))
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return ours, theirs.float()


class LlamaTrainStep(Workload):
    """W9: forward + backward + AdamW of a 4-layer Llama with grouped-query attention."""

    name = "llama_train_step"
    label = "W9"
    targets = {"scratchlm-numba": 1.0}

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.batch, self.T = 16, 128 if not quick else 32
        self.cfg = _config(quick, self.T)
        c, B, T = self.cfg, self.batch, self.T
        d, kv = c.head_dim, c.num_key_value_heads
        per_layer = (c.hidden_size * d * (2 * c.num_attention_heads + 2 * kv)
                     + 3 * c.hidden_size * c.intermediate_size)
        n_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size  # head (untied)
        self.flops = (6 * n_params + 12 * c.num_hidden_layers * T * c.hidden_size) * B * T
        self.params = {"batch": B, "T": T, **vars(c)}
        self.description = (
            f"one training step (forward, backward, AdamW) of Llama(hidden {c.hidden_size}, "
            f"{c.num_hidden_layers} layers, {c.num_attention_heads} heads, {kv} KV heads, "
            f"intermediate {c.intermediate_size}, vocab {c.vocab_size}) on batch {B} x {T} tokens, "
            f"float32; torch: transformers' LlamaForCausalLM (SDPA attention) with the same "
            f"weights, eager, torch.optim.AdamW; flops: 6N + 12LTd per token.")

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        x = rng.integers(0, self.cfg.vocab_size, (self.batch, self.T))
        y = rng.integers(0, self.cfg.vocab_size, (self.batch, self.T))
        if impl == TORCH:
            torch = self.require_torch()
            _, model = _models(self.cfg, torch)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            V = self.cfg.vocab_size
            return self.torch_train_step(opt, lambda: torch.nn.functional.cross_entropy(
                model(tx).logits.reshape(-1, V), ty.reshape(-1)))
        from scratchlm.optim import AdamW
        model, _ = _models(self.cfg)
        opt = AdamW(model.parameters(), lr=1e-4)
        return self.train_step(impl, opt, lambda: model(x, y), model.backward)


class LlamaGenerate(Workload):
    """Tokens per second of greedy generation with the KV cache, against transformers."""

    name = "llama_generate_256"
    impls = ("scratchlm-cache", "torch-transformers")
    reference = "torch-transformers"
    targets = {"scratchlm-cache": 1.0}
    unit = "tok"
    max_repeats = 3
    max_warmup = 1

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n = 256 // (8 if quick else 1)
        self.cfg = _config(quick, 1024)
        self.params = {"new_tokens": self.n, **vars(self.cfg)}
        self.description = (
            f"greedy generation of {self.n} tokens (batch 1, one-token prompt) with the W9 Llama "
            f"(max 1024 positions): scratchlm's generate with the KV cache vs transformers' "
            f"generate (its KV cache, do_sample=False) on the same weights; the target is to be "
            f"faster than transformers.")

    def items(self, impl):
        return float(self.n)

    def setup(self, impl):
        self.check_impl(impl)
        prompt = np.zeros((1, 1), np.int64)
        if impl == "torch-transformers":
            torch = self.require_torch()
            _, model = _models(self.cfg, torch)
            model.eval()
            tp = torch.from_numpy(prompt)

            @torch.no_grad()
            def step():
                model.generate(tp, max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False,
                               pad_token_id=0)
            return step
        model, _ = _models(self.cfg)
        return self.scratchlm_step(SCRATCHLM, lambda: model.generate(prompt, self.n, greedy=True))
