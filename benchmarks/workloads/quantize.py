"""Generation with quantized weights: a Llama whose weights exceed the L2 cache (hidden 768,
8 layers, 51M parameters, 203 MB in float32), batch 1, greedy, with the KV cache; float32
against int8, q8_0 and q4_0 (every Linear quantized; the embedding and norms stay float32),
each in its own process."""

from __future__ import annotations

import numpy as np

from .base import Workload

FORMATS = ("int8", "q8_0", "q4_0")


class QuantizedGenerate(Workload):
    name = "llama_quantized_generate"
    impls = ("scratchlm-f32",) + tuple(f"scratchlm-{f}" for f in FORMATS)
    reference = "scratchlm-f32"
    targets = {f"scratchlm-{f}": round(1 / 1.5, 3) for f in FORMATS}   # >= 1.5x the tokens/s
    unit = "tok"
    in_default = False                  # about a minute a process: run it with --only
    max_repeats = 3
    max_warmup = 1

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        from scratchlm.models import LlamaConfig
        self.n = 16 if quick else 64
        self.cfg = LlamaConfig(vocab_size=256, hidden_size=768 if not quick else 128,
                               intermediate_size=2048 if not quick else 256,
                               num_hidden_layers=8 if not quick else 2,
                               num_attention_heads=12 if not quick else 4,
                               num_key_value_heads=4, max_position_embeddings=512)
        self.params = {"new_tokens": self.n, **vars(self.cfg)}
        self.description = (
            f"greedy generation of {self.n} tokens (batch 1, 8-token prompt, KV cache) with a "
            f"Llama (hidden {self.cfg.hidden_size}, {self.cfg.num_hidden_layers} layers, "
            f"intermediate {self.cfg.intermediate_size}, {self.cfg.num_attention_heads} heads, "
            f"{self.cfg.num_key_value_heads} KV heads) in float32 and "
            f"with every Linear quantized; the target is 1.5x float32's tokens/s.")

    def items(self, impl):
        return float(self.n)

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm.compress import quantize
        from scratchlm.models import Llama
        model = Llama(self.cfg, rng=0)
        fmt = impl.split("-", 1)[1]
        if fmt != "f32":
            quantize(model, fmt)
        prompt = np.random.default_rng(0).integers(0, self.cfg.vocab_size, (1, 8))
        return self.scratchlm_step("scratchlm", lambda: model.generate(prompt, self.n,
                                                                       greedy=True))
