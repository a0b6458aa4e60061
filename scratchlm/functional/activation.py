"""Element-wise activations: ReLU, tanh, sigmoid, GELU (exact and tanh approximation), SiLU, and
the SwiGLU product of the Llama MLP.

Each forward keeps what its backward needs: ReLU its input sign, tanh and sigmoid their output,
GELU its derivative, SiLU its input, SwiGLU its two inputs. Shapes never change.
"""

from typing import NamedTuple

import numpy as np

from .. import _autocast
from .._checks import choice, float_array, same_shape_and_dtype, upstream
from ..kernels import gelu as K
from ..kernels import relu as KR
from ..kernels import silu as KS
from ..kernels import split_run

#: elements per thread below which an element-wise kernel runs in the calling thread
GRAIN = 1 << 16


def _elementwise(kernel, out, *inputs):
    """``kernel(*flat inputs, flat out)`` over ``out.size`` elements, split over the threads
    (each thread writes its own slice of ``out``). Inputs are made C-contiguous first."""
    flat = [np.ascontiguousarray(a).reshape(-1) for a in inputs]
    o = out.reshape(-1)
    split_run(lambda lo, hi: kernel(*(a[lo:hi] for a in flat), o[lo:hi]), o.size, GRAIN)
    return out


class ReluCache(NamedTuple):
    x: np.ndarray            # (...) the input: its sign is the derivative


def relu_forward(x):
    r""":math:`y = \max(x, 0)`.  x: any shape -> y: same shape.  (Nair & Hinton, 2010)"""
    x = float_array(x, "x")
    return _elementwise(KR.relu_forward, np.empty(x.shape, x.dtype), x), ReluCache(x)


def relu_backward(dy, cache: ReluCache):
    r"""From ``y = max(x, 0)``: :math:`\partial y/\partial x = [x > 0]` (0 at the kink, as torch)."""
    x = cache.x
    upstream(dy, x.shape, x.dtype)
    return _elementwise(KR.relu_backward, np.empty(x.shape, x.dtype), dy, x)


def add_relu_forward(r, h):
    r""":math:`y = r + \max(h, 0)`: a residual sum and its branch's ReLU in one pass (ConvLM's
    blocks, ``x + ReLU(conv(x))``). r, h: one shape and dtype -> y: that shape. The cache keeps
    ``h``, whose sign is the ReLU's derivative."""
    r = float_array(r, "r")
    h = float_array(h, "h")
    same_shape_and_dtype(h, "h", r, "r")
    return _elementwise(KR.add_relu, np.empty(h.shape, h.dtype), r, h), ReluCache(h)


def add_relu_backward(dy, cache: ReluCache):
    r"""From ``y = r + max(h, 0)``: :math:`\partial y/\partial r = 1`,
    :math:`\partial y/\partial h = [h > 0]`. Returns ``(dr, dh)``."""
    return dy, relu_backward(dy, cache)


class TanhCache(NamedTuple):
    y: np.ndarray            # (...) the output tanh(x)


def tanh_forward(x):
    r""":math:`y = \tanh x`."""
    x = float_array(x, "x")
    y = np.tanh(x)
    return y, TanhCache(y)


def tanh_backward(dy, cache: TanhCache):
    r"""From ``y = tanh(x)``: :math:`\partial y/\partial x = 1 - y^2`."""
    y = cache.y
    upstream(dy, y.shape, y.dtype)
    return dy * (1 - y * y)


def stable_sigmoid(x):
    r""":math:`\sigma(x) = 1 / (1 + e^{-x})` without overflow: :math:`e^{-|x|} \in (0, 1]`, then
    :math:`1/(1+e)` for :math:`x \ge 0` and :math:`e/(1+e)` for :math:`x < 0`."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


class SigmoidCache(NamedTuple):
    y: np.ndarray            # (...) the output sigmoid(x)


def sigmoid_forward(x):
    r""":math:`y = \sigma(x) = 1 / (1 + e^{-x})`, evaluated without overflow for any finite x."""
    x = float_array(x, "x")
    y = stable_sigmoid(x)
    return y, SigmoidCache(y)


def sigmoid_backward(dy, cache: SigmoidCache):
    r"""From ``y = sigmoid(x)``: :math:`\partial y/\partial x = y (1 - y)`."""
    y = cache.y
    upstream(dy, y.shape, y.dtype)
    return dy * y * (1 - y)


class GeluCache(NamedTuple):
    dydx: np.ndarray         # (...) dy/dx at every x, computed by the forward's kernel
    precision: str | None = None   # under autocast: dydx kept in 16 bits (AMP runs GELU there)


def gelu_forward(x, approximate: str = "none"):
    r"""Gaussian Error Linear Unit (Hendrycks & Gimpel, 2016).

    ``approximate='none'``: :math:`y = x\,\Phi(x) = \tfrac12 x (1 + \operatorname{erf}(x/\sqrt2))`.

    ``approximate='tanh'`` (GPT-2's):
    :math:`y = \tfrac12 x \left(1 + \tanh\left(\sqrt{2/\pi}\,(x + 0.044715 x^3)\right)\right)`.

    Runs as a Numba kernel (``scratchlm.kernels.gelu``) on the flattened array.
    """
    x = float_array(x, "x")
    choice(approximate, "approximate", ("none", "tanh"))
    tanh = approximate == "tanh"
    flat = np.ascontiguousarray(x).reshape(-1)                # (n,)
    y, dydx = np.empty_like(flat), np.empty_like(flat)        # (n,), (n,): y and its derivative
    split_run(lambda lo, hi: K.gelu_forward(flat[lo:hi], tanh, y[lo:hi], dydx[lo:hi]), flat.size,
              GRAIN)
    mode = _autocast.active() if x.dtype == np.float32 else None
    if mode is not None:       # as AMP, which runs GELU in the 16-bit type: its derivative too
        return y.reshape(x.shape), GeluCache(_autocast.pack16(
            _autocast.to16(dydx, mode), mode).reshape(x.shape), mode)
    return y.reshape(x.shape), GeluCache(dydx.reshape(x.shape))


def gelu_backward(dy, cache: GeluCache):
    r"""From ``y = x Phi(x)``: :math:`\partial y/\partial x = \Phi(x) + x\,\varphi(x)`
    (tanh form: see ``scratchlm.kernels.gelu``), computed by the forward and kept in the cache."""
    dydx = cache.dydx if cache.precision is None else _autocast.unpack16(cache.dydx,
                                                                          cache.precision)
    upstream(dy, dydx.shape, dydx.dtype)
    return _elementwise(K.gelu_backward, np.empty(dydx.shape, dydx.dtype), dy, dydx)  # dy dydx


class SiluCache(NamedTuple):
    x: np.ndarray            # (...) the input


def silu_forward(x):
    r""":math:`y = x\,\sigma(x)` (SiLU / swish; Elfwing et al., 2018; Ramachandran et al., 2017)."""
    x = float_array(x, "x")
    return _elementwise(KS.silu_forward, np.empty(x.shape, x.dtype), x), SiluCache(x)


def silu_backward(dy, cache: SiluCache):
    r"""From ``y = x sigmoid(x)``: :math:`\partial y/\partial x = \sigma(x) + x\,\sigma(x)(1-\sigma(x))`."""
    x = cache.x
    upstream(dy, x.shape, x.dtype)
    return _elementwise(KS.silu_backward, np.empty(x.shape, x.dtype), dy, x)


class SwiGLUCache(NamedTuple):
    gate: np.ndarray         # (...) g, the gate projection's output
    up: np.ndarray           # (...) u, the up projection's output


def swiglu_forward(gate, up):
    r"""The gated unit of the Llama MLP (Shazeer, 2020, "GLU Variants Improve Transformer"):

    .. math::  h = \mathrm{silu}(g) \odot u

    so that ``mlp(x) = down_proj(swiglu(gate_proj(x), up_proj(x)))``. One fused pass."""
    g = float_array(gate, "gate")
    u = float_array(up, "up")
    if u.shape != g.shape or u.dtype != g.dtype:
        raise ValueError(f"up must have gate's shape and dtype {g.shape} {g.dtype}, got "
                         f"{u.shape} {u.dtype}")
    g, u = np.ascontiguousarray(g), np.ascontiguousarray(u)
    h = _elementwise(KS.swiglu_forward, np.empty(g.shape, g.dtype), g, u)
    return h, SwiGLUCache(g, u)


def swiglu_backward(dh, cache: SwiGLUCache):
    r"""From ``h = silu(g) u``: :math:`dg = dh\,u\,\mathrm{silu}'(g)`, :math:`du = dh\,\mathrm{silu}(g)`.
    Returns ``(dgate, dup)``."""
    g, u = cache.gate, cache.up
    upstream(dh, g.shape, g.dtype)
    dh = np.ascontiguousarray(dh).reshape(-1)
    dg, du = np.empty(g.shape, g.dtype), np.empty(g.shape, g.dtype)
    fg, fu, fdg, fdu = g.reshape(-1), u.reshape(-1), dg.reshape(-1), du.reshape(-1)
    split_run(lambda lo, hi: KS.swiglu_backward(dh[lo:hi], fg[lo:hi], fu[lo:hi], fdg[lo:hi],
                                                fdu[lo:hi]), fg.size, GRAIN)
    return dg, du
