"""One fine-tuning step of the W9 Llama: LoRA (r 8 on q_proj and v_proj) against full
fine-tuning, ours and torch + peft, each in its own process (time and, with the memory probe,
peak memory)."""

from __future__ import annotations

import numpy as np

from .base import Unavailable, Workload
from .llama import _config, _models


class LlamaLoRAStep(Workload):
    name = "llama_lora_step"
    impls = ("scratchlm-lora", "scratchlm-full", "torch-lora", "torch-full")
    reference = "torch-lora"

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.batch, self.T = 16, 128 if not quick else 32
        self.cfg = _config(quick, self.T)
        self.params = {"batch": self.batch, "T": self.T, "r": 8, "alpha": 16,
                       "targets": ["q_proj", "v_proj"], **vars(self.cfg)}
        self.description = (
            f"one fine-tuning step (forward, backward, AdamW) of the W9 Llama on batch "
            f"{self.batch} x {self.T}: LoRA r 8, alpha 16 on q_proj and v_proj (everything else "
            f"frozen) or full fine-tuning; torch: transformers' LlamaForCausalLM with peft's "
            f"LoRA (get_peft_model) or in full, the same weights.")

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        x = rng.integers(0, self.cfg.vocab_size, (self.batch, self.T))
        y = rng.integers(0, self.cfg.vocab_size, (self.batch, self.T))
        lora = impl.endswith("lora")
        if impl.startswith("torch"):
            torch = self.require_torch()
            _, model = _models(self.cfg, torch)
            if lora:
                try:
                    import peft
                except Exception as exc:
                    raise Unavailable(f"peft not importable: {exc}") from exc
                model = peft.get_peft_model(model, peft.LoraConfig(
                    r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            V = self.cfg.vocab_size
            return self.torch_train_step(opt, lambda: torch.nn.functional.cross_entropy(
                model(tx).logits.reshape(-1, V), ty.reshape(-1)))
        from scratchlm.finetune import apply_lora
        from scratchlm.optim import AdamW
        model, _ = _models(self.cfg)
        if lora:
            apply_lora(model, ("q_proj", "v_proj"), r=8, alpha=16, rng=0)
        opt = AdamW(model.trainable_parameters(), lr=1e-4)
        return self.train_step(impl, opt, lambda: model(x, y), model.backward)
