"""``attention_*``: causal scaled dot-product attention, forward + backward, B=1, 8 heads of 64,
float32, at T = 512, 2048 and 8192: the tiled kernels (FlashAttention, ``method="tiled"``) on both
routes, the dense path (``method="dense"``, the ``(T, T)`` probabilities) on the Numba route, and
torch's ``scaled_dot_product_attention``.

Peak memory is half of what these are for: ``python -m benchmarks.memprobe attention_8192
scratchlm-tiled --threads 2`` (one process per implementation). The dense path at T = 8192 holds
three ``(8, 8192, 8192)`` float32 arrays at once in its backward (2 GiB each).
"""

from __future__ import annotations

import numpy as np

from .base import TORCH, Workload

TILED = "scratchlm-tiled"
TILED_NUMPY = "scratchlm-tiled-numpy"
DENSE = "scratchlm-dense"


class _Attention(Workload):
    T: int = 0
    B, H, D = 1, 8, 64
    impls = (TILED, TILED_NUMPY, DENSE, TORCH)
    reference = TORCH

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.t = self.T // 8 if quick else self.T
        B, H, T, D = self.B, self.H, self.t, self.D
        # FlashAttention's count: a causal forward is 2 products of T x T x D, halved (4 B H T^2 D
        # / 2 flops), the backward 2.5 times that
        self.flops = 3.5 * 2.0 * B * H * T * T * D
        self.params = {"B": B, "heads": H, "T": T, "d": D, "causal": True, "dtype": "float32"}
        self.description = (
            f"causal attention q, k, v ({B}, {H}, {T}, {D}) float32: "
            f"y = attention_forward(q, k, v, is_causal=True); attention_backward(dy) -> dq, dk, dv. {TILED}: method='tiled', "
            f"Numba route (2 threads over the heads); {TILED_NUMPY}: its NumPy twin; {DENSE}: "
            f"method='dense', Numba route; torch: F.scaled_dot_product_attention(is_causal=True), "
            f"y.backward(dy). flops: FlashAttention's count (3.5 x 4BHT^2d/2).")

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        shape = (self.B, self.H, self.t, self.D)
        q, k, v, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
        if impl != TORCH:
            from scratchlm import functional as F

            method = "dense" if impl == DENSE else "tiled"

            def fn():
                y, cache = F.attention_forward(q, k, v, is_causal=True, method=method)
                F.attention_backward(dy, cache)

            return self.scratchlm_step(impl, fn)

        torch = self.require_torch()
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
        tdy = torch.from_numpy(dy)

        def step():
            for t in (tq, tk, tv):
                t.grad = None
            sdpa(tq, tk, tv, is_causal=True).backward(tdy)

        return step


class Attention512(_Attention):
    name = "attention_512"
    T = 512


class Attention2048(_Attention):
    name = "attention_2048"
    T = 2048


class Attention8192(_Attention):
    name = "attention_8192"
    T = 8192
    max_repeats = 3          # the dense path: seconds per step
    max_warmup = 1
