"""``sgemm``: the float32 matrix product every dense layer reduces to; its speed is the peak."""

from __future__ import annotations

import numpy as np

from .base import SCRATCHLM_NUMBA, TORCH, Workload

NUMPY_BLAS = "numpy-blas"
OWN_GEMM = "scratchlm-gemm"


class Sgemm(Workload):
    name = "sgemm"
    impls = (NUMPY_BLAS, OWN_GEMM, TORCH)

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n = 512 if quick else 1024
        self.params = {"N": self.n}
        self.flops = 2.0 * self.n ** 3
        self.description = (
            f"float32 ({self.n}x{self.n}) @ ({self.n}x{self.n}); flops 2N^3. numpy-blas: `np.matmul` "
            f"(out= preallocated), the NumPy route's products; {OWN_GEMM}: "
            "`scratchlm.kernels.gemm.matmul` on the Numba route (our GEMM, on scratchlm's threads); "
            "torch: `torch.mm` (out= preallocated). The best GFLOP/s here is the peak for "
            "'% of peak'."
        )

    def setup(self, impl):
        self.check_impl(impl)
        rng = np.random.default_rng(0)
        a = rng.standard_normal((self.n, self.n), dtype=np.float32)
        b = rng.standard_normal((self.n, self.n), dtype=np.float32)
        if impl == NUMPY_BLAS:
            out = np.empty((self.n, self.n), np.float32)
            return lambda: np.matmul(a, b, out=out)
        if impl == OWN_GEMM:
            from scratchlm.kernels.gemm import matmul
            out = np.empty((self.n, self.n), np.float32)
            return self.scratchlm_step(SCRATCHLM_NUMBA, lambda: matmul(a, b, out, False))
        torch = self.require_torch()
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tout = torch.empty((self.n, self.n), dtype=torch.float32)
        return lambda: torch.mm(ta, tb, out=tout)
