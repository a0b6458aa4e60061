r"""Convolution (1-D and 2-D, with stride, zero padding, dilation and groups) and pooling.

Convolutional networks: LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied
to document recognition". Convolution as one matrix product over unrolled patches ("im2col"):
Chellapilla, Puri & Simard (2006), "High Performance Convolutional Neural Networks for Document
Processing". Dilated convolutions: Yu & Koltun (2016), "Multi-Scale Context Aggregation by
Dilated Convolutions".

As in every deep-learning library, "convolution" is the cross-correlation (the kernel is not
flipped). For a 2-D input ``x`` ``(N, C, H, W)``, weight ``W`` ``(O, C/G, kH, kW)``, stride
``s``, dilation ``d``, zero padding and ``G`` groups (output channel ``o`` sees only the ``C/G``
input channels of its group ``g(o) = o // (O/G)``):

.. math::
    y_{n,o,i,j} = b_o + \sum_{c=0}^{C/G-1}\sum_{p=0}^{k_H-1}\sum_{q=0}^{k_W-1}
        W_{o,c,p,q}\; x^{\text{pad}}_{n,\;g(o)\,C/G + c,\;s_H i + d_H p,\;s_W j + d_W q}

and each output side is

.. math::
    H_\text{out} = \left\lfloor \frac{H + p_\text{top} + p_\text{bottom} - d_H (k_H - 1) - 1}{s_H}
        \right\rfloor + 1 .

The backward pass, with :math:`\delta = \partial L/\partial y`:

.. math::
    \frac{\partial L}{\partial W_{o,c,p,q}} = \sum_{n,i,j} \delta_{n,o,i,j}\,
        x^{\text{pad}}_{n,\,g(o)C/G+c,\,s_H i+d_H p,\,s_W j+d_W q},\qquad
    \frac{\partial L}{\partial b_o} = \sum_{n,i,j} \delta_{n,o,i,j},

    \frac{\partial L}{\partial x^{\text{pad}}_{n,\,g(o)C/G+c,\,s_H i+d_H p,\,s_W j+d_W q}}
        \mathrel{+}= W_{o,c,p,q}\,\delta_{n,o,i,j}

(every input pixel collects from each output that read it), then the padding is cropped off.
1-D is the same with one spatial axis.

Two ways to compute it (``method=``):

* ``'im2col'``: one matrix product per group over the unrolled patches ``cols`` ``(C*K, n*L)``
  (``K`` kernel taps, ``L`` output pixels, ``n`` samples): ``y_g = W_g cols_g``; backward
  ``dW_g = dy_g cols_g^T`` and ``dcols_g = W_g^T dy_g``, folded back onto the input by col2im
  (im2col's adjoint, which adds where windows overlap). The column matrix is never built:
  ``cols[t, q] = xp.flat[taps[t] + pixels[q]]`` (:func:`_patch_offsets`), so it is *described*
  to :func:`scratchlm.kernels.gemm.gemm` by those offsets, and the GEMM packs its blocks straight
  from the padded input (an implicit GEMM); col2im is the same GEMM writing through the same
  offsets with ``accumulate=True`` (a scatter-add). The NumPy twin of the GEMM does build the
  matrix (a fancy-index gather, which *is* im2col) a few samples at a time
  (:data:`IM2COL_CHUNK`); on the Numba route the batch is split over threads
  (:func:`scratchlm.kernels.split_run`): each thread owns its samples' outputs and input
  gradients and sums its own ``dW``, added up at the end. The cache holds only the padded input.
* ``'direct'``: the sums above as Numba loops (``scratchlm/kernels/conv.py``); no column matrix.
* ``'auto'`` (default): :func:`choose_method`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import boolean, choice, float_array, integer, positive_int, upstream
from ..kernels import conv as K
from ..kernels import get_backend, split_run
from ..kernels.gemm import gemm

METHODS = ("auto", "im2col", "direct")


#: ``method='auto'`` picks ``'direct'`` below this many entries in one group's weight block
DIRECT_BELOW = 384


def choose_method(weight_shape, groups, stride) -> str:
    """The rule behind ``method='auto'``: ``'direct'`` when every stride is 1 and one group's
    weight block ``(O/G) x (C/G * K)`` has fewer than :data:`DIRECT_BELOW` entries (K: kernel
    taps), else ``'im2col'``.

    Why: per output pixel the GEMM multiplies that block by one column; its fixed costs
    (packing the column data, edge tiles, writing back) are spread over the block's
    multiply-adds, so a small block leaves it overhead-bound, while the direct loops run at the
    same speed whatever the shape. Strided convolutions always take im2col: the direct loops can
    only gather them row by row. The crossover was measured over 12 shapes, forward + backward;
    the timings are in docs/benchmarks.md ("Convolution: direct or im2col").

    Args:
        weight_shape: ``(out_channels, in_channels / groups, *kernel_size)``.
        groups: the channel groups.
        stride: the stride tuple.
    """
    block = weight_shape[0] // groups * math.prod(weight_shape[1:])
    return "direct" if all(s == 1 for s in stride) and block < DIRECT_BELOW else "im2col"


# ------------------------------------------------------------------------------------------------
# argument handling
# ------------------------------------------------------------------------------------------------
#: multiply-adds per thread below which a direct convolution or a pooling runs in one thread
GRAIN_MACS = 1 << 20


def _grain(weight, out):
    """Samples per thread for the direct method: at least GRAIN_MACS multiply-adds each."""
    per_sample = weight.size * int(np.prod(out))
    return max(1, GRAIN_MACS // max(1, per_sample))


def _ntuple(value, name, nd, minimum):
    """An int (repeated ``nd`` times) or a tuple/list of ``nd`` ints, each ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"{name} must be an int or a tuple of {nd} int(s), got {value!r}")
        values = tuple(integer(v, name) for v in value)
    else:
        values = (integer(value, name),) * nd
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def _conv_padding(padding, nd, kernel, stride, dilation):
    """-> ((lo, hi), ...) per spatial axis. 'same' pads ``d*(k-1)`` in total, ``total // 2`` before
    and the rest after (torch's rule: the odd extra goes to the end) and needs stride 1."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(as in torch): stride must be 1, got stride={stride}")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding must be an int, a tuple of {nd} int(s), 'same' or 'valid', "
                         f"got {padding!r}")
    return tuple((p, p) for p in _ntuple(padding, "padding", nd, 0))


def _pad(x, pads):
    """Zero-pad the spatial axes of ``x`` (N, C, *spatial) by ``pads`` ((lo, hi), ...)."""
    if not any(lo or hi for lo, hi in pads):
        return np.ascontiguousarray(x)
    shape = x.shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads))
    xp = np.zeros(shape, dtype=x.dtype)
    xp[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for s, (lo, _) in zip(x.shape[2:], pads))] = x
    return xp


def _crop(dxp, pads, spatial):
    if not any(lo or hi for lo, hi in pads):
        return dxp
    index = (slice(None), slice(None)) + tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads))
    return np.ascontiguousarray(dxp[index])


def _steps(n, step=1):
    """``0, step, ..., (n-1)*step`` as int64: the offsets of a strided axis, for the GEMM."""
    return np.arange(n, dtype=np.int64) * step


def _patch_offsets(C, padded, kernel, stride, dilation, out):
    """im2col's column matrix as offsets, never built: for a C-contiguous padded input ``xp``
    ``(N, C, *padded)``,

        cols[t, q] = xp.flat[taps[t] + pixels[q]]        (sample n: pixels[q] + n * xp[0].size)

    ``taps`` ``(C*K,)``: where tap ``t = (c, i_1, ..., i_nd)`` of output pixel 0 reads,
    ``c*P + sum_a i_a d_a step_a``; ``pixels`` ``(L,)``: where output pixel ``(o_1, ..., o_nd)``'s
    window starts, ``sum_a o_a s_a step_a`` (``step_a``: the element stride of spatial axis ``a``,
    ``P``: the size of one padded plane). Both are in C order, matching ``weight``'s flattening
    ``(c, i_1, ..., i_nd)`` and ``y``'s ``(o_1, ..., o_nd)``."""
    steps = np.cumprod((1,) + tuple(padded[:0:-1]))[::-1]                 # spatial element strides
    taps = _steps(C, math.prod(padded))
    pixels = np.zeros(1, dtype=np.int64)
    for k, s, d, o, step in zip(kernel, stride, dilation, out, steps):
        taps = np.add.outer(taps, _steps(k, d * step)).ravel()              # (C * k_1 * ...,)
        pixels = np.add.outer(pixels, _steps(o, s * step)).ravel()          # (o_1 * ...,)
    return taps, pixels


def _batch(offsets, n0, n1, per_sample):
    """Per-sample offsets (L,) -> those of samples n0..n1-1 of arrays with ``per_sample`` entries
    each, concatenated ((n1 - n0) * L,)."""
    return np.add.outer(np.arange(n0, n1, dtype=np.int64) * per_sample, offsets).ravel()


#: samples per GEMM call on the NumPy route, as column-matrix entries (1 MB in float32). The
#: NumPy twin of the GEMM gathers its operands into real matrices (that is im2col), so it goes a
#: few samples at a time and each matrix stays cache-sized; fresh pages for a whole batch's
#: column matrix (19 MB for a (32, 16, 32, 32) 3x3 conv) made it 2-3x slower. The Numba GEMM
#: packs block by block and takes a thread's samples in one call.
IM2COL_CHUNK = 1 << 18


def _chunks(lo, hi, per_sample):
    """Split ``range(lo, hi)`` into the runs of samples of one GEMM call (see IM2COL_CHUNK)."""
    if get_backend() == "numba":
        return [(lo, hi)]
    step = max(1, IM2COL_CHUNK // max(per_sample, 1))
    return [(n0, min(n0 + step, hi)) for n0 in range(lo, hi, step)]


def _batched(x, nd, name="x"):
    """(C, *spatial) or (N, C, *spatial) -> the batched array and whether a batch axis was added."""
    x = float_array(x, name, ndim=(nd + 1, nd + 2))
    return (x[None], True) if x.ndim == nd + 1 else (x, False)


# ------------------------------------------------------------------------------------------------
# convolution
# ------------------------------------------------------------------------------------------------
class ConvCache(NamedTuple):
    """What :func:`conv1d_backward` / :func:`conv2d_backward` need (``nd`` spatial axes)."""
    method: str                         # 'im2col' or 'direct' (resolved from 'auto')
    nd: int                             # 1 or 2 spatial axes
    xp: np.ndarray                      # (N, C, *padded) the zero-padded input, C-contiguous
    weight: np.ndarray                  # (O, C/G, *kernel) C-contiguous
    x_shape: tuple                      # (N, C, *spatial) of the batched input
    unbatched: bool                     # the input had no batch axis (N = 1 was added)
    pads: tuple                         # ((lo, hi),) * nd zero padding per spatial axis
    stride: tuple                       # (nd,)
    dilation: tuple                     # (nd,)
    groups: int                         # G
    out: tuple                          # (nd,) output spatial shape
    has_bias: bool                      # a bias was added


def _conv_forward(x, weight, bias, stride, padding, dilation, groups, method, nd):
    x, unbatched = _batched(x, nd)
    weight = float_array(weight, "weight", ndim=nd + 2, finite=False)
    if x.dtype != weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but weight has dtype {weight.dtype}")
    groups = positive_int(groups, "groups")
    method = choice(method, "method", METHODS)
    N, C = x.shape[:2]
    O, Cg = weight.shape[:2]
    kernel = weight.shape[2:]
    if O % groups:
        raise ValueError(f"weight's out_channels ({O}, weight shape {weight.shape}) must be "
                         f"divisible by groups={groups}")
    if Cg * groups != C:
        raise ValueError(f"x must have {Cg * groups} channels (weight {weight.shape} with "
                         f"groups={groups}), got {C} channels in shape {x.shape}")
    stride = _ntuple(stride, "stride", nd, 1)
    dilation = _ntuple(dilation, "dilation", nd, 1)
    pads = _conv_padding(padding, nd, kernel, stride, dilation)
    out = []
    for size, k, s, d, (lo, hi) in zip(x.shape[2:], kernel, stride, dilation, pads):
        padded, span = size + lo + hi, d * (k - 1) + 1
        if span > padded:
            raise ValueError(
                f"kernel larger than the padded input: kernel size {tuple(kernel)} with dilation "
                f"{dilation} spans {span} but the padded input is {padded} along that axis "
                f"(x shape {x.shape}, padding {tuple(lo + hi for lo, hi in pads)} in total)")
        out.append((padded - span) // s + 1)
    out = tuple(out)
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, finite=False)
        if bias.shape != (O,) or bias.dtype != weight.dtype:
            raise ValueError(f"bias must have shape ({O},) and dtype {weight.dtype}, "
                             f"got {bias.shape} {bias.dtype}")
    if method == "auto":
        method = choose_method(weight.shape, groups, stride)

    weight = np.ascontiguousarray(weight)
    xp = _pad(x, pads)                                                     # (N, C, *padded)
    L = math.prod(out)
    if method == "im2col":
        Og, CgK = O // groups, Cg * math.prod(kernel)
        taps, pixels = _patch_offsets(C, xp.shape[2:], kernel, stride, dilation, out)
        y = np.empty((N, O, L), dtype=x.dtype)
        xf, wf, yf = xp.reshape(-1), weight.reshape(-1), y.reshape(-1)        # flat buffers
        w_rows, w_cols = _steps(O, CgK), _steps(CgK)                          # W: (O, Cg*K)
        y_rows = _steps(O, L)                                                   # y[n]: (O, L)

        def samples(lo, hi):                              # one thread's samples: y[lo:hi]
            for n0, n1 in _chunks(lo, hi, C * math.prod(kernel) * L):
                x_cols = _batch(pixels, n0, n1, xp[0].size)                     # cols: (C*K, n*L)
                y_cols = _batch(_steps(L), n0, n1, O * L)
                for g in range(groups):
                    o, t = slice(g * Og, (g + 1) * Og), slice(g * CgK, (g + 1) * CgK)
                    gemm(wf, w_rows[o], w_cols, xf, taps[t], x_cols,      # y_g = W_g cols_g
                         yf, y_rows[o], y_cols, False)
                if bias is not None:
                    y[n0:n1] += bias[:, None]                 # while the chunk is in cache

        split_run(samples, N)
        y = y.reshape((N, O) + out)
    else:
        b = bias if bias is not None else np.zeros(O, dtype=x.dtype)
        xp4, w4 = (xp[:, :, None], weight[:, :, None]) if nd == 1 else (xp, weight)  # 1-D: H = 1
        s2, d2, o2 = ((1,) * (2 - nd) + stride, (1,) * (2 - nd) + dilation, (1,) * (2 - nd) + out)
        b = np.ascontiguousarray(b)
        y = np.empty((N, O) + o2, dtype=x.dtype)            # each thread writes its samples'
        split_run(lambda lo, hi: K.conv2d_direct_forward(xp4[lo:hi], w4, b, groups, *s2, *d2,
                                                         *o2, y[lo:hi]), N, _grain(weight, out))
        y = y.reshape((N, O) + out)
    cache = ConvCache(method, nd, xp, weight, x.shape, unbatched, pads, stride, dilation, groups,
                      out, bias is not None)
    return (y[0] if unbatched else y), cache


def _conv_backward(dy, cache: ConvCache):
    method, nd, xp, weight = cache.method, cache.nd, cache.xp, cache.weight
    x_shape, unbatched, pads, out = cache.x_shape, cache.unbatched, cache.pads, cache.out
    stride, dilation, groups, has_bias = cache.stride, cache.dilation, cache.groups, cache.has_bias
    N, C = x_shape[:2]
    O = weight.shape[0]
    kernel = weight.shape[2:]
    y_shape = (N, O) + out
    upstream(dy, y_shape[1:] if unbatched else y_shape, weight.dtype)
    dy = np.ascontiguousarray(dy).reshape(y_shape)
    L = math.prod(out)
    dbias = dy.sum(axis=(0,) + tuple(range(2, 2 + nd))) if has_bias else None      # (O,)
    if method == "im2col":
        Og, CgK = O // groups, weight[0].size
        taps, pixels = _patch_offsets(C, xp.shape[2:], kernel, stride, dilation, out)
        dx = np.empty(x_shape, dtype=dy.dtype)
        inner = tuple(slice(lo, lo + n) for n, (lo, _) in zip(x_shape[2:], pads))
        xf, wf, dyf = xp.reshape(-1), weight.reshape(-1), dy.reshape(-1)
        w_rows, w_cols = _steps(O, CgK), _steps(CgK)                          # W: (O, Cg*K)
        dy_rows = _steps(O, L)                                                  # dy[n]: (O, L)
        dwt_rows, dwt_cols = _steps(CgK, O), _steps(O)                        # dW^T: (Cg*K, O)

        def samples(lo, hi):            # one thread's samples: dx[lo:hi] and its share of dW^T
            dwt = np.zeros(CgK * O, dtype=dy.dtype)
            for n0, n1 in _chunks(lo, hi, C * math.prod(kernel) * L):
                x_cols = _batch(pixels, n0, n1, xp[0].size)                     # cols: (C*K, n*L)
                dxp_cols = _batch(pixels, 0, n1 - n0, xp[0].size)          # in the chunk's dxp
                dy_cols = _batch(_steps(L), n0, n1, O * L)
                dxp = np.zeros((n1 - n0,) + xp.shape[1:], dtype=dy.dtype)  # (Numba: a thread's)
                for g in range(groups):
                    o, t = slice(g * Og, (g + 1) * Og), slice(g * CgK, (g + 1) * CgK)
                    gemm(xf, taps[t], x_cols, dyf, dy_cols, dy_rows[o],   # dW_g^T += cols_g dy_g^T
                         dwt, dwt_rows, dwt_cols[o], True)
                    gemm(wf, w_cols, w_rows[o], dyf, dy_rows[o], dy_cols,   # dxp += col2im(
                         dxp.reshape(-1), taps[t], dxp_cols, True)         #   W_g^T dy_g)
                dx[n0:n1] = dxp[(slice(None), slice(None)) + inner]
            return dwt

        dweight = sum(split_run(samples, N)).reshape(CgK, O).T.reshape(weight.shape)
    else:
        lift = (lambda a: a[:, :, None]) if nd == 1 else (lambda a: a)               # 1-D: H = 1
        s2, d2 = (1,) * (2 - nd) + stride, (1,) * (2 - nd) + dilation
        hw = (1,) * (2 - nd) + tuple(xp.shape[2:])
        def samples(lo, hi):            # one thread's samples: dx[lo:hi] and its share of dW
            return (K.conv2d_direct_backward_input(lift(dy[lo:hi]), lift(weight), groups, *hw,
                                                   *s2, *d2),
                    K.conv2d_direct_backward_weight(lift(dy[lo:hi]), lift(xp[lo:hi]), groups,
                                                    *((1,) * (2 - nd) + kernel), *s2, *d2))
        parts = split_run(samples, N, _grain(weight, cache.out))
        dxp = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        dweight = sum(p[1] for p in parts[1:]) + parts[0][1] if len(parts) > 1 else parts[0][1]
        dx = _crop(dxp.reshape(xp.shape), pads, x_shape[2:])
        dweight = dweight.reshape(weight.shape)
    return (dx[0] if unbatched else dx), dweight, dbias


_CONV_ARGS = """
    Args:
        x: ``{x}`` or unbatched ``{xu}``, float32 or float64.
        weight: ``{w}`` -- torch's layout; same dtype as ``x``.
        bias: ``(out_channels,)`` or ``None``.
        stride, dilation: int or tuple of {nd} int(s), each >= 1.
        padding: int or tuple of {nd} int(s) (zeros on both sides), ``'valid'`` (none) or
            ``'same'`` (output as long as the input; stride must be 1; when the total
            ``d*(k-1)`` is odd the extra zero goes at the end, as torch does).
        groups: split the channels into this many independent convolutions (``in_channels`` and
            ``out_channels`` both divisible by it).
        method: ``'auto'`` (default, :func:`choose_method`), ``'im2col'`` or ``'direct'``.

    Returns:
        ``y`` ``{y}`` and a :class:`ConvCache` for the backward.
"""


def conv1d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, method="auto"):
    r"""1-D convolution (cross-correlation) over the last axis:

    .. math:: y_{n,o,t} = b_o + \sum_{c<C/G}\sum_{p<k} W_{o,c,p}\,
              x^{\text{pad}}_{n,\,g(o)C/G+c,\;s t + d p},\qquad
              L_\text{out} = \left\lfloor\frac{L + p_\text{lo} + p_\text{hi} - d(k-1) - 1}{s}\right\rfloor + 1

    (dilation: Yu & Koltun 2016; im2col: Chellapilla et al. 2006; see the module docstring).
    """
    return _conv_forward(x, weight, bias, stride, padding, dilation, groups, method, 1)


def conv1d_backward(dy, cache):
    r"""Gradients of :func:`conv1d_forward`:

    .. math:: \frac{\partial L}{\partial W_{o,c,p}} = \sum_{n,t}\delta_{n,o,t}\,x^{\text{pad}}_{n,c',st+dp},
              \quad \frac{\partial L}{\partial b_o} = \sum_{n,t}\delta_{n,o,t},
              \quad \frac{\partial L}{\partial x^{\text{pad}}_{n,c',st+dp}} \mathrel{+}= W_{o,c,p}\,\delta_{n,o,t}

    with :math:`c' = g(o)C/G + c`; the padding is cropped from the input gradient.

    Returns:
        ``(dx, dweight, dbias)`` shaped like ``x``, ``weight``, ``bias`` (``dbias`` is ``None``
        without a bias), in the forward's dtype.
    """
    return _conv_backward(dy, cache)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, method="auto"):
    r"""2-D convolution (cross-correlation) over the last two axes:

    .. math:: y_{n,o,i,j} = b_o + \sum_{c<C/G}\sum_{p<k_H}\sum_{q<k_W} W_{o,c,p,q}\,
              x^{\text{pad}}_{n,\,g(o)C/G+c,\;s_H i + d_H p,\;s_W j + d_W q}

    .. math:: H_\text{out} = \left\lfloor\frac{H + p_\text{top} + p_\text{bottom} - d_H(k_H-1) - 1}
              {s_H}\right\rfloor + 1\quad\text{(and likewise } W_\text{out}\text{)}

    (LeCun et al. 1998; im2col: Chellapilla et al. 2006; dilation: Yu & Koltun 2016.)
    """
    return _conv_forward(x, weight, bias, stride, padding, dilation, groups, method, 2)


def conv2d_backward(dy, cache):
    r"""Gradients of :func:`conv2d_forward`:

    .. math:: \frac{\partial L}{\partial W_{o,c,p,q}} = \sum_{n,i,j}\delta_{n,o,i,j}\,
              x^{\text{pad}}_{n,c',s_H i+d_H p,s_W j+d_W q},
              \quad \frac{\partial L}{\partial b_o} = \sum_{n,i,j}\delta_{n,o,i,j},
              \quad \frac{\partial L}{\partial x^{\text{pad}}_{n,c',s_H i+d_H p,s_W j+d_W q}}
              \mathrel{+}= W_{o,c,p,q}\,\delta_{n,o,i,j}

    with :math:`c' = g(o)C/G + c`; the padding is cropped from the input gradient. With im2col
    these are ``dW = dy cols^T``, ``dcols = W^T dy`` and ``dx = col2im(dcols)``.

    Returns:
        ``(dx, dweight, dbias)`` shaped like ``x``, ``weight``, ``bias`` (``dbias`` is ``None``
        without a bias), in the forward's dtype.
    """
    return _conv_backward(dy, cache)


conv1d_forward.__doc__ += _CONV_ARGS.format(x="(N, C, L)", xu="(C, L)", w="(out_channels, C/groups, k)",
                                            nd=1, y="(N, out_channels, L_out)")
conv2d_forward.__doc__ += _CONV_ARGS.format(x="(N, C, H, W)", xu="(C, H, W)",
                                            w="(out_channels, C/groups, kH, kW)", nd=2,
                                            y="(N, out_channels, H_out, W_out)")


# ------------------------------------------------------------------------------------------------
# pooling
# ------------------------------------------------------------------------------------------------
def _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, nd):
    """-> x as (P, H, W) planes (1-D: H = 1), the 2-D hyperparameters (kernel, stride, padding,
    dilation), the output shape and the input shape. Output side (torch's rule):
    ``floor_or_ceil((L + 2p - d(k-1) - 1) / s) + 1``, and with ``ceil_mode`` one less if the last
    window would start past the input and its left padding."""
    x = float_array(x, "x", ndim=(nd + 1, nd + 2))
    k = _ntuple(kernel_size, "kernel_size", nd, 1)
    s = k if stride is None else _ntuple(stride, "stride", nd, 1)
    p = _ntuple(padding, "padding", nd, 0)
    d = _ntuple(dilation, "dilation", nd, 1)
    ceil_mode = boolean(ceil_mode, "ceil_mode")
    if any(2 * pp > kk for pp, kk in zip(p, k)):
        raise ValueError(f"padding must be at most half of kernel_size (as in torch), got "
                         f"padding={p} and kernel_size={k}")
    spatial = x.shape[-nd:]
    out = []
    for size, kk, ss, pp, dd in zip(spatial, k, s, p, d):
        span = dd * (kk - 1) + 1
        if span > size + 2 * pp:
            raise ValueError(f"kernel larger than the padded input: kernel_size {k} (dilation {d}) "
                             f"but x has spatial shape {spatial} with padding {p}")
        n = (size + 2 * pp - span + (ss - 1 if ceil_mode else 0)) // ss + 1
        if ceil_mode and (n - 1) * ss >= size + pp:
            n -= 1
        for o in range(n):                         # with dilation a window can miss the input
            start = o * ss - pp
            if not any(0 <= start + i * dd < size for i in range(kk)):
                raise ValueError(f"pooling window {o} reads only padding (kernel_size {k}, stride "
                                 f"{s}, padding {p}, dilation {d}, input {spatial})")
        out.append(n)
    lift = (1,) * (2 - nd)
    planes = np.ascontiguousarray(x).reshape((-1,) + lift + spatial)           # (P, H, W)
    hyper = lift + k, lift + s, (0,) * (2 - nd) + p, lift + d
    return planes, hyper, tuple(out), x.shape


def _pool_doc(kind, nd):
    cache = ":class:`MaxPoolCache`" if kind == "-inf" else ":class:`AvgPoolCache`"
    dims = "(N, C, L)" if nd == 1 else "(N, C, H, W)"
    unb = "(C, L)" if nd == 1 else "(C, H, W)"
    extra = ("dilation: int or tuple; tap ``i`` of a window reads ``start + i*dilation``.\n        "
             if kind == "-inf" else "")
    return f"""
    Args:
        x: ``{dims}`` or unbatched ``{unb}``, float32 or float64 (kept).
        kernel_size: int or tuple of {nd} int(s).
        stride: int or tuple; ``None`` (default) means ``kernel_size``.
        padding: int or tuple, at most half the kernel ({kind} padding; torch's limit).
        {extra}ceil_mode: round the output size up (the last window may overhang the input; it
            must start inside the input or its left padding), as torch.

    Output side: :math:`\\lfloor (L + 2p - d(k-1) - 1)/s \\rfloor + 1` (``d = 1`` for average
    pooling; the ceiling with ``ceil_mode``).

    Returns:
        ``y`` with the pooled axes shrunk, and the cache ({cache}).
    """


class MaxPoolCache(NamedTuple):
    """What :func:`max_pool1d_backward` / :func:`max_pool2d_backward` need (1-D lifted: H = 1)."""
    idx: np.ndarray                     # (P, Ho, Wo) int64 argmax of each window, flat h*W + w
    plane: tuple                        # (H, W) of one input plane
    x_shape: tuple                      # the input's shape
    y_shape: tuple                      # the output's shape
    dtype: np.dtype                     # the input's dtype


def _max_pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode, nd):
    planes, (k, s, p, d), out, x_shape = _pool_setup(x, kernel_size, stride, padding, dilation,
                                                     ceil_mode, nd)
    out2 = (1,) * (2 - nd) + out
    grain = max(1, GRAIN_MACS // max(1, int(np.prod(out)) * int(np.prod(k))))    # planes per thread
    y = np.empty((planes.shape[0],) + out2, planes.dtype)                     # (P, Ho, Wo)
    idx = np.empty(y.shape, np.int64)                                          # (P, Ho, Wo)
    split_run(lambda lo, hi: K.max_pool2d_forward(planes[lo:hi], *k, *s, *p, *d, *out2, y[lo:hi],
                                                  idx[lo:hi]), planes.shape[0], grain)
    cache = MaxPoolCache(idx, planes.shape[1:], x_shape, x_shape[:-nd] + out, planes.dtype)
    return y.reshape(x_shape[:-nd] + out), cache


def max_pool_indices(cache: MaxPoolCache) -> np.ndarray:
    """The argmax of every window from a max-pool cache, shaped like the output: the flat index
    ``h*W + w`` (1-D: ``t``) into the input plane, int64 -- torch's ``return_indices``."""
    return cache.idx.reshape(cache.y_shape)


def _max_pool_backward(dy, cache: MaxPoolCache):
    idx, (H, W) = cache.idx, cache.plane
    upstream(dy, cache.y_shape, cache.dtype)
    dy = np.ascontiguousarray(dy).reshape(idx.shape)
    grain = max(1, GRAIN_MACS // max(1, H * W))                                   # planes per thread
    dx = np.empty((idx.shape[0], H, W), dy.dtype)                                 # (P, H, W)
    split_run(lambda lo, hi: K.max_pool2d_backward(dy[lo:hi], idx[lo:hi], H, W, dx[lo:hi]),
              idx.shape[0], grain)
    return dx.reshape(cache.x_shape)


def max_pool1d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    r"""Max over each (dilated) window of the (implicitly ``-inf``-padded) last axis:

    .. math:: y_{n,c,t} = \max_{0\le p<k} x^{\text{pad}}_{n,c,\,st+dp}

    The cache keeps the argmax of every window (the first maximum on ties, as torch;
    :func:`max_pool_indices` returns it).
    """
    return _max_pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode, 1)


def max_pool1d_backward(dy, cache):
    r"""The gradient goes to each window's argmax only:
    :math:`\partial L/\partial x_{n,c,a(t)} \mathrel{+}= \delta_{n,c,t}` (overlapping windows add).
    Returns ``dx`` shaped like ``x``."""
    return _max_pool_backward(dy, cache)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    r"""Max over each (dilated) ``kH x kW`` window of the (implicitly ``-inf``-padded) last two
    axes (LeCun et al. 1998 subsample by averaging; max pooling is the modern default):

    .. math:: y_{n,c,i,j} = \max_{p<k_H,\,q<k_W} x^{\text{pad}}_{n,c,\,s_H i+d_H p,\,s_W j+d_W q}

    The cache keeps the argmax of every window (the first maximum in scan order on ties, as
    torch's CPU kernel; :func:`max_pool_indices` returns it).
    """
    return _max_pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode, 2)


def max_pool2d_backward(dy, cache):
    r"""The gradient goes to each window's argmax only:
    :math:`\partial L/\partial x_{n,c,a(i,j)} \mathrel{+}= \delta_{n,c,i,j}` (overlapping windows
    add). Returns ``dx`` shaped like ``x``."""
    return _max_pool_backward(dy, cache)


def _avg_divisor(spatial, out, k, s, p, count_include_pad, divisor_override, dtype):
    """(Ho, Wo) divisors for 2-D hyperparameters (1-D lifted: H = Ho = k = 1), torch's rule: the window clipped to the padded input (a ``ceil_mode``
    overhang past the padding does not count) when ``count_include_pad``, else to the input
    itself; or ``divisor_override`` everywhere."""
    if divisor_override is not None:
        return np.full(out, divisor_override, dtype=dtype)
    sizes = []
    for size, n, kk, ss, pp in zip(spatial, out, k, s, p):
        start = np.arange(n) * ss - pp
        if count_include_pad:
            sizes.append(np.minimum(start + kk, size + pp) - start)
        else:
            sizes.append(np.minimum(start + kk, size) - np.maximum(start, 0))
    return np.outer(*sizes).astype(dtype)                       # (Ho, Wo); 1-D: Ho = 1


class AvgPoolCache(NamedTuple):
    """What :func:`avg_pool1d_backward` / :func:`avg_pool2d_backward` need (1-D lifted: H = 1)."""
    planes_out: tuple                   # (P, Ho, Wo) the kernel's output shape
    plane: tuple                        # (H, W) of one input plane
    kernel: tuple                       # (kH, kW)
    stride: tuple                       # (sH, sW)
    padding: tuple                      # (pH, pW)
    div: np.ndarray                     # (Ho, Wo) the divisor of each window
    x_shape: tuple                      # the input's shape
    y_shape: tuple                      # the output's shape
    dtype: np.dtype                     # the input's dtype


def _avg_pool_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      divisor_override, nd):
    planes, (k, s, p, _), out, x_shape = _pool_setup(x, kernel_size, stride, padding, 1,
                                                     ceil_mode, nd)
    count_include_pad = boolean(count_include_pad, "count_include_pad")
    if divisor_override is not None:
        divisor_override = positive_int(divisor_override, "divisor_override")
    out2 = (1,) * (2 - nd) + out
    div = _avg_divisor(planes.shape[1:], out2, k, s, p, count_include_pad, divisor_override,
                       planes.dtype)                                           # (Ho, Wo)
    y = K.avg_pool2d_forward(planes, *k, *s, *p, *out2, div)                   # (P, Ho, Wo)
    cache = AvgPoolCache(y.shape, planes.shape[1:], k, s, p, div, x_shape, x_shape[:-nd] + out,
                         planes.dtype)
    return y.reshape(x_shape[:-nd] + out), cache


def _avg_pool_backward(dy, cache: AvgPoolCache):
    H, W = cache.plane
    upstream(dy, cache.y_shape, cache.dtype)
    dx = K.avg_pool2d_backward(np.ascontiguousarray(dy).reshape(cache.planes_out), H, W,
                               *cache.kernel, *cache.stride, *cache.padding, cache.div)
    return dx.reshape(cache.x_shape)


def avg_pool1d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True):
    r"""Mean over each window of the zero-padded last axis:

    .. math:: y_{n,c,t} = \frac{1}{D_t}\sum_{p<k} x^{\text{pad}}_{n,c,\,st+p}

    with divisor :math:`D_t = k` (torch's default ``count_include_pad=True``; a window that
    overhangs the padding under ``ceil_mode`` counts only its part inside the padded input), or
    the number of input entries in the window with ``count_include_pad=False``.
    """
    return _avg_pool_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1)


def avg_pool1d_backward(dy, cache):
    r""":math:`\partial L/\partial x^{\text{pad}}_{n,c,st+p} \mathrel{+}= \delta_{n,c,t}/D_t`, padding
    cropped. Returns ``dx`` shaped like ``x``."""
    return _avg_pool_backward(dy, cache)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    r"""Mean over each ``kH x kW`` window of the zero-padded last two axes (LeCun et al. 1998's
    subsampling):

    .. math:: y_{n,c,i,j} = \frac{1}{D_{ij}}\sum_{p<k_H,\,q<k_W} x^{\text{pad}}_{n,c,\,s_H i+p,\,s_W j+q}

    with :math:`D_{ij} = k_H k_W` by default, the count of input entries in the window with
    ``count_include_pad=False``, or ``divisor_override`` (torch's rules, as
    :func:`avg_pool1d_forward`).
    """
    return _avg_pool_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override, 2)


def avg_pool2d_backward(dy, cache):
    r""":math:`\partial L/\partial x^{\text{pad}}_{n,c,s_H i+p,s_W j+q} \mathrel{+}=
    \delta_{n,c,i,j}/D_{ij}`, padding cropped. Returns ``dx`` shaped like ``x``."""
    return _avg_pool_backward(dy, cache)


for _f, _kind, _nd in ((max_pool1d_forward, "-inf", 1), (max_pool2d_forward, "-inf", 2),
                       (avg_pool1d_forward, "zero", 1), (avg_pool2d_forward, "zero", 2)):
    _f.__doc__ += _pool_doc(_kind, _nd)
del _f, _kind, _nd
