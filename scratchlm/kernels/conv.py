r"""Convolution and pooling: direct convolution loops, max and average pooling.

Shapes: N batch, C input channels, O output channels, G groups (``Cg = C/G`` input and
``Og = O/G`` output channels per group), kernel ``kH x kW``, stride ``sH, sW``, dilation
``dH, dW``, output ``Ho x Wo``. The convolution kernels take the input **already zero-padded**
(``xp``, ``(N, C, Hp, Wp)``; the caller pads and crops), so their loops never test a bound.
The pooling kernels take the unpadded input and clip each window to it, as torch does.

* **im2col** convolution is not here: it is a matrix product whose operand is *described* by
  offsets into the padded input, computed by :func:`scratchlm.kernels.gemm.gemm` without a column
  matrix (see ``scratchlm.functional.conv``).
* **direct** convolution: the same sum as explicit loops, no column matrix. With unit stride
  each (channel, tap) pair is one contiguous multiply-add run over a whole "full-width" plane
  (output rows computed ``Wp`` wide; see the forward kernel), so the loops vectorise; strided
  convolutions gather each input row once per tap and reuse it for every output channel.
  A 1-D convolution runs through the 2-D kernels with ``H = kH = 1``.
* **max pool** returns the output and, per output, the flat index ``h*W + w`` of the maximum in
  its input plane (torch's ``return_indices`` convention). Ties go to the first maximum in scan
  order (row by row), as in torch's CPU kernel; the backward adds each ``dy`` at its index.
* **max pool** may dilate its window (tap ``i`` reads row ``oh*sH - pH + i*dH``); taps outside
  the input are skipped (``-inf`` padding), and windows wholly inside skip the clipping.
* **avg pool** divides each window sum by a divisor the caller computes per output
  (``div``, ``(Ho, Wo)``): torch's ``count_include_pad``, ``ceil_mode`` and ``divisor_override``
  rules all become a divisor.

Kernels validate nothing (Numba does no bounds checking): ``scratchlm.functional.conv`` checks
every shape, stride, padding and index in Python first, and passes C-contiguous arrays (the
max-pool kernels read them flat; another layout fails to compile). The kernels are serial (no
``prange``); the caller splits a batch over threads, and they release the GIL (``nogil``).

A note on speed: Numba wraps negative indices, and for a signed index whose sign LLVM cannot
prove (``xp[n, c, h, j*dW + ow]``) the test stays in the inner loop and blocks vectorisation
(measured 4-8x slower). Two ways around it are used here: 1-D row views that start at 0
(``src = xp[n, c, h, j*dW:]``, then ``src[ow]``), made outside the innermost loops because each
view costs a reference count; and, in max pooling, flat arrays indexed by unsigned offsets
(``_u``, ``np.uint64``), which have no sign to test and need no views (the GEMM in ``gemm.py``
packs the same way; row views were measurably slower for an im2col copy: the timings are in
docs/benchmarks.md).
"""

import math

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view

from . import FAST, dispatch


_u = np.uint64   # an unsigned index: Numba skips the negative-index wrap test (see above)


# ------------------------------------------------------------------------------------------------
# direct convolution, 2-D (1-D runs with H = kH = 1)
# ------------------------------------------------------------------------------------------------
def _windows2d(xp, kH, kW, sH, sW, dH, dW):
    """(N, C, Hp, Wp) -> a strided view (N, C, Ho, Wo, kH, kW) of every (dilated) receptive field."""
    win = sliding_window_view(xp, (dH * (kH - 1) + 1, dW * (kW - 1) + 1), axis=(2, 3))
    return win[:, :, ::sH, ::sW, ::dH, ::dW]


def conv2d_direct_forward_numpy(xp, w, b, groups, sH, sW, dH, dW, Ho, Wo, out=None):
    """xp: (N, C, Hp, Wp) zero-padded, w: (O, C/G, kH, kW), b: (O,) -> y: (N, O, Ho, Wo),
    written into ``out`` when given (a C-contiguous array of that shape: a thread's samples of
    the whole batch's output).

    A sliding-window view contracted with the weights by einsum, group by group."""
    N, C = xp.shape[:2]
    O, Cg, kH, kW = w.shape
    win = _windows2d(xp, kH, kW, sH, sW, dH, dW)                          # (N, C, Ho, Wo, kH, kW)
    win = win.reshape(N, groups, Cg, Ho, Wo, kH, kW)                      # split C into (G, Cg)
    wg = w.reshape(groups, O // groups, Cg, kH, kW)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    y = (y.reshape(N, O, Ho, Wo) + b[:, None, None]).astype(xp.dtype, copy=False)
    if out is None:
        return y
    out[...] = y
    return out


#: output channels accumulated together by the direct forward (each input run read once for all)
_OB = 4


@njit(cache=True, error_model="numpy", nogil=True)
def conv2d_direct_forward_numba(xp, w, b, groups, sH, sW, dH, dW, Ho, Wo, out=None):
    # xp: (N, C, Hp, Wp) zero-padded, w: (O, C/G, kH, kW), b: (O,) -> y: (N, O, Ho, Wo) (out)
    N, C, Hp, Wp = xp.shape
    O, Cg, kH, kW = w.shape
    Og = O // groups
    y = np.empty((N, O, Ho, Wo), dtype=xp.dtype) if out is None else out
    if sH == 1 and sW == 1:
        # Full-width planes: output (oh, ow) reads xp plane index (oh + i*dH)*Wp + ow + j*dW, so
        # with output rows Wp wide (the last Wp - Wo columns are junk, never copied out) each
        # (channel, tap) is ONE contiguous run: acc[t] += w * xplane[off + t], t < span.
        span = (Ho - 1) * Wp + Wo
        acc = np.empty((_OB, Ho * Wp), dtype=xp.dtype)
        xf = xp.reshape(N, C, Hp * Wp)
        for n in range(N):
            for g in range(groups):
                c0 = g * Cg
                for o0 in range(g * Og, (g + 1) * Og, _OB):
                    nb = min(_OB, (g + 1) * Og - o0)
                    for k in range(nb):
                        a = acc[k]
                        for t in range(span):
                            a[t] = b[o0 + k]
                    for c in range(Cg):
                        for i in range(kH):
                            for j in range(kW):
                                xs = xf[n, c0 + c, i * dH * Wp + j * dW:]
                                for k in range(nb):
                                    wv = w[o0 + k, c, i, j]
                                    a = acc[k]
                                    for t in range(span):
                                        a[t] += wv * xs[t]
                    for k in range(nb):
                        for oh in range(Ho):
                            src = acc[k, oh * Wp:]
                            dst = y[n, o0 + k, oh]
                            for ow in range(Wo):
                                dst[ow] = src[ow]
    else:
        # strided: per output row and tap, gather the input row once into a contiguous buffer
        # and add it to the output rows of every channel of the group
        row = np.empty(Wo, dtype=xp.dtype)
        for n in range(N):
            for oh in range(Ho):
                for o in range(O):
                    for ow in range(Wo):
                        y[n, o, oh, ow] = b[o]
                for c in range(C):
                    g = c // Cg
                    for i in range(kH):
                        for j in range(kW):
                            src = xp[n, c, oh * sH + i * dH, j * dW:]
                            for ow in range(Wo):
                                row[ow] = src[ow * sW]
                            for o in range(g * Og, (g + 1) * Og):   # no views made in this loop
                                wv = w[o, c - g * Cg, i, j]         # (each costs a refcount)
                                for ow in range(Wo):
                                    y[n, o, oh, ow] += wv * row[ow]
    return y


def conv2d_direct_backward_input_numpy(dy, w, groups, Hp, Wp, sH, sW, dH, dW):
    """dy: (N, O, Ho, Wo), w: (O, C/G, kH, kW) -> dxp: (N, C, Hp, Wp) (gradient of the padded input).

    Per kernel tap (i, j): every output pixel sends ``w[o, c, i, j] * dy`` back to the input pixel
    that tap read, a strided slice of ``dxp``."""
    N, O, Ho, Wo = dy.shape
    _, Cg, kH, kW = w.shape
    Og = O // groups
    dyg = dy.reshape(N, groups, Og, Ho, Wo)
    wg = w.reshape(groups, Og, Cg, kH, kW)
    dxp = np.zeros((N, groups, Cg, Hp, Wp), dtype=dy.dtype)
    for i in range(kH):
        for j in range(kW):
            dxp[:, :, :, i * dH:i * dH + sH * (Ho - 1) + 1:sH, j * dW:j * dW + sW * (Wo - 1) + 1:sW] += \
                np.einsum("ngohw,goc->ngchw", dyg, wg[:, :, :, i, j])
    return dxp.reshape(N, groups * Cg, Hp, Wp)


@njit(cache=True, error_model="numpy", nogil=True)
def _widen_rows(dy, n, Wp, dyw):
    # dy[n]: (O, Ho, Wo) -> dyw: (O, Ho*Wp), rows Wp wide; columns Wo..Wp-1 stay as they are (0)
    O, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    for o in range(O):
        for oh in range(Ho):
            src = dy[n, o, oh]
            dst = dyw[o, oh * Wp:]
            for ow in range(Wo):
                dst[ow] = src[ow]


@njit(cache=True, error_model="numpy", nogil=True)
def conv2d_direct_backward_input_numba(dy, w, groups, Hp, Wp, sH, sW, dH, dW):
    # dy: (N, O, Ho, Wo), w: (O, C/G, kH, kW) -> dxp: (N, C, Hp, Wp)
    N, O, Ho, Wo = dy.shape
    Cg, kH, kW = w.shape[1], w.shape[2], w.shape[3]
    C, Og = Cg * groups, O // groups
    dxp = np.zeros((N, C, Hp, Wp), dtype=dy.dtype)
    if sH == 1 and sW == 1:
        # full-width planes (see the forward): dxplane[off + t] += w * dyw[o, t], one run per tap;
        # dy's junk columns are zero, so they add nothing
        span = (Ho - 1) * Wp + Wo
        dyw = np.zeros((O, Ho * Wp), dtype=dy.dtype)
        dxf = dxp.reshape(N, C, Hp * Wp)
        for n in range(N):
            _widen_rows(dy, n, Wp, dyw)
            for c in range(C):
                g = c // Cg
                cg = c - g * Cg
                for i in range(kH):
                    for j in range(kW):
                        dst = dxf[n, c, i * dH * Wp + j * dW:]
                        for o in range(g * Og, (g + 1) * Og):
                            wv = w[o, cg, i, j]
                            src = dyw[o]
                            for t in range(span):
                                dst[t] += wv * src[t]
    else:
        # strided: per output row and tap, sum the group's channels into a contiguous row, then
        # scatter it to the input positions that tap read
        row = np.empty(Wo, dtype=dy.dtype)
        zero = dy.dtype.type(0.0)
        for n in range(N):
            for oh in range(Ho):
                for c in range(C):
                    g = c // Cg
                    for i in range(kH):
                        for j in range(kW):
                            for ow in range(Wo):
                                row[ow] = zero
                            for o in range(g * Og, (g + 1) * Og):
                                wv = w[o, c - g * Cg, i, j]
                                for ow in range(Wo):
                                    row[ow] += wv * dy[n, o, oh, ow]
                            dst = dxp[n, c, oh * sH + i * dH, j * dW:]
                            for ow in range(Wo):
                                dst[ow * sW] += row[ow]
    return dxp


def conv2d_direct_backward_weight_numpy(dy, xp, groups, kH, kW, sH, sW, dH, dW):
    """dy: (N, O, Ho, Wo), xp: (N, C, Hp, Wp) zero-padded -> dw: (O, C/G, kH, kW).

    ``dw[o, c, i, j] = sum_{n, oh, ow} dy[n, o, oh, ow] * xp[n, c, oh*sH + i*dH, ow*sW + j*dW]``."""
    N, O, Ho, Wo = dy.shape
    C = xp.shape[1]
    Cg, Og = C // groups, O // groups
    win = _windows2d(xp, kH, kW, sH, sW, dH, dW).reshape(N, groups, Cg, Ho, Wo, kH, kW)
    dw = np.einsum("ngohw,ngchwij->gocij", dy.reshape(N, groups, Og, Ho, Wo), win, optimize=True)
    return dw.reshape(O, Cg, kH, kW).astype(dy.dtype, copy=False)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)   # vectorised dot products
def conv2d_direct_backward_weight_numba(dy, xp, groups, kH, kW, sH, sW, dH, dW):
    # dy: (N, O, Ho, Wo), xp: (N, C, Hp, Wp) zero-padded -> dw: (O, C/G, kH, kW)
    N, O, Ho, Wo = dy.shape
    C, Hp, Wp = xp.shape[1], xp.shape[2], xp.shape[3]
    Cg, Og = C // groups, O // groups
    acc = np.zeros((O, Cg, kH, kW), dtype=np.float64)     # float64 accumulators across samples
    zero = dy.dtype.type(0.0)
    if sH == 1 and sW == 1:
        # full-width planes: dw[o, c, i, j] += <dyw[o], xplane[off:off + span]>, one dot per tap
        span = (Ho - 1) * Wp + Wo
        dyw = np.zeros((O, Ho * Wp), dtype=dy.dtype)
        xf = xp.reshape(N, C, Hp * Wp)
        for n in range(N):
            _widen_rows(dy, n, Wp, dyw)
            for o in range(O):
                c0 = (o // Og) * Cg
                d = dyw[o]
                for c in range(Cg):
                    for i in range(kH):
                        for j in range(kW):
                            xs = xf[n, c0 + c, i * dH * Wp + j * dW:]
                            s = zero                       # one plane's dot product, input dtype
                            for t in range(span):
                                s += d[t] * xs[t]
                            acc[o, c, i, j] += s
    else:
        # strided: per output row and tap, gather the input row once, then one dot per channel
        row = np.empty(Wo, dtype=dy.dtype)
        for n in range(N):
            for oh in range(Ho):
                for c in range(C):
                    g = c // Cg
                    for i in range(kH):
                        for j in range(kW):
                            src = xp[n, c, oh * sH + i * dH, j * dW:]
                            for ow in range(Wo):
                                row[ow] = src[ow * sW]
                            for o in range(g * Og, (g + 1) * Og):
                                s = zero
                                for ow in range(Wo):
                                    s += dy[n, o, oh, ow] * row[ow]
                                acc[o, c - g * Cg, i, j] += s
    return acc.astype(dy.dtype)


# ------------------------------------------------------------------------------------------------
# max pooling, 2-D on (P, H, W) planes (P = N*C; 1-D runs with H = kH = 1)
# ------------------------------------------------------------------------------------------------
def _padded_windows(x, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, fill):
    """x: (P, H, W) -> (P, Ho, Wo, kH, kW) windows of x padded with ``fill``: ``pH``/``pW`` on
    the left and top, and on the right and bottom as much as the last window reaches (at least
    the padding; more with ceil_mode)."""
    P, H, W = x.shape
    bottom = max(pH, (Ho - 1) * sH + dH * (kH - 1) + 1 - H - pH)
    right = max(pW, (Wo - 1) * sW + dW * (kW - 1) + 1 - W - pW)
    xp = np.full((P, pH + H + bottom, pW + W + right), fill, dtype=x.dtype)
    xp[:, pH:pH + H, pW:pW + W] = x
    win = sliding_window_view(xp, (dH * (kH - 1) + 1, dW * (kW - 1) + 1), axis=(1, 2))
    return win[:, :(Ho - 1) * sH + 1:sH, :(Wo - 1) * sW + 1:sW, ::dH, ::dW]


def max_pool2d_forward_numpy(x, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, y=None, idx=None):
    """x: (P, H, W) -> y: (P, Ho, Wo), idx: (P, Ho, Wo) int64, the flat index h*W + w of each max;
    written into ``y`` and ``idx`` when given (a thread's planes of the whole output).

    Pads with -inf (never the max: the caller checks that every window holds an input entry),
    then ``argmax`` over each flattened window -- the first maximum in scan order."""
    P, H, W = x.shape
    win = _padded_windows(x, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, -np.inf)  # (P, Ho, Wo, kH, kW)
    flat = win.reshape(P, Ho, Wo, kH * kW)
    a = flat.argmax(axis=-1)                                                 # (P, Ho, Wo)
    y_ = np.take_along_axis(flat, a[..., None], axis=-1)[..., 0]
    h = np.arange(Ho)[:, None] * sH - pH + (a // kW) * dH                    # input row of the max
    w = np.arange(Wo)[None, :] * sW - pW + (a % kW) * dW
    y = y_ if y is None else y
    idx = np.empty(y_.shape, np.int64) if idx is None else idx
    y[...], idx[...] = y_, h * W + w
    return y, idx


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _taps_inside(start, k, d, size):
    # the taps i in [lo, hi) of a window whose tap i reads start + i*d that fall in [0, size)
    lo = (-start + d - 1) // d if start < 0 else 0
    hi = min(k, (size - 1 - start) // d + 1) if start < size else 0
    return lo, hi


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _window_max(plane, W, h0, dH, i0, i1, w0, dW, j0, j1):
    # plane: (H*W,) one flat input plane; the window's taps (i, j), i0 <= i < i1, j0 <= j < j1,
    # read row h0 + i*dH, column w0 + j*dW (all inside; at least one tap)
    # -> (max, flat index h*W + w of its first occurrence in scan order). A NaN is the max, as
    # np.argmax and torch take it (the first NaN, as np.argmax: torch's CPU kernel keeps the last)
    bi = (h0 + i0 * dH) * W + w0 + j0 * dW
    best = plane[_u(bi)]
    for i in range(i0, i1):
        for j in range(j0, j1):
            k = (h0 + i * dH) * W + w0 + j * dW
            v = plane[_u(k)]
            # v > best, or v NaN: ties keep the first in scan order, and a NaN once taken stays
            # (``&``, not ``and``: no branch, which LLVM would not turn into vector selects)
            take = (best == best) & (not v <= best)
            best = v if take else best         # selects, not branches: a random input
            bi = k if take else bi             # mispredicts half of them
    return best, bi


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _max_pool_2x2(x, y, idx):
    # x: (P, H, W) -> y, idx: (P, Ho, Wo), 2 x 2 windows at stride 2 without padding: the
    # common MaxPool2d(2). The same scan order and comparisons as _window_max (the same values
    # and indices), written out for the four taps so that LLVM vectorises along ow.
    P, Ho, Wo = y.shape
    W = x.shape[2]
    for p in range(P):
        for oh in range(Ho):
            r0, r1 = x[p, 2 * oh], x[p, 2 * oh + 1]
            yr, ir = y[p, oh], idx[p, oh]
            base = 2 * oh * W
            for ow in range(Wo):
                c = 2 * ow
                best, bi = r0[c], base + c
                v = r0[c + 1]
                take = (best == best) & (not v <= best)
                best, bi = (v if take else best), (base + c + 1 if take else bi)
                v = r1[c]
                take = (best == best) & (not v <= best)
                best, bi = (v if take else best), (base + W + c if take else bi)
                v = r1[c + 1]
                take = (best == best) & (not v <= best)
                best, bi = (v if take else best), (base + W + c + 1 if take else bi)
                yr[ow] = best
                ir[ow] = bi


@njit(cache=True, error_model="numpy", nogil=True)
def max_pool2d_forward_numba(x, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, y=None, idx=None):
    # x: (P, H, W) -> y: (P, Ho, Wo), idx: (P, Ho, Wo) int64 flat h*W + w of the max
    P, H, W = x.shape
    if y is None:
        y = np.empty((P, Ho, Wo), dtype=x.dtype)
    if idx is None:
        idx = np.empty((P, Ho, Wo), dtype=np.int64)
    if (kH == kW == sH == sW == 2 and pH == pW == 0 and dH == dW == 1 and 2 * Ho <= H
            and 2 * Wo <= W):                  # every window inside (no ceil_mode overhang)
        _max_pool_2x2(x, y, idx)
        return y, idx
    xf = x.reshape(P, H * W)
    # no padding and the last window inside the input (no ceil_mode overhang): nothing to clip
    inside = (pH == 0 and pW == 0 and (Ho - 1) * sH + (kH - 1) * dH < H
              and (Wo - 1) * sW + (kW - 1) * dW < W)
    for p in range(P):
        plane = xf[p]
        for oh in range(Ho):
            h0 = oh * sH - pH
            i0, i1 = (0, kH) if inside else _taps_inside(h0, kH, dH, H)
            for ow in range(Wo):
                w0 = ow * sW - pW
                j0, j1 = (0, kW) if inside else _taps_inside(w0, kW, dW, W)
                best, bi = _window_max(plane, W, h0, dH, i0, i1, w0, dW, j0, j1)
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi
    return y, idx


def max_pool2d_backward_numpy(dy, idx, H, W, out=None):
    """dy, idx: (P, Ho, Wo) -> dx: (P, H, W); ``dx.flat[idx] += dy`` per plane (overlaps add);
    written into ``out`` (C-contiguous) when given."""
    P = dy.shape[0]
    dx = np.zeros((P, H * W), dtype=dy.dtype)
    np.add.at(dx, (np.arange(P)[:, None], idx.reshape(P, -1)), dy.reshape(P, -1))
    if out is None:
        return dx.reshape(P, H, W)
    out[...] = dx.reshape(P, H, W)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def max_pool2d_backward_numba(dy, idx, H, W, out=None):
    # dy, idx: (P, Ho, Wo) -> dx: (P, H, W) (out, C-contiguous)
    P, Ho, Wo = dy.shape
    if out is None:
        dx = np.zeros((P, H * W), dtype=dy.dtype)
    else:
        dx = out.reshape(P, H * W)
        dx[:] = 0.0
    for p in range(P):
        for oh in range(Ho):
            for ow in range(Wo):
                dx[p, idx[p, oh, ow]] += dy[p, oh, ow]
    return dx.reshape(P, H, W)


# ------------------------------------------------------------------------------------------------
# average pooling, 2-D on (P, H, W) planes; the caller gives each window's divisor
# ------------------------------------------------------------------------------------------------
def avg_pool2d_forward_numpy(x, kH, kW, sH, sW, pH, pW, Ho, Wo, div):
    """x: (P, H, W), div: (Ho, Wo) -> y: (P, Ho, Wo) = (sum of the zero-padded window) / div.

    Extreme values: the window sums are float64 (a float32 window of values near the max cannot
    overflow them); a float64 window whose sum overflows is summed again in units of
    ``2^k >= kH kW`` and scaled back after the division, so an average of finite values is
    finite whenever it is representable (both routes)."""
    win = _padded_windows(x, kH, kW, sH, sW, pH, pW, 1, 1, Ho, Wo, 0.0)     # (P, Ho, Wo, kH, kW)
    with np.errstate(over="ignore"):                  # overflowing windows are redone below
        s = win.sum(axis=(3, 4), dtype=np.float64)
        y = s / div
        bad = np.isinf(s)
        if bad.any():
            k = 2.0 ** math.ceil(math.log2(kH * kW))
            scaled = (win * (1.0 / k)).sum(axis=(3, 4))[bad]
            y[bad] = (scaled / np.broadcast_to(div, s.shape)[bad]) * k
        return y.astype(x.dtype, copy=False)


@njit(cache=True, error_model="numpy", nogil=True)
def avg_pool2d_forward_numba(x, kH, kW, sH, sW, pH, pW, Ho, Wo, div):
    # x: (P, H, W), div: (Ho, Wo) -> y: (P, Ho, Wo)
    P, H, W = x.shape
    y = np.empty((P, Ho, Wo), dtype=x.dtype)
    for p in range(P):
        for oh in range(Ho):
            h0 = oh * sH - pH
            h1 = min(h0 + kH, H)
            h0 = max(h0, 0)
            for ow in range(Wo):
                w0 = ow * sW - pW
                w1 = min(w0 + kW, W)
                w0 = max(w0, 0)
                s = 0.0                                  # float64, whatever x's dtype
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[p, h, w]
                if math.isinf(s):                        # float64 only: in units of 2^k >= kH kW
                    k = 2.0 ** math.ceil(math.log2(kH * kW))
                    s = 0.0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            s += x[p, h, w] * (1.0 / k)
                    y[p, oh, ow] = (s / div[oh, ow]) * k
                else:
                    y[p, oh, ow] = s / div[oh, ow]
    return y


def avg_pool2d_backward_numpy(dy, H, W, kH, kW, sH, sW, pH, pW, div):
    """dy: (P, Ho, Wo), div: (Ho, Wo) -> dx: (P, H, W): each dy/div spread over its window, the
    padding cropped."""
    P, Ho, Wo = dy.shape
    g = dy / div
    dxp = np.zeros((P, max(H + 2 * pH, (Ho - 1) * sH + kH), max(W + 2 * pW, (Wo - 1) * sW + kW)),
                   dtype=dy.dtype)
    for i in range(kH):
        for j in range(kW):
            dxp[:, i:i + sH * (Ho - 1) + 1:sH, j:j + sW * (Wo - 1) + 1:sW] += g
    return np.ascontiguousarray(dxp[:, pH:pH + H, pW:pW + W])


@njit(cache=True, error_model="numpy", nogil=True)
def avg_pool2d_backward_numba(dy, H, W, kH, kW, sH, sW, pH, pW, div):
    # dy: (P, Ho, Wo), div: (Ho, Wo) -> dx: (P, H, W)
    P, Ho, Wo = dy.shape
    dx = np.zeros((P, H, W), dtype=dy.dtype)
    for p in range(P):
        for oh in range(Ho):
            h0 = oh * sH - pH
            h1 = min(h0 + kH, H)
            h0 = max(h0, 0)
            for ow in range(Wo):
                w0 = ow * sW - pW
                w1 = min(w0 + kW, W)
                w0 = max(w0, 0)
                g = dy[p, oh, ow] / div[oh, ow]
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[p, h, w] += g
    return dx


conv2d_direct_forward = dispatch(conv2d_direct_forward_numba, conv2d_direct_forward_numpy)
conv2d_direct_backward_input = dispatch(conv2d_direct_backward_input_numba,
                                        conv2d_direct_backward_input_numpy)
conv2d_direct_backward_weight = dispatch(conv2d_direct_backward_weight_numba,
                                         conv2d_direct_backward_weight_numpy)
max_pool2d_forward = dispatch(max_pool2d_forward_numba, max_pool2d_forward_numpy)
max_pool2d_backward = dispatch(max_pool2d_backward_numba, max_pool2d_backward_numpy)
avg_pool2d_forward = dispatch(avg_pool2d_forward_numba, avg_pool2d_forward_numpy)
avg_pool2d_backward = dispatch(avg_pool2d_backward_numba, avg_pool2d_backward_numpy)
