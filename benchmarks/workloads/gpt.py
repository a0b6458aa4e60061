"""GPT: one training step (W1) and generation with and without the KV cache.

The torch reference is nanoGPT's model written with ``torch.nn`` (``torch_gpt``); the tests use
the same definition for their parity checks.
"""

from __future__ import annotations

import numpy as np

from .base import SCRATCHLM, TORCH, Workload


def torch_gpt(torch, cfg):
    """nanoGPT's GPT (same parameter names as scratchlm's) built from torch.nn, float32."""
    tnn, tF = torch.nn, torch.nn.functional

    class Attn(tnn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = tnn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
            self.c_proj = tnn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, cfg.n_head, C // cfg.n_head).transpose(1, 2) for t in (q, k, v))
            y = tF.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(tnn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = tnn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
            self.c_proj = tnn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

        def forward(self, x):
            return self.c_proj(tF.gelu(self.c_fc(x), approximate="tanh"))

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = tnn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.attn = Attn()
            self.ln_2 = tnn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class Model(tnn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = tnn.ModuleDict(dict(
                wte=tnn.Embedding(cfg.vocab_size, cfg.n_embd), wpe=tnn.Embedding(cfg.block_size, cfg.n_embd),
                h=tnn.ModuleList([Block() for _ in range(cfg.n_layer)]),
                ln_f=tnn.LayerNorm(cfg.n_embd, bias=cfg.bias)))
            self.lm_head = tnn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight

        def forward(self, idx, targets=None):
            T = idx.shape[1]
            x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
            for b in self.transformer.h:
                x = b(x)
            logits = self.lm_head(self.transformer.ln_f(x))
            if targets is None:
                return logits, None
            return logits, tF.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    return Model()


def _models(cfg, torch=None):
    from scratchlm import registry
    ours = registry.get("transformer").build(cfg, rng=0)      # the model `train transformer` builds
    if torch is None:
        return ours, None
    theirs = torch_gpt(torch, cfg)
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return ours, theirs


class GPTTrainStep(Workload):
    """W1: forward + backward + AdamW of a 4-layer GPT, batch 16 x block 128, d 256, 8 heads."""

    name = "gpt_train_step"
    label = "W1"
    targets = {"scratchlm-numba": 1.0}

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        from scratchlm.models import GPTConfig
        self.cfg = GPTConfig(vocab_size=256, block_size=128 if not quick else 64, n_layer=4 if not quick else 2,
                             n_head=8, n_embd=256 if not quick else 128)
        self.batch = 16
        c, B, T = self.cfg, self.batch, self.cfg.block_size
        n_params = 12 * c.n_layer * c.n_embd ** 2 + c.vocab_size * c.n_embd       # wte counted once (tied)
        self.flops = (6 * n_params + 12 * c.n_layer * T * c.n_embd) * B * T          # nanoGPT's estimate
        self.params = {"batch": B, **vars(c)}
        self.description = (
            f"one training step (forward, backward, AdamW) of GPT(n_layer={c.n_layer}, n_head={c.n_head}, "
            f"n_embd={c.n_embd}, vocab {c.vocab_size}) on batch {B} x block {T}, float32; torch: nanoGPT's "
            f"model with the same weights, eager, torch.optim.AdamW; flops: 6N + 12LTd per token (nanoGPT).")

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        x = rng.integers(0, self.cfg.vocab_size, (self.batch, self.cfg.block_size))
        y = rng.integers(0, self.cfg.vocab_size, (self.batch, self.cfg.block_size))
        if impl == TORCH:
            torch = self.require_torch()
            _, model = _models(self.cfg, torch)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            return self.torch_train_step(opt, lambda: model(tx, ty)[1])
        from scratchlm.optim import AdamW
        model, _ = _models(self.cfg)
        opt = AdamW(model.parameters(), lr=1e-4)
        return self.train_step(impl, opt, lambda: model(x, y), model.backward)


class GPTGenerate(Workload):
    """Tokens per second generating after a one-token prompt, with and without the KV cache."""

    impls = ("scratchlm-cache", "scratchlm-nocache", "torch-nocache")
    reference = "scratchlm-nocache"
    unit = "tok"
    max_repeats = 3
    max_warmup = 1
    new_tokens = 256

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        from scratchlm.models import GPTConfig
        self.n = self.new_tokens // (8 if quick else 1)
        self.cfg = GPTConfig(vocab_size=256, block_size=1024, n_layer=4, n_head=8, n_embd=256)
        self.params = {"new_tokens": self.n, **vars(self.cfg)}
        self.description = (
            f"generate {self.n} tokens (batch 1, one-token prompt, top-k 40) with a 4-layer d=256 GPT "
            f"(block 1024): scratchlm with the KV cache, scratchlm recomputing the whole context every "
            f"step (use_cache=False), and nanoGPT's generate in torch (no cache).")

    def items(self, impl):
        return float(self.n)

    def setup(self, impl):
        self.check_impl(impl)
        prompt = np.zeros((1, 1), np.int64)
        if impl == "torch-nocache":
            torch = self.require_torch()
            _, model = _models(self.cfg, torch)
            model.eval()

            @torch.no_grad()
            def step():
                idx = torch.from_numpy(prompt)
                gen = torch.Generator().manual_seed(0)
                for _ in range(self.n):
                    logits = model(idx[:, -self.cfg.block_size:])[0][:, -1, :]
                    v, _ = torch.topk(logits, 40)
                    logits[logits < v[:, [-1]]] = -float("inf")
                    nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
                    idx = torch.cat([idx, nxt], dim=1)
            return step
        model, _ = _models(self.cfg)
        cache = impl == "scratchlm-cache"
        return self.scratchlm_step(SCRATCHLM, lambda: model.generate(prompt, self.n, top_k=40, seed=0,
                                                                     use_cache=cache))


class GPTGenerate1024(GPTGenerate):
    name = "gpt_generate_1024"
    new_tokens = 1024
    in_default = False
    max_repeats = 2


GPTGenerate.name = "gpt_generate_256"
