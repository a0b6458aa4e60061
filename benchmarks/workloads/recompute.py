"""Activation recomputation: the main job's GPT at T = 1024, one training step with every block's
activations stored, and with only each block's input kept (``model.recompute = True``).

Peak memory is what this workload is for: ``python -m benchmarks.memprobe gpt_recompute_1024
scratchlm-recompute`` (and ``scratchlm-stored``), one process each. The timing shows the price,
about one extra forward per step.
"""

from __future__ import annotations

import numpy as np

from .base import Workload

STORED = "scratchlm-stored"
RECOMPUTE = "scratchlm-recompute"


def main_job_config(block_size):
    """The GPTConfig ``python -m scratchlm train transformer`` builds with its defaults (the
    built-in corpus, char tokens), with ``block_size`` in place of the default."""
    from scratchlm import registry
    from scratchlm.data import build_tokenizer, read_corpus, split_corpus
    entry = registry.get("transformer")
    opts = entry.resolve({"block_size": block_size})
    train_text, _ = split_corpus(read_corpus(opts["corpus"])[0], opts["val_fraction"])
    vocab = build_tokenizer(opts["tokenizer"], train_text, opts["vocab_size"]).vocab_size
    return entry, opts, entry.make_config(opts, {"vocab_size": vocab})


class GPTRecompute1024(Workload):
    """One AdamW step of the main job's GPT at block 1024, batch 4: stored vs recomputed."""

    name = "gpt_recompute_1024"
    impls = (STORED, RECOMPUTE)
    reference = STORED
    max_repeats = 5

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.entry, self.opts, self.cfg = main_job_config(128 if quick else 1024)
        self.batch = 2 if quick else 4
        c, B, T = self.cfg, self.batch, self.cfg.block_size
        n_params = 12 * c.n_layer * c.n_embd ** 2 + c.vocab_size * c.n_embd    # wte once (tied)
        self.flops = (6 * n_params + 12 * c.n_layer * T * c.n_embd) * B * T     # nanoGPT's
        self.params = {"batch": B, **vars(c)}
        self.description = (
            f"one training step (forward, backward, AdamW) of the main job's "
            f"GPT (train transformer's defaults: n_layer={c.n_layer}, n_head={c.n_head}, "
            f"n_embd={c.n_embd}, char vocab {c.vocab_size} of the built-in corpus) at block {T}, "
            f"batch {B}, float32, Numba route: every block's activations stored, or only each "
            f"block's input kept and its forward run again in the backward (recompute=True); "
            f"flops: 6N + 12LTd per token (nanoGPT), without the recomputed forward.")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm.nn.module import NO_CACHE
        from scratchlm.optim import AdamW
        rng = np.random.default_rng(0)
        shape = (self.batch, self.cfg.block_size)
        x = rng.integers(0, self.cfg.vocab_size, shape)
        y = rng.integers(0, self.cfg.vocab_size, shape)
        model = self.entry.build(self.cfg, rng=0,                  # as `train transformer` does
                                 options=self.opts | {"recompute": impl == RECOMPUTE})
        opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.99))

        def backward():
            model.backward()
            # The caches would stay until the next forward replaces them: live between steps,
            # where the memory probe's baseline would hide them. Dropped here (both impls), the
            # probe's peak is all a step holds beyond the model and the optimizer.
            for m in model.modules():
                m._cache = NO_CACHE
        return self.train_step(impl, opt, lambda: model(x, y), backward)
