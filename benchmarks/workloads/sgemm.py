"""``sgemm``: the float32 matrix product every dense layer reduces to; its speed is the peak."""

from __future__ import annotations

import numpy as np

from .base import TORCH, Workload

NUMPY_BLAS = "numpy-blas"


class Sgemm(Workload):
    name = "sgemm"
    impls = (NUMPY_BLAS, TORCH)

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n = 512 if quick else 1024
        self.params = {"N": self.n}
        self.flops = 2.0 * self.n ** 3
        self.description = (
            f"float32 ({self.n}x{self.n}) @ ({self.n}x{self.n}); flops 2N^3. scratchlm does its "
            "matmuls with numpy's `@` (BLAS) under either kernel route (except the im2col "
            "convolutions, which use our own GEMM on the Numba route), so one impl, numpy-blas "
            "(`np.matmul`, out= preallocated), stands for both; torch: `torch.mm` (out= preallocated). "
            "The best GFLOP/s here is the peak for '% of sgemm peak'."
        )

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        a = rng.standard_normal((self.n, self.n), dtype=np.float32)
        b = rng.standard_normal((self.n, self.n), dtype=np.float32)
        if impl == NUMPY_BLAS:
            out = np.empty((self.n, self.n), np.float32)
            return lambda: np.matmul(a, b, out=out)
        torch = self.require_torch()
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tout = torch.empty((self.n, self.n), dtype=torch.float32)
        return lambda: torch.mm(ta, tb, out=tout)
