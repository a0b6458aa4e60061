"""Weight quantization: llama.cpp's Q8_0 and Q4_0 blocks, and the products that read them.

A block is 32 consecutive weights of a row with one scale ``d`` (stored as float16):

* **Q8_0** ``d = absmax / 127``, ``q = roundf(x / d)`` in int8; the value is ``q d``.
* **Q4_0** ``d = m / -8`` where ``m`` is the entry of largest magnitude (its sign kept),
  ``q = min(15, trunc(x / d + 8.5))`` in 4 bits; the value is ``(q - 8) d``. Two 4-bit values
  share a byte: byte ``j`` of a block holds entry ``j`` (low nibble) and ``j + 16`` (high).

The arithmetic is ggml's reference (``quantize_row_q8_0_ref``, ``quantize_row_q4_0_ref``) in
float32: the quotient uses ``1 / d`` before ``d`` is rounded to float16, and ``roundf`` rounds
halves away from zero (computed as ``floor(a) + floor(2 (a - floor(a)))``, exact for every
float32). Where ggml's arithmetic is undefined we choose, and both twins agree: a block with a
NaN or an infinity gets ``d = NaN`` and ``q = 0`` (the product is then NaN, as a float matmul's
would be); a block so small that ``1 / d`` overflows (``|d| < 2^-128``; its float16 scale is
0 anyway) gets ``q = 0`` (Q4_0: the code 8, the value 0). The integer casts never see a NaN or
an infinity.

The products quantize the activations to Q8_0 as llama.cpp's CPU backend does and sum whole
blocks in int32 (exact: ``|sum| <= 32 * 127 * 127``), then in float32 in block order, as
ggml's reference dot product (``ggml_vec_dot_q8_0_q8_0``, scalar path) does::

    y[m, n] = sum_b  float(sum_j qx[m, b, j] * qw[n, b, j]) * (dx[m, b] * dw[n, b])

Both twins compute exactly that, in that order, so they agree bit for bit. The weights' scales
enter as their float16 bits (``uint16``), decoded exactly in the kernel. ``int8_matmul`` (one
scale per output row; no activation quantization) accumulates in the activations' float type,
and its twins agree to round-off.

Kernels never check their arguments (see ``kernels/__init__.py``): ``scratchlm.compress``
does, in Python, before it calls them.
"""

import numpy as np
from numba import njit

from . import FAST, dispatch

QK = 32                                   # weights per block (QK8_0 = QK4_0 = 32)
_CHUNK = 64                               # rows per NumPy-twin product chunk (bounds its memory)


# ------------------------------------------------------------------------------------------------
# Q8_0 quantization of rows
# ------------------------------------------------------------------------------------------------
def _roundf_numpy(v):
    """C's roundf (halves away from zero), exact in float32: floor(a) + floor(2 (a - floor a))."""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + np.floor(2 * (a - f)), v)


def _inverse_numpy(dd):
    """1 / d, and 0 where d is 0 or so small (below 2^-128) that 1 / d overflows."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / dd
    return np.where(np.isfinite(inv), inv, np.float32(0))


@njit(cache=True, nogil=True)
def _inverse(dd):
    # 1 / d, and 0 where d is 0 or so small that 1 / d overflows (as _inverse_numpy)
    inv = np.float32(1) / dd if dd != np.float32(0) else np.float32(0)
    return inv if abs(inv) < np.float32(np.inf) else np.float32(0)


def quantize_q8_0_numpy(x, d, q):
    """x (M, K) float32 -> d (M, K/32) float32 scales, q (M, K) int8; K % 32 == 0."""
    M, K = x.shape
    blocks = x.reshape(M, K // QK, QK)                                    # (M, nb, 32)
    bad = ~np.isfinite(blocks).all(axis=2)                                # (M, nb)
    safe = np.where(bad[..., None], np.float32(0), blocks)
    dd = np.abs(safe).max(axis=2) / np.float32(127)                      # (M, nb)
    inv = _inverse_numpy(dd)
    q[...] = _roundf_numpy(safe * inv[..., None]).astype(np.int8).reshape(M, K)
    d[...] = np.where(bad, np.float32(np.nan), dd)
    return d, q


@njit(cache=True, nogil=True)
def quantize_q8_0_numba(x, d, q):
    # x (M, K) float32 -> d (M, K/32) float32, q (M, K) int8
    M, K = x.shape
    zero, nan = np.float32(0), np.float32(np.nan)
    for m in range(M):
        for b in range(K // QK):
            base = b * QK
            amax = zero
            finite = True
            for j in range(QK):
                v = x[m, base + j]
                if v - v != zero:                       # NaN or +-inf
                    finite = False
                a = abs(v)
                if a > amax:
                    amax = a
            if not finite:
                d[m, b] = nan
                for j in range(QK):
                    q[m, base + j] = 0
                continue
            dd = amax / np.float32(127)
            inv = _inverse(dd)
            d[m, b] = dd
            for j in range(QK):
                v = x[m, base + j] * inv
                a = abs(v)
                f = np.floor(a)
                r = f + np.floor(np.float32(2) * (a - f))
                q[m, base + j] = np.int8(r) if v >= zero else np.int8(-r)
    return d, q


# ------------------------------------------------------------------------------------------------
# Q4_0 quantization of rows
# ------------------------------------------------------------------------------------------------
def quantize_q4_0_numpy(x, d, q):
    """x (M, K) float32 -> d (M, K/32) float32 scales, q (M, K/2) uint8 packed nibbles."""
    M, K = x.shape
    blocks = x.reshape(M, K // QK, QK)                                    # (M, nb, 32)
    bad = ~np.isfinite(blocks).all(axis=2)                                # (M, nb)
    safe = np.where(bad[..., None], np.float32(0), blocks)
    imax = np.abs(safe).argmax(axis=2)[..., None]                         # (M, nb, 1): the first
    mx = np.take_along_axis(safe, imax, axis=2)[..., 0]                   # largest magnitude
    mx = np.where(mx == 0, np.float32(0), mx)      # ggml's max starts at +0: an all-zero block
    dd = mx / np.float32(-8)                       # (even of -0.0s) gets d = -0.0   # (M, nb)
    inv = _inverse_numpy(dd)
    qs = np.minimum(np.trunc(safe * inv[..., None] + np.float32(8.5)), 15).astype(np.uint8)
    qs = np.where(bad[..., None], np.uint8(0), qs)                        # (M, nb, 32)
    q[...] = (qs[..., :QK // 2] | (qs[..., QK // 2:] << np.uint8(4))).reshape(M, K // 2)
    d[...] = np.where(bad, np.float32(np.nan), dd)
    return d, q


@njit(cache=True, nogil=True)
def quantize_q4_0_numba(x, d, q):
    # x (M, K) float32 -> d (M, K/32) float32, q (M, K/2) uint8
    M, K = x.shape
    zero, nan, half = np.float32(0), np.float32(np.nan), QK // 2
    for m in range(M):
        for b in range(K // QK):
            base = b * QK
            amax = zero                                 # as ggml: max starts at +0, so an
            mx = zero                                   # all-zero block gets d = 0 / -8 = -0
            finite = True
            for j in range(QK):
                v = x[m, base + j]
                if v - v != zero:
                    finite = False
                if abs(v) > amax:                       # strict: the first largest, as argmax
                    amax = abs(v)
                    mx = v
            if not finite:
                d[m, b] = nan
                for j in range(half):
                    q[m, b * half + j] = 0
                continue
            dd = mx / np.float32(-8)
            inv = _inverse(dd)
            d[m, b] = dd
            for j in range(half):
                lo = min(np.float32(15), np.trunc(x[m, base + j] * inv + np.float32(8.5)))
                hi = min(np.float32(15), np.trunc(x[m, base + j + half] * inv + np.float32(8.5)))
                q[m, b * half + j] = np.uint8(np.uint8(lo) | (np.uint8(hi) << np.uint8(4)))
    return d, q


# ------------------------------------------------------------------------------------------------
# products with Q8_0 / Q4_0 weights (activations quantized to Q8_0)
# ------------------------------------------------------------------------------------------------
def _q4_0_values(q):
    """q (r, K/2) uint8 packed Q4_0 -> (r, K) int8 values in [-8, 7], in entry order."""
    packed = q.reshape(q.shape[0], -1, QK // 2)                           # (r, nb, 16)
    lo = (packed & np.uint8(15)).astype(np.int8) - np.int8(8)             # entries j
    hi = (packed >> np.uint8(4)).astype(np.int8) - np.int8(8)             # entries j + 16
    return np.concatenate([lo, hi], axis=2).reshape(q.shape[0], -1)


def _blocks_matmul_numpy(xd, xq, wd, w, out, lo, hi):
    """w (n, K) int8 values of columns lo:hi; the block sums exact in int32, then block order."""
    M, K = xq.shape
    wd = wd.view(np.float16).astype(np.float32)                           # (N, nb)
    wb = w.reshape(w.shape[0], K // QK, QK).astype(np.int32)              # (n, nb, 32)
    for r in range(0, M, _CHUNK):
        xb = xq[r:r + _CHUNK].reshape(-1, K // QK, QK).astype(np.int32)   # (m, nb, 32)
        sums = np.einsum("mbj,nbj->mnb", xb, wb)                          # (m, n, nb) exact
        acc = np.zeros(sums.shape[:2], np.float32)                        # (m, n)
        for b in range(sums.shape[2]):                                    # in block order
            acc += sums[:, :, b].astype(np.float32) * (xd[r:r + _CHUNK, b][:, None] *
                                                       wd[lo:hi, b][None, :])
        out[r:r + _CHUNK, lo:hi] = acc
    return out


def q8_0_matmul_numpy(xd, xq, wd, wq, out, lo, hi):
    """xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16 (float16 bits), wq (N, K) int8 ->
    out[:, lo:hi] (M, N)."""
    return _blocks_matmul_numpy(xd, xq, wd, wq[lo:hi], out, lo, hi)


def q4_0_matmul_numpy(xd, xq, wd, wq, out, lo, hi):
    """As :func:`q8_0_matmul_numpy` with wq (N, K/2) uint8 packed Q4_0."""
    return _blocks_matmul_numpy(xd, xq, wd, _q4_0_values(wq[lo:hi]), out, lo, hi)


@njit(cache=True, nogil=True)
def _halves(h, bits):
    # h (nb,) uint16 float16 bits -> (nb,) float32 values, exactly, through bits (nb,) uint32
    # (Numba has no float16 type): the sign moves to bit 31, the exponent is rebiased (15 ->
    # 127), the mantissa shifts by 13; zeros and subnormals (exponent 0) are f 2^-24, computed.
    out = bits.view(np.float32)
    for i in range(h.shape[0]):
        v = np.uint32(h[i])
        sign = (v & np.uint32(0x8000)) << np.uint32(16)
        e, f = (v >> np.uint32(10)) & np.uint32(31), v & np.uint32(1023)
        if e == 0:
            bits[i] = sign
            mag = np.float32(f) * np.float32(2.0 ** -24)
            out[i] = -mag if sign else mag
        elif e == 31:
            bits[i] = sign | np.uint32(0x7F800000) | (f << np.uint32(13))
        else:
            bits[i] = sign | ((e + np.uint32(112)) << np.uint32(23)) | (f << np.uint32(13))
    return out


@njit(cache=True, nogil=True)
def _blocks_matmul_numba(xd, xq, wd, w, out, n, prod):
    # out[:, n] from w (K,) int8 weight values of row n and wd (nb,) f32 its scales; prod (K,)
    # int16 scratch. The products go through the int16 buffer first (|x w| <= 127 * 127 fits):
    # LLVM vectorises that loop. It does not vectorise the sums of 32 (tried: int32, float32
    # with reassociation, per-lane accumulators, rows interleaved by 16), so they stay plain.
    M, K = xq.shape
    for m in range(M):
        for k in range(K):
            prod[k] = np.int16(xq[m, k]) * np.int16(w[k])
        acc = np.float32(0)
        for b in range(K // QK):
            blk = prod[b * QK:(b + 1) * QK]
            s = np.int32(0)
            for j in range(QK):
                s += np.int32(blk[j])
            acc += np.float32(s) * (xd[m, b] * wd[b])
        out[m, n] = acc


@njit(cache=True, nogil=True)
def q8_0_matmul_numba(xd, xq, wd, wq, out, lo, hi):
    # xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16, wq (N, K) int8 -> out (M, N), lo:hi
    K = xq.shape[1]
    prod = np.empty(K, np.int16)
    bits = np.empty(K // QK, np.uint32)
    for n in range(lo, hi):
        _blocks_matmul_numba(xd, xq, _halves(wd[n], bits), wq[n], out, n, prod)
    return out


@njit(cache=True, nogil=True)
def q4_0_matmul_numba(xd, xq, wd, wq, out, lo, hi):
    # xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16, wq (N, K/2) uint8 -> out (M, N), lo:hi
    K = xq.shape[1]
    half = QK // 2
    prod = np.empty(K, np.int16)
    bits = np.empty(K // QK, np.uint32)
    w = np.empty(K, np.int8)                                 # one row of weights, unpacked
    for n in range(lo, hi):
        for b in range(K // QK):
            for j in range(half):
                byte = wq[n, b * half + j]
                w[b * QK + j] = np.int8(byte & np.uint8(15)) - np.int8(8)
                w[b * QK + half + j] = np.int8(byte >> np.uint8(4)) - np.int8(8)
        _blocks_matmul_numba(xd, xq, _halves(wd[n], bits), w, out, n, prod)
    return out


# ------------------------------------------------------------------------------------------------
# int8 weights, one scale per output row
# ------------------------------------------------------------------------------------------------
def int8_matmul_numpy(x, wq, scale, out, lo, hi):
    """x (M, K) float, wq (N, K) int8, scale (N,) float -> out[:, lo:hi] = x @ (wq * scale)^T."""
    out[:, lo:hi] = (x @ wq[lo:hi].T.astype(x.dtype)) * scale[lo:hi]
    return out


@njit(cache=True, nogil=True, fastmath=FAST)
def int8_matmul_numba(x, wq, scale, out, lo, hi):
    # x (M, K) float, wq (N, K) int8, scale (N,) float -> out (M, N), columns lo:hi
    M, K = x.shape
    for n in range(lo, hi):
        for m in range(M):
            acc = x.dtype.type(0)
            for k in range(K):
                acc += x[m, k] * x.dtype.type(wq[n, k])
            out[m, n] = acc * scale[n]
    return out


quantize_q8_0 = dispatch(quantize_q8_0_numba, quantize_q8_0_numpy)
quantize_q4_0 = dispatch(quantize_q4_0_numba, quantize_q4_0_numpy)
q8_0_matmul = dispatch(q8_0_matmul_numba, q8_0_matmul_numpy)
q4_0_matmul = dispatch(q4_0_matmul_numba, q4_0_matmul_numpy)
int8_matmul = dispatch(int8_matmul_numba, int8_matmul_numpy)
