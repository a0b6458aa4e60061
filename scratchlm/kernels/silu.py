r"""SiLU and the SwiGLU product, forward and backward, on flat arrays (the caller splits them
over the threads and passes the outputs).

    silu(x) = x s,   s = sigmoid(x);          silu'(x) = s + x s (1 - s)
    swiglu(g, u) = silu(g) u;                 dg = dh u silu'(g),   du = dh silu(g)

``s`` is taken from ``e = exp(-|x|)`` (in [0, 1], never overflows): ``s = 1/(1+e)`` for
``x >= 0`` and ``e/(1+e)`` for ``x < 0``; ``s (1 - s) = e / (1+e)^2`` (no cancellation), so
``silu'`` is ``s + x w`` with ``w = e r^2`` -- 0 where ``s`` saturates, never ``0 * inf``.
Over the whole floating-point range: ``silu(-huge) = -0``, ``silu(+huge) = x``, ``silu' -> 0``
and ``1``; the products ``silu(g) u`` and ``dh u silu'(g)`` overflow to inf only where the true
value is past the max. The Numba kernels take the exponentials a block at a time with the
vectorised ``exp_nonpos_inplace`` (``vmath.py``) in the input's precision.
"""

import numpy as np
from numba import njit

from . import dispatch
from .gelu import BLOCK, _const
from .vmath import exp_nonpos_inplace


def _sig_numpy(x):
    """x: (n,) -> (s, w) with s = sigmoid(x), w = s (1 - s) = e / (1 + e)^2."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.where(x >= 0, r, e * r).astype(x.dtype), (e * r * r).astype(x.dtype)


def silu_forward_numpy(x, out):
    """x, out: (n,) -> out = x sigmoid(x)."""
    s, _ = _sig_numpy(x)
    np.multiply(x, s, out=out)
    return out


def silu_backward_numpy(dy, x, out):
    """dy, x, out: (n,) -> out = dy silu'(x)."""
    s, w = _sig_numpy(x)
    with np.errstate(over="ignore"):
        np.multiply(dy, s + x * w, out=out)
    return out


def swiglu_forward_numpy(g, u, out):
    """g, u, out: (n,) -> out = silu(g) u."""
    s, _ = _sig_numpy(g)
    with np.errstate(over="ignore"):
        np.multiply(g * s, u, out=out)
    return out


def swiglu_backward_numpy(dh, g, u, dg, du):
    """dh, g, u, dg, du: (n,) -> dg = dh u silu'(g), du = dh silu(g)."""
    s, w = _sig_numpy(g)
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(dh * u, s + g * w, out=dg)
        np.multiply(dh, g * s, out=du)
    return dg, du


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _sig_block(x, start, m, e, bits):
    # e[:m] = exp(-|x[start:start+m]|)
    for j in range(m):
        e[j] = -abs(x[start + j])
    exp_nonpos_inplace(e[:m], bits[:m])


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _sigmoid_from(v, ev, one):
    # (sigmoid(v), r) from ev = exp(-|v|), r = 1 / (1 + ev): r for v >= 0, ev r below
    r = one / (one + ev)
    return (r if v >= 0 else ev * r), r


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _silu_block(x, start, m, e, bits):
    # e[:m] = silu(x[start:start+m]) = x sigmoid(x), in the twin's order
    _sig_block(x, start, m, e, bits)
    one = _const(x, 1.0)
    xs = x[start:start + m]
    for j in range(m):
        e[j] = xs[j] * _sigmoid_from(xs[j], e[j], one)[0]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _silu_grad_block(x, start, m, e, bits, s, ds):
    # s[:m] = silu(x), ds[:m] = silu'(x) = sigmoid + x sigmoid (1 - sigmoid), for x[start:start+m]
    _sig_block(x, start, m, e, bits)
    one = _const(x, 1.0)
    xs = x[start:start + m]
    for j in range(m):
        v = xs[j]
        sj, r = _sigmoid_from(v, e[j], one)
        s[j] = v * sj
        ds[j] = sj + v * (e[j] * r * r)


# Each kernel computes a block of sigmoids into scratch, then applies it in loops that store to
# one output each: a loop that reads four arrays and writes two (dg and du) was left scalar by
# LLVM, which cannot rule out that they overlap and gives up on the runtime checks (2.2 ms for
# SwiGLU's backward over 700k entries; 1.2 ms in this form).
@njit(cache=True, error_model="numpy", nogil=True)
def silu_forward_numba(x, out):
    e, bits = np.empty(BLOCK, x.dtype), np.empty(BLOCK, np.int32)
    for start in range(0, x.shape[0], BLOCK):
        m = min(BLOCK, x.shape[0] - start)
        _silu_block(x, start, m, e, bits)
        out[start:start + m] = e[:m]
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def silu_backward_numba(dy, x, out):
    e, bits = np.empty(BLOCK, x.dtype), np.empty(BLOCK, np.int32)
    s, ds = np.empty(BLOCK, x.dtype), np.empty(BLOCK, x.dtype)
    for start in range(0, x.shape[0], BLOCK):
        m = min(BLOCK, x.shape[0] - start)
        _silu_grad_block(x, start, m, e, bits, s, ds)
        dys, outs = dy[start:start + m], out[start:start + m]
        for j in range(m):
            outs[j] = dys[j] * ds[j]
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def swiglu_forward_numba(g, u, out):
    e, bits = np.empty(BLOCK, g.dtype), np.empty(BLOCK, np.int32)
    for start in range(0, g.shape[0], BLOCK):
        m = min(BLOCK, g.shape[0] - start)
        _silu_block(g, start, m, e, bits)                       # e = silu(g)
        us, outs = u[start:start + m], out[start:start + m]
        for j in range(m):
            outs[j] = e[j] * us[j]                              # h = silu(g) u
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def swiglu_backward_numba(dh, g, u, dg, du):
    e, bits = np.empty(BLOCK, g.dtype), np.empty(BLOCK, np.int32)
    s, ds = np.empty(BLOCK, g.dtype), np.empty(BLOCK, g.dtype)
    for start in range(0, g.shape[0], BLOCK):
        m = min(BLOCK, g.shape[0] - start)
        _silu_grad_block(g, start, m, e, bits, s, ds)
        end = start + m
        dhs, us, dgs, dus = dh[start:end], u[start:end], dg[start:end], du[start:end]
        for j in range(m):
            dgs[j] = (dhs[j] * us[j]) * ds[j]                  # dg = dh u silu'(g)
        for j in range(m):
            dus[j] = dhs[j] * s[j]                              # du = dh silu(g)
    return dg, du


silu_forward = dispatch(silu_forward_numba, silu_forward_numpy)
silu_backward = dispatch(silu_backward_numba, silu_backward_numpy)
swiglu_forward = dispatch(swiglu_forward_numba, swiglu_forward_numpy)
swiglu_backward = dispatch(swiglu_backward_numba, swiglu_backward_numpy)
