r"""A vectorisable ``exp`` for Numba kernels: ``exp_inplace(a, bits)``.

Why: NumPy's ``np.exp`` is SIMD code; inside a Numba loop ``math.exp`` is a scalar libm call
(several ns per element on float32) that the compiler cannot vectorise. For float32 this file
computes :math:`e^t` with plain arithmetic that LLVM turns into SIMD instructions:

.. math::  e^t = 2^n\, e^r,\qquad n = \mathrm{round}(t / \ln 2),\qquad r = t - n\ln 2,
           \quad |r| \le \tfrac12\ln 2

:math:`r` is formed with :math:`\ln 2` split in two parts (Cody & Waite) so no precision is lost,
:math:`e^r` is its Taylor polynomial to degree 7 (truncation below ``6e-8`` relative, under half a
float32 ulp), and :math:`2^n` is assembled directly as IEEE-754 bits: exponent field ``n + 127``
shifted left by 23. Inputs are clamped to ``[-87, 88]`` (float32's finite, normal range); below
-87 the result is ``exp(-87) ~ 1.6e-38`` rather than a subnormal or 0, which no caller here can tell
apart from 0 after the sums it feeds.

float64 arrays take ``math.exp`` element by element: exactness matters more than speed there
(gradient checks and 1e-10 parity run in float64).

``bits`` is caller-provided int32 scratch of ``a``'s length (unused for float64), so kernels that
call this per row allocate it once.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import dispatch

LN2_HI = 0.693145751953125          # ln 2 to 16 bits: n * LN2_HI is exact for |n| < 2^8
LN2_LO = 1.428606765330187e-06      # ln 2 - LN2_HI
INV_LN2 = 1.4426950408889634


def exp_inplace(a, bits):
    """a: (n,) float array, overwritten with exp(a); bits: (n,) int32 scratch."""
    np.exp(a, out=a)


@overload(exp_inplace, jit_options={"cache": True})
def _exp_inplace_overload(a, bits):
    if a.dtype == types.float32:
        def impl(a, bits):
            n = a.shape[0]
            for i in range(n):
                t = min(max(a[i], np.float32(-87.0)), np.float32(88.0))
                f = np.floor(t * np.float32(INV_LN2) + np.float32(0.5))   # float32 (math.floor: int64)
                r = t - f * np.float32(LN2_HI) - f * np.float32(LN2_LO)
                p = np.float32(1.0 / 5040.0)                 # Horner: sum_k r^k / k!, k <= 7
                p = p * r + np.float32(1.0 / 720.0)
                p = p * r + np.float32(1.0 / 120.0)
                p = p * r + np.float32(1.0 / 24.0)
                p = p * r + np.float32(1.0 / 6.0)
                p = p * r + np.float32(0.5)
                p = p * r + np.float32(1.0)
                p = p * r + np.float32(1.0)
                a[i] = p
                bits[i] = (np.int32(f) + np.int32(127)) << np.int32(23)   # 2^n as float32 bits
            scale = bits.view(np.float32)
            for i in range(n):
                a[i] *= scale[i]
        return impl

    def impl(a, bits):
        for i in range(a.shape[0]):
            a[i] = math.exp(a[i])
    return impl


def exp_numpy(a):
    """a: (n,) -> exp(a) (the twin of :func:`exp_numba`)."""
    return np.exp(a)


@njit(cache=True, nogil=True)
def exp_numba(a):
    # a: (n,) -> exp(a): the in-place primitive wrapped as a kernel (for tests and benchmarks)
    out = a.copy()
    exp_inplace(out, np.empty(a.shape[0], np.int32))
    return out


exp = dispatch(exp_numba, exp_numpy)
