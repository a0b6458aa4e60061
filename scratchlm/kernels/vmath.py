r"""A vectorisable ``exp`` for Numba kernels: ``exp_inplace(a, bits)``.

Why: NumPy's ``np.exp`` is SIMD code; inside a Numba loop ``math.exp`` is a scalar libm call
(several ns per element on float32) that the compiler cannot vectorise. For float32 this file
computes :math:`e^t` with plain arithmetic that LLVM turns into SIMD instructions:

.. math::  e^t = 2^n\, e^r,\qquad n = \mathrm{round}(t / \ln 2),\qquad r = t - n\ln 2,
           \quad |r| \le \tfrac12\ln 2

:math:`r` is formed with :math:`\ln 2` split in two parts (Cody & Waite) so no precision is lost,
:math:`e^r` is a degree-6 minimax polynomial (``EXP_P``: 2e-9 relative, far under a float32 ulp),
and :math:`2^n` is assembled directly as IEEE-754 bits.

The whole float32 range, branch-free: the argument is clamped to ``[-104, 89]`` (beyond those,
:math:`e^t` is below half the smallest subnormal, or above the largest float32, so the clamp
changes nothing), which puts :math:`n` in ``[-150, 128]``. A float32 power of two covers only
``[-126, 127]``, so the two ends borrow from the polynomial's value, exactly: for
:math:`n < -126` the result is :math:`(e^r 2^{-24})\,2^{n+24}`, for :math:`n = 128` it is
:math:`(2 e^r)\,2^{127}` -- selects, no branch. The last product is the one rounding, so the
result underflows gradually through the subnormals to ``0`` (from ``t < -103.97``) and
overflows to ``inf`` exactly when :math:`e^t` passes float32's max (``t > 88.72``), as
``np.exp`` does; ``exp(-inf) = 0``, ``exp(inf) = inf``, NaN stays NaN. (It must be one
product: kernels compiled with ``reassoc`` may regroup ``(a s) s`` as ``a (s s)``, and
``s s = 2^-150`` rounds to 0.) An earlier version clamped to ``[-87, 88]``: ``exp(1000)`` was
``1.7e38``, and GELU's ``x * sigmoid(2u)`` at ``x = -3e38`` came out as ``-1.8``.

float64 arrays take ``math.exp`` element by element: exactness matters more than speed there
(gradient checks and 1e-10 parity run in float64).

``bits`` is caller-provided int32 scratch of ``a``'s length (unused for float64), so kernels that
call this per row allocate it once. ``exp_nonpos_inplace(a, bits)`` is the same for arguments
``<= 0`` -- all the kernels here need (``x - max``, ``-|x|``) -- without the overflow end.

``tanh_into(x, out, e, bits)`` builds tanh on the same reduction, as
:math:`\tanh|x| = -u/(2 + u)` with :math:`u = \operatorname{expm1}(-2|x|) \in [-1, 0]` and
:math:`\operatorname{expm1}(t) = 2^n\operatorname{expm1}(r) + (2^n - 1)`, ``expm1(r)`` a polynomial
accurate relative to its (small) value: no overflow anywhere, no cancellation near 0
(``(1 - e)/(1 + e)`` with ``e = exp(-2|x|)`` made ``tanh(1e-30)`` exactly 0), within 2.5 float32
ulps everywhere, subnormals included, and exactly +-1 from |x| = 9.01. float64 takes
``math.tanh``.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import dispatch

LN2_HI = 0.693145751953125          # ln 2 to 16 bits: n * LN2_HI is exact for |n| < 2^8
LN2_LO = 1.428606765330187e-06      # ln 2 - LN2_HI
INV_LN2 = 1.4426950408889634
#: the primitives here are compiled with ``contract`` (fused multiply-adds: the polynomials cost
#: half as much, and are as accurate or more) whatever their caller's flags; never ``reassoc``
#: (it could regroup Cody & Waite's ``t - f LN2_HI - f LN2_LO``)
CONTRACT = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}
# e^r on [-ln2/2, ln2/2], degree 6, c0 = 1: Lawson-iterated weighted least squares on Chebyshev
# nodes; 2e-9 relative in exact arithmetic, 9.6e-8 evaluated in float32 (Horner's rounding)
EXP_P = (1.0, 1.000000032165149, 0.49999994209026827, 0.16666431262307246, 0.04166800203848487,
         0.008374155331783406, 0.0013843653422001953)


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _exp_reduced(t):
    # t: float32 in [-104, 89] (or NaN) -> (e^r, n): e^t = e^r 2^n, n = round(t / ln 2)
    f = np.floor(t * np.float32(INV_LN2) + np.float32(0.5))   # float32 (math.floor: int64)
    r = t - f * np.float32(LN2_HI) - f * np.float32(LN2_LO)
    p = np.float32(EXP_P[6])                         # Horner: e^r, minimax degree 6
    p = p * r + np.float32(EXP_P[5])
    p = p * r + np.float32(EXP_P[4])
    p = p * r + np.float32(EXP_P[3])
    p = p * r + np.float32(EXP_P[2])
    p = p * r + np.float32(EXP_P[1])
    p = p * r + np.float32(1.0)
    return p, np.int32(f)


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _exp_parts(t):
    # t: float32 -> (p c, n): e^t = (p c) 2^n with 2^n a normal float32 power of two, p c exact
    p, n = _exp_reduced(min(max(t, np.float32(-104.0)), np.float32(89.0)))   # NaN stays NaN
    lo = n < np.int32(-126)                          # 2^n subnormal: p 2^-24 2^(n + 24)
    hi = n > np.int32(127)                           # 2^n = 2^128: (2 p) 2^127
    pc = p * (np.float32(2.0 ** -24) if lo else (np.float32(2.0) if hi else np.float32(1.0)))
    n += np.int32(24) if lo else (np.int32(-1) if hi else np.int32(0))
    # 2^n as float32 bits; +0.0 below -104, where e^t rounds to 0 (_exp_parts_nonpos says why)
    return pc, (n + np.int32(127)) << np.int32(23) if not t < np.float32(-104.0) else np.int32(0)


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _exp_parts_nonpos(t):
    # as _exp_parts for t <= 0 (a positive t is taken as 0): no overflow end to handle
    p, n = _exp_reduced(min(max(t, np.float32(-104.0)), np.float32(0.0)))    # NaN stays NaN
    lo = n < np.int32(-126)
    pc = p * (np.float32(2.0 ** -24) if lo else np.float32(1.0))
    n += np.int32(24) if lo else np.int32(0)
    # below -104 e^t rounds to 0 (under half the smallest subnormal): scale by +0.0, not by a
    # power of two whose product underflows -- an underflowing product costs a microcode assist
    # (~100 cycles) on x86, and a masked score (-inf) is exactly this case
    return pc, (n + np.int32(127)) << np.int32(23) if not t < np.float32(-104.0) else np.int32(0)


def exp_inplace(a, bits):
    """a: (n,) float array, overwritten with exp(a); bits: (n,) int32 scratch."""
    np.exp(a, out=a)


@overload(exp_inplace, jit_options=CONTRACT)
def _exp_inplace_overload(a, bits):
    if a.dtype == types.float32:
        def impl(a, bits):
            for i in range(a.shape[0]):
                a[i], bits[i] = _exp_parts(a[i])
            scale = bits.view(np.float32)
            for i in range(a.shape[0]):
                a[i] *= scale[i]                             # the one rounding (and over/underflow)
        return impl

    def impl(a, bits):
        for i in range(a.shape[0]):
            a[i] = math.exp(a[i])
    return impl


def exp_nonpos_inplace(a, bits):
    """a: (n,) float array of non-positive numbers (or -inf, NaN), overwritten with exp(a);
    bits: (n,) int32 scratch. What every kernel here needs (``x - max``, ``-|x|``): 11% less
    work than :func:`exp_inplace`. A positive entry would be taken as 0 (exp 1), never garbage
    bigger than 1."""
    np.exp(np.minimum(a, 0, out=a), out=a)


@overload(exp_nonpos_inplace, jit_options=CONTRACT)
def _exp_nonpos_inplace_overload(a, bits):
    if a.dtype == types.float32:
        def impl(a, bits):
            for i in range(a.shape[0]):
                a[i], bits[i] = _exp_parts_nonpos(a[i])
            scale = bits.view(np.float32)
            for i in range(a.shape[0]):
                a[i] *= scale[i]                             # the one rounding (and underflow)
        return impl

    def impl(a, bits):
        for i in range(a.shape[0]):
            a[i] = math.exp(min(a[i], 0.0))
    return impl


# expm1(r) = r + r^2 Q(r) on [-ln2/2, ln2/2], Q of degree 4 with Q(0) = 1/2: Lawson-iterated
# weighted least squares (1.4e-8 relative in exact arithmetic, 9e-8 evaluated in float32)
EXPM1_Q = (0.5, 0.1666654875508265, 0.041666854124998993, 0.00836603430043061,
           0.0013898223097312708)


def tanh_into(x, out, e, bits):
    """x, out, e: (n,) -> out = tanh(x); e (float, x's dtype), bits (int32): scratch."""
    np.tanh(x, out=out)


@overload(tanh_into, jit_options=CONTRACT)
def _tanh_into_overload(x, out, e, bits):
    if x.dtype == types.float32:
        def impl(x, out, e, bits):
            n_ = x.shape[0]
            for j in range(n_):
                t = max(np.float32(-2.0) * abs(x[j]), np.float32(-20.0))   # tanh(10) = 1: n >= -29
                f = np.floor(t * np.float32(INV_LN2) + np.float32(0.5))
                r = t - f * np.float32(LN2_HI) - f * np.float32(LN2_LO)
                q = np.float32(EXPM1_Q[4])
                q = q * r + np.float32(EXPM1_Q[3])
                q = q * r + np.float32(EXPM1_Q[2])
                q = q * r + np.float32(EXPM1_Q[1])
                q = q * r + np.float32(EXPM1_Q[0])
                e[j] = r + (r * r) * q                      # expm1(r), relative accuracy
                bits[j] = (np.int32(f) + np.int32(127)) << np.int32(23)    # 2^n, normal
            scale = bits.view(np.float32)
            for j in range(n_):
                s = scale[j]
                u = e[j] * s + (s - np.float32(1.0))         # expm1(t) = 2^n expm1(r) + 2^n - 1
                out[j] = math.copysign(-u / (np.float32(2.0) + u), x[j])   # tanh|x|, x's sign
        return impl

    def impl(x, out, e, bits):
        for j in range(x.shape[0]):
            out[j] = math.tanh(x[j])
    return impl


def exp_numpy(a):
    """a: (n,) -> exp(a) (the twin of :func:`exp_numba`)."""
    return np.exp(a)


@njit(cache=True, error_model="numpy", nogil=True)
def exp_numba(a):
    # a: (n,) -> exp(a): the in-place primitive wrapped as a kernel (for tests and benchmarks)
    out = a.copy()
    exp_inplace(out, np.empty(a.shape[0], np.int32))
    return out


exp = dispatch(exp_numba, exp_numpy)


def tanh_numpy(a):
    """a: (n,) -> tanh(a) (the twin of :func:`tanh_numba`)."""
    return np.tanh(a)


@njit(cache=True, error_model="numpy", nogil=True)
def tanh_numba(a):
    # a: (n,) -> tanh(a): ``tanh_into`` wrapped as a kernel (for tests and benchmarks)
    out = np.empty_like(a)
    tanh_into(a, out, np.empty_like(a), np.empty(a.shape[0], np.int32))
    return out


tanh = dispatch(tanh_numba, tanh_numpy)
