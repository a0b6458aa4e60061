"""``cross_entropy_*``: CrossEntropyLoss (mean) forward + backward on float32 logits."""

from __future__ import annotations

import numpy as np

from .base import TORCH, Workload


class _CrossEntropy(Workload):
    rows: int = 0
    quick_rows: int = 0
    classes: int = 0

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n = self.quick_rows if quick else self.rows
        self.params = {"rows": self.n, "classes": self.classes}
        self.flops = None
        self.description = (
            f"logits ({self.n}, {self.classes}), int64 targets: loss = ce(x, t); dx = ce.backward() "
            "(reduction='mean'); torch: F.cross_entropy on a leaf tensor, loss.backward(), "
            "x.grad = None each step."
        )

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.n, self.classes), dtype=np.float32)
        t = rng.integers(0, self.classes, self.n, dtype=np.int64)
        if impl != TORCH:
            from scratchlm import nn

            ce = nn.CrossEntropyLoss()

            def fn():
                ce(x, t)
                ce.backward()

            return self.scratchlm_step(impl, fn)

        torch = self.require_torch()
        import torch.nn.functional as F

        tx = torch.from_numpy(x).requires_grad_(True)
        tt = torch.from_numpy(t)

        def step():
            tx.grad = None
            F.cross_entropy(tx, tt).backward()

        return step


class CrossEntropy256(_CrossEntropy):
    name = "cross_entropy_256"
    rows, quick_rows, classes = 2048, 512, 256


class CrossEntropy50257(_CrossEntropy):
    name = "cross_entropy_50257"
    rows, quick_rows, classes = 512, 64, 50257
