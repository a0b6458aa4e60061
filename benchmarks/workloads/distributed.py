"""Data parallelism on one machine: the main job's GPT (block 128, 4 layers, width 128, 4
heads, character vocabulary 107, batch 16, AdamW, clipping at 1) trained by one process with 2
threads against 2 MPI ranks with 1 thread each, each rank computing half of every batch and
the gradients summed with MPI allreduces started during the backward
(:class:`scratchlm.distributed.DataParallel`) -- the pieces the training loop runs with
``--distributed``."""

from __future__ import annotations

import numpy as np

from .base import Unavailable, Workload


class GPTDataParallel(Workload):
    name = "gpt_data_parallel"
    impls = ("scratchlm-1proc", "scratchlm-2ranks")
    reference = "scratchlm-1proc"
    ranks = {"scratchlm-2ranks": 2}
    unit = "tok"
    in_default = False                  # needs mpiexec: run it with --only

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.B, self.T = (4, 32) if quick else (16, 128)
        self.cfg = dict(vocab_size=107, block_size=self.T, n_layer=1 if quick else 4,
                        n_head=4, n_embd=32 if quick else 128)
        self.params = {"batch_size": self.B, **self.cfg}
        self.description = (f"the main job's GPT training step (B{self.B} T{self.T} "
                            f"L{self.cfg['n_layer']} d{self.cfg['n_embd']} V107, AdamW, "
                            f"clip 1): 1 process x 2 threads against 2 MPI ranks x 1 thread")

    def items(self, impl):
        return float(self.B * self.T)

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm.models import GPT, GPTConfig
        from scratchlm.optim import clip_grad_norm_
        from scratchlm.training.loop import TrainConfig, make_optimizer
        model = GPT(GPTConfig(**self.cfg), rng=0)
        opt = make_optimizer(list(model.named_parameters()),
                             TrainConfig(steps=1, lr=1e-3, weight_decay=0.1))
        rng = np.random.default_rng(0)
        x = rng.integers(0, 107, (self.B, self.T))
        y = rng.integers(0, 107, (self.B, self.T))
        par = None
        if impl == "scratchlm-2ranks":
            try:
                from scratchlm.distributed import DataParallel, world
            except ImportError as exc:
                raise Unavailable(str(exc)) from None
            par = DataParallel(model, world())
        params = [p for g in opt.param_groups for p in g["params"]]

        def fn():
            batch = (x, y)
            if par is not None:
                batch, _ = par.shard(batch)
                par.start()
            opt.zero_grad()
            loss = model(*batch)[1]
            if par is not None:
                par.mean([loss])
            model.backward()
            if par is not None:
                par.finish()
            clip_grad_norm_(params, 1.0)
            opt.step()
        return self.scratchlm_step("scratchlm-numba", fn)
