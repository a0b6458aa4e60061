"""``mlp_block``: a transformer MLP block, Linear -> GELU(tanh) -> Linear -> LayerNorm, fwd + bwd."""

from __future__ import annotations

import numpy as np

from .base import TORCH, Workload


class MLPBlock(Workload):
    name = "mlp_block"

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.rows = 512 if quick else 2048          # B*T
        self.d = 256
        self.hidden = 4 * self.d
        self.params = {"rows": self.rows, "d": self.d, "hidden": self.hidden}
        # per Linear: forward x@W.T, backward dy@W and dy.T@x -> 3 matmuls of 2*rows*d*hidden each
        self.flops = 3.0 * 2 * (2.0 * self.rows * self.d * self.hidden)
        self.description = (
            f"Linear({self.d},{self.hidden}) -> GELU(tanh) -> Linear({self.hidden},{self.d}) -> "
            f"LayerNorm({self.d}) on x ({self.rows}, {self.d}): forward, then backward of a fixed "
            "random upstream gradient (input and parameter grads; grads zeroed each step: "
            "zero_grad() / grad=None). torch: the same nn modules and weights, autograd. "
            "flops counted: the 6 matmuls only."
        )

    def _scratchlm_model(self):
        from scratchlm import nn

        return nn.Sequential(
            nn.Linear(self.d, self.hidden, rng=1),
            nn.GELU(approximate="tanh"),
            nn.Linear(self.hidden, self.d, rng=2),
            nn.LayerNorm(self.d),
        )

    def _data(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.rows, self.d), dtype=np.float32)
        dy = rng.standard_normal((self.rows, self.d), dtype=np.float32)
        return x, dy

    def setup(self, impl):
        self.check_impl(impl)
        model = self._scratchlm_model()
        x, dy = self._data()
        if impl != TORCH:
            def fn():
                model.zero_grad()
                model(x)
                model.backward(dy)
            return self.scratchlm_step(impl, fn)

        torch = self.require_torch()
        tmodel = torch.nn.Sequential(
            torch.nn.Linear(self.d, self.hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Linear(self.hidden, self.d),
            torch.nn.LayerNorm(self.d),
        ).float()
        tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
        tparams = list(tmodel.parameters())
        tx = torch.from_numpy(x).requires_grad_(True)   # the input gradient is computed, as scratchlm's
        tdy = torch.from_numpy(dy)

        def step():
            for p in tparams:
                p.grad = None
            tx.grad = None
            tmodel(tx).backward(tdy)

        return step
