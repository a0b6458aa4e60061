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

Both twins compute exactly that, in that order, so they agree bit for bit. They read the
codes *interleaved* (:func:`interleave`: each row's blocks transposed, so entry ``j`` of every
block is contiguous), which lets the compiler vectorise over blocks; ``QuantizedLinear`` keeps
its weights so and converts at ``state_dict`` (files hold llama.cpp's layout). The weights' scales
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


@njit(cache=True, error_model="numpy", nogil=True)
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


def interleave(q, rows_per_block):
    """(N, C) llama.cpp block layout -> the products' layout, same shape: each row's blocks of
    ``rows_per_block`` entries (32 int8 for Q8_0; 16 bytes for Q4_0) transposed, so that entry
    ``j`` of every block sits together: ``out[n, j * nb + b] = q[n, b * R + j]``."""
    N, C = q.shape
    R = rows_per_block
    return np.ascontiguousarray(q.reshape(N, C // R, R).transpose(0, 2, 1)).reshape(N, C)


def deinterleave(q, rows_per_block):
    """The inverse of :func:`interleave`: the products' layout -> llama.cpp's."""
    N, C = q.shape
    R = rows_per_block
    return np.ascontiguousarray(q.reshape(N, R, C // R).transpose(0, 2, 1)).reshape(N, C)


def _blocks_matmul_numpy(xd, xq, wd, w, out, lo, hi):
    """w (n, 32, nb) int8 values of rows lo:hi (interleaved); the block sums exact in int32,
    then combined in block order."""
    M, K = xq.shape
    nb = K // QK
    wd = wd.view(np.float16).astype(np.float32)                           # (N, nb)
    wb = w.astype(np.int32)                                               # (n, 32, nb)
    for r in range(0, M, _CHUNK):
        xb = xq[r:r + _CHUNK].reshape(-1, QK, nb).astype(np.int32)        # (m, 32, nb)
        sums = np.einsum("mjb,njb->mnb", xb, wb)                          # (m, n, nb) exact
        acc = np.zeros(sums.shape[:2], np.float32)                        # (m, n)
        for b in range(nb):                                               # in block order
            acc += sums[:, :, b].astype(np.float32) * (xd[r:r + _CHUNK, b][:, None] *
                                                       wd[lo:hi, b][None, :])
        out[r:r + _CHUNK, lo:hi] = acc
    return out


def q8_0_matmul_numpy(xd, xq, wd, wq, out, lo, hi):
    """xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16 (float16 bits), wq (N, K) int8, xq and
    wq interleaved -> out[:, lo:hi] (M, N)."""
    nb = xq.shape[1] // QK
    return _blocks_matmul_numpy(xd, xq, wd, wq[lo:hi].reshape(hi - lo, QK, nb), out, lo, hi)


def q4_0_matmul_numpy(xd, xq, wd, wq, out, lo, hi):
    """As :func:`q8_0_matmul_numpy` with wq (N, K/2) uint8 packed Q4_0, interleaved."""
    packed = wq[lo:hi].reshape(hi - lo, QK // 2, xq.shape[1] // QK)       # (n, 16, nb)
    lo4 = (packed & np.uint8(15)).astype(np.int8) - np.int8(8)            # entries j
    hi4 = (packed >> np.uint8(4)).astype(np.int8) - np.int8(8)            # entries j + 16
    return _blocks_matmul_numpy(xd, xq, wd, np.concatenate([lo4, hi4], axis=1), out, lo, hi)


@njit(cache=True, error_model="numpy", nogil=True)
def _halves(h, bits):
    # h (n,) uint16 float16 bits -> (n,) float32 values, exactly, through bits (n,) uint32
    # (Numba has no float16 type). First pass, branch-free so that it vectorises: the sign
    # moves to bit 31, the exponent is rebiased (15 -> 127: + 112 << 23), the mantissa shifts
    # by 13; exponent 31 (inf, NaN) keeps an all-ones exponent. Second pass: zeros and
    # subnormals (exponent 0) are f 2^-24, computed (no reliance on float32 denormals).
    out = bits.view(np.float32)
    for i in range(h.shape[0]):
        v = np.uint32(h[i])
        b = ((v & np.uint32(0x7FFF)) << np.uint32(13)) + np.uint32(112 << 23)
        if (v & np.uint32(0x7C00)) == np.uint32(0x7C00):
            b = ((v & np.uint32(0x3FF)) << np.uint32(13)) | np.uint32(0x7F800000)
        bits[i] = b | ((v & np.uint32(0x8000)) << np.uint32(16))
    for i in range(h.shape[0]):
        v = np.uint32(h[i])
        if (v & np.uint32(0x7C00)) == 0:
            mag = np.float32(v & np.uint32(0x3FF)) * np.float32(2.0 ** -24)
            out[i] = -mag if v & np.uint32(0x8000) else mag
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _row_scales(wd, lo, hi):
    # wd (N, nb) uint16 -> (hi - lo, nb) float32: the scales of rows lo:hi, decoded at once
    nb = wd.shape[1]
    return _halves(wd[lo:hi].reshape(-1), np.empty((hi - lo) * nb, np.uint32)).reshape(
        hi - lo, nb)


@njit(cache=True, error_model="numpy", nogil=True)
def _combine(s, xd, wd, out, m, n):
    # out[m, n] = sum_b float(s[b]) * (xd[m, b] * wd[b]), in block order (as the twin)
    acc = np.float32(0)
    for b in range(s.shape[0]):
        acc += np.float32(s[b]) * (xd[m, b] * wd[b])
    out[m, n] = acc


# Why the interleaved layout: LLVM does not vectorise a sum of 32 products (tried: int32 and
# int16 sums, float32 with reassociation, per-lane accumulators, a runtime trip count), so a
# row in llama.cpp's layout costs a horizontal sum per block. Interleaved, the inner loop runs
# over the blocks with one int32 sum each -- a plain vector loop -- and the 32 (or 16) entries
# of a block are its outer loop. llama.cpp repacks its weights for its CPU kernels likewise.
@njit(cache=True, error_model="numpy", nogil=True)
def q8_0_matmul_numba(xd, xq, wd, wq, out, lo, hi):
    # xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16, wq (N, K) int8 (xq, wq interleaved)
    # -> out (M, N), columns lo:hi; rows go four at a time, sharing the loads of x
    M, K = xq.shape
    nb = K // QK
    s = np.empty((4, nb), np.int32)                  # the block sums of the four rows
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    d = _row_scales(wd, lo, hi)                                          # (hi - lo, nb)
    for n in range(lo, hi, 4):
        last = min(n + 4, hi) - 1                    # past the end: repeat the last row
        w0, w1, w2, w3 = wq[n], wq[min(n + 1, last)], wq[min(n + 2, last)], wq[min(n + 3, last)]
        for m in range(M):
            x = xq[m]
            s[:] = 0
            for j in range(QK):                      # entry j of every block
                o = j * nb
                for b in range(nb):
                    xv = np.int32(x[o + b])
                    s0[b] += xv * np.int32(w0[o + b])
                    s1[b] += xv * np.int32(w1[o + b])
                    s2[b] += xv * np.int32(w2[o + b])
                    s3[b] += xv * np.int32(w3[o + b])
            for r in range(last + 1 - n):
                _combine(s[r], xd, d[n + r - lo], out, m, n + r)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def q4_0_matmul_numba(xd, xq, wd, wq, out, lo, hi):
    # xd (M, nb) f32, xq (M, K) int8, wd (N, nb) uint16, wq (N, K/2) uint8 (xq, wq interleaved)
    # -> out (M, N), columns lo:hi. Byte i of a block holds entries i (low) and i + 16 (high).
    M, K = xq.shape
    nb, half = K // QK, QK // 2
    s = np.empty(nb, np.int32)
    scales = _row_scales(wd, lo, hi)                                     # (hi - lo, nb)
    for n in range(lo, hi):
        w = wq[n]
        d = scales[n - lo]
        for m in range(M):
            x = xq[m]
            for b in range(nb):
                s[b] = 0
            for i in range(half):
                o, o2 = i * nb, (i + half) * nb
                for b in range(nb):
                    byte = w[o + b]
                    s[b] += (np.int32(x[o + b]) * (np.int32(byte & np.uint8(15)) - 8) +
                             np.int32(x[o2 + b]) * (np.int32(byte >> np.uint8(4)) - 8))
            _combine(s, xd, d, out, m, n)
    return out


# ------------------------------------------------------------------------------------------------
# int8 weights, one scale per output row
# ------------------------------------------------------------------------------------------------
def int8_matmul_numpy(x, wq, scale, out, lo, hi):
    """x (M, K) float, wq (N, K) int8, scale (N,) float -> out[:, lo:hi] = x @ (wq * scale)^T."""
    out[:, lo:hi] = (x @ wq[lo:hi].T.astype(x.dtype)) * scale[lo:hi]
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
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
