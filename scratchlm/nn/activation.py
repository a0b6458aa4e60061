"""Activation layers: ``ReLU``, ``Tanh``, ``Sigmoid``, ``GELU``, ``Softmax``, ``LogSoftmax``.

Parameter-free; any float dtype passes through unchanged. The mathematics is in
``scratchlm.functional.activation`` and ``scratchlm.functional.softmax``.
"""

from .. import functional as F
from .._checks import choice, integer
from .module import Module


class _Elementwise(Module):
    _forward = None
    _backward = None

    def forward(self, x):
        y, self._cache = type(self)._forward(x)
        return y

    def backward(self, dy):
        return type(self)._backward(dy, self._saved())


class ReLU(_Elementwise):
    r""":math:`\max(x, 0)`."""
    _forward = staticmethod(F.relu_forward)
    _backward = staticmethod(F.relu_backward)


class Tanh(_Elementwise):
    r""":math:`\tanh x`."""
    _forward = staticmethod(F.tanh_forward)
    _backward = staticmethod(F.tanh_backward)


class Sigmoid(_Elementwise):
    r""":math:`1 / (1 + e^{-x})`."""
    _forward = staticmethod(F.sigmoid_forward)
    _backward = staticmethod(F.sigmoid_backward)


class GELU(Module):
    r"""GELU; ``approximate='none'`` (exact, erf) or ``'tanh'`` (GPT-2's), as torch.nn.GELU."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = choice(approximate, "approximate", ("none", "tanh"))

    def forward(self, x):
        y, self._cache = F.gelu_forward(x, self.approximate)
        return y

    def backward(self, dy):
        return F.gelu_backward(dy, self._saved())

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    r"""SiLU (swish), :math:`x\,\sigma(x)`, as torch.nn.SiLU."""

    def forward(self, x):
        y, self._cache = F.silu_forward(x)
        return y

    def backward(self, dy):
        return F.silu_backward(dy, self._saved())


class Softmax(Module):
    r"""Softmax along ``dim`` (default the last axis; torch's ``dim=None`` default, deprecated
    there, is not offered)."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = integer(dim, "dim")

    def forward(self, x):
        y, self._cache = F.softmax_forward(x, self.dim)
        return y

    def backward(self, dy):
        return F.softmax_backward(dy, self._saved())

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    r"""Log-softmax along ``dim`` (default the last axis)."""

    def forward(self, x):
        y, self._cache = F.log_softmax_forward(x, self.dim)
        return y

    def backward(self, dy):
        return F.log_softmax_backward(dy, self._saved())
