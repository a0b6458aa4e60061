"""``Conv1d``, ``Conv2d``, ``MaxPool1d/2d``, ``AvgPool1d/2d`` (torch.nn's arguments, parameter names,
shapes and initialisation). The mathematics is in :mod:`scratchlm.functional.conv`."""

import math

import numpy as np

from .. import functional as F
from .._checks import boolean, choice, make_rng, positive_int, resolve_dtype, same_dtype
from ..functional.conv import METHODS, _conv_padding, _ntuple
from .module import Module, Parameter


class _ConvNd(Module):
    _nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None,
                 method="auto"):
        super().__init__()
        nd = self._nd
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = _ntuple(kernel_size, "kernel_size", nd, 1)
        self.stride = _ntuple(stride, "stride", nd, 1)
        self.dilation = _ntuple(dilation, "dilation", nd, 1)
        self.groups = positive_int(groups, "groups")
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels must be divisible by groups, got in_channels="
                             f"{self.in_channels} and groups={self.groups}")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels must be divisible by groups, got out_channels="
                             f"{self.out_channels} and groups={self.groups}")
        _conv_padding(padding, nd, self.kernel_size, self.stride, self.dilation)   # validates
        self.padding = padding if isinstance(padding, str) else _ntuple(padding, "padding", nd, 0)
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (the only mode implemented), "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.method = choice(method, "method", METHODS)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)              # kaiming_uniform(a=sqrt(5)), as torch
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, self.out_channels).astype(self.dtype)) \
            if boolean(bias, "bias") else None

    def forward(self, x):
        x = np.asarray(x) if isinstance(x, list) else x
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            same_dtype(x, "x", self.weight.dtype, type(self).__name__)
        forward = F.conv1d_forward if self._nd == 1 else F.conv2d_forward
        y, self._cache = forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                                 self.stride, self.padding, self.dilation, self.groups, self.method)
        return y

    def backward(self, dy):
        backward = F.conv1d_backward if self._nd == 1 else F.conv2d_backward
        dx, dw, db = backward(dy, self._saved())
        if self.weight.requires_grad:
            self.weight.grad += dw
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.method != "auto":
            s += f", method={self.method!r}"
        return s


class Conv1d(_ConvNd):
    r"""1-D convolution over ``(N, C_in, L)`` (or unbatched ``(C_in, L)``) -> ``(N, C_out, L_out)``:

    :math:`y_{n,o,t} = b_o + \sum_{c,p} W_{o,c,p}\, x^{\text{pad}}_{n,\,g(o)C_{in}/G + c,\, s t + d p}`,
    :math:`L_\text{out} = \lfloor (L + 2p - d(k-1) - 1)/s \rfloor + 1`.

    Args (torch.nn.Conv1d's): in_channels, out_channels, kernel_size, stride=1, padding=0 (int,
    ``'same'`` or ``'valid'``), dilation=1, groups=1, bias=True, padding_mode='zeros' (the only
    one), plus dtype (float32 default, or float64), rng (Generator or seed) and method
    (``'auto'``, ``'im2col'`` or ``'direct'``; see :func:`scratchlm.functional.conv.choose_method`).

    Parameters: ``weight`` ``(out_channels, in_channels/groups, kernel_size)`` and ``bias``
    ``(out_channels,)``, both drawn from :math:`U(\pm 1/\sqrt{\text{fan\_in}})` with
    ``fan_in = in_channels/groups * kernel_size`` (torch's kaiming-uniform, ``a = sqrt(5)``).
    """

    _nd = 1


class Conv2d(_ConvNd):
    r"""2-D convolution over ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``) ->
    ``(N, C_out, H_out, W_out)`` (LeCun et al. 1998):

    :math:`y_{n,o,i,j} = b_o + \sum_{c,p,q} W_{o,c,p,q}\,
    x^{\text{pad}}_{n,\,g(o)C_{in}/G + c,\, s_H i + d_H p,\, s_W j + d_W q}`,
    :math:`H_\text{out} = \lfloor (H + 2p_H - d_H(k_H-1) - 1)/s_H \rfloor + 1` (likewise W).

    Args (torch.nn.Conv2d's): in_channels, out_channels, kernel_size (int or pair), stride=1,
    padding=0 (int, pair, ``'same'`` or ``'valid'``), dilation=1, groups=1, bias=True,
    padding_mode='zeros' (the only one), plus dtype, rng and method as :class:`Conv1d`.

    Parameters: ``weight`` ``(out_channels, in_channels/groups, kH, kW)`` and ``bias``
    ``(out_channels,)``, both from :math:`U(\pm 1/\sqrt{\text{fan\_in}})`,
    ``fan_in = in_channels/groups * kH * kW``.
    """

    _nd = 2


class _PoolNd(Module):
    _nd = 0

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        nd = self._nd
        self.kernel_size = _ntuple(kernel_size, "kernel_size", nd, 1)
        self.stride = self.kernel_size if stride is None else _ntuple(stride, "stride", nd, 1)
        self.padding = _ntuple(padding, "padding", nd, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be at most half of kernel_size (as in torch), got "
                             f"padding={self.padding} and kernel_size={self.kernel_size}")
        self.ceil_mode = boolean(ceil_mode, "ceil_mode")

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class _MaxPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation = _ntuple(dilation, "dilation", self._nd, 1)
        self.return_indices = boolean(return_indices, "return_indices")

    def forward(self, x):
        forward = getattr(F, f"max_pool{self._nd}d_forward")
        y, self._cache = forward(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                 self.ceil_mode)
        return (y, F.max_pool_indices(self._cache)) if self.return_indices else y

    def backward(self, dy):
        return getattr(F, f"max_pool{self._nd}d_backward")(dy, self._saved())

    def extra_repr(self):
        return super().extra_repr() + f", dilation={self.dilation}"


class MaxPool1d(_MaxPoolNd):
    """Max over (dilated) windows of the last axis: ``(N, C, L)`` -> ``(N, C, L_out)``,
    ``L_out = floor((L + 2p - d(k-1) - 1)/s) + 1`` (the ceiling with ``ceil_mode``); padding
    counts as ``-inf``. The gradient goes to each window's maximum (the first one on ties, as
    torch). torch.nn.MaxPool1d's arguments: ``kernel_size, stride=None (= kernel_size),
    padding=0, dilation=1, return_indices=False, ceil_mode=False``. With ``return_indices``
    the forward returns ``(y, indices)``, the argmax of each window as a flat index into the
    input's last axis (int64, torch's convention); ``backward`` still takes ``dy`` alone.
    Either float dtype, kept."""

    _nd = 1


class MaxPool2d(_MaxPoolNd):
    """Max over (dilated) ``kH x kW`` windows: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``; as
    :class:`MaxPool1d` on two axes (torch.nn.MaxPool2d's arguments; ``indices`` are flat
    ``h*W + w`` into each input plane)."""

    _nd = 2


class _AvgPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = boolean(count_include_pad, "count_include_pad")
        self.divisor_override = (None if divisor_override is None
                                 else positive_int(divisor_override, "divisor_override"))

    def forward(self, x):
        extra = () if self._nd == 1 else (self.divisor_override,)
        forward = getattr(F, f"avg_pool{self._nd}d_forward")
        y, self._cache = forward(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                 self.count_include_pad, *extra)
        return y

    def backward(self, dy):
        return getattr(F, f"avg_pool{self._nd}d_backward")(dy, self._saved())

    def extra_repr(self):
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class AvgPool1d(_AvgPoolNd):
    """Mean over windows of the last axis: ``(N, C, L)`` -> ``(N, C, L_out)``. By default padding
    counts as zeros in the mean (torch's ``count_include_pad=True``: the divisor is ``k``, or
    the part of the window inside the padded input when a ``ceil_mode`` window overhangs it);
    with ``count_include_pad=False`` the divisor is the number of input entries in the window.
    torch.nn.AvgPool1d's arguments: ``kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True``."""

    _nd = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """Mean over ``kH x kW`` windows: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)``; as
    :class:`AvgPool1d` on two axes, plus torch.nn.AvgPool2d's ``divisor_override`` (a fixed
    divisor for every window)."""

    _nd = 2
