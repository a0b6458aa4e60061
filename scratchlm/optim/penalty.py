r"""Weight penalties as forward/backward pairs, like the loss modules:
``value = penalty(parameters)`` is a float to add to the loss, and ``penalty.backward()``
*adds* its gradient into every ``param.grad``.

.. math::

    \text{L1:}\quad R(\theta) = c \sum_i |\theta_i|, \qquad
        \frac{\partial R}{\partial \theta_i} = c\,\operatorname{sign}(\theta_i)

    \text{L2:}\quad R(\theta) = \frac{c}{2} \sum_i \theta_i^2, \qquad
        \frac{\partial R}{\partial \theta_i} = c\,\theta_i

The L2 penalty carries the factor :math:`\tfrac12` so that its gradient :math:`c\,\theta` is
exactly what ``SGD(weight_decay=c)`` (and ``Adam(weight_decay=c)``) add to the gradient: one
step with ``L2Penalty(c)`` and ``weight_decay=0`` equals one step with ``weight_decay=c``. It is
*not* AdamW's decoupled decay. At :math:`\theta_i = 0` the L1 gradient is the subgradient 0
(``sign(0) = 0``), as PyTorch's ``abs`` backward.
"""

from __future__ import annotations

import math

import numpy as np

from ..nn.module import Module, Parameter
from .optimizer import check_nonnegative

__all__ = ["L1Penalty", "L2Penalty"]


class _Penalty(Module):
    differentiable_inputs = ()  # the gradient goes into param.grad, not to an input

    def __init__(self, coeff):
        super().__init__()
        self.coeff = check_nonnegative(coeff, "coeff", type(self).__name__)

    def forward(self, parameters) -> float:
        """``parameters``: a Parameter, an iterable of them, or a Module. Returns the penalty."""
        if isinstance(parameters, Module):
            parameters = parameters.parameters()
        if isinstance(parameters, Parameter):
            parameters = [parameters]
        params = list(parameters)
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: parameters must be Parameters, but "
                                f"entry {i} is a {type(p).__name__}")
        self._cache = params
        return self.coeff * sum(self._value(p.data.reshape(-1)) for p in params)

    def backward(self, dvalue=1.0) -> None:
        """Add ``dvalue * dR/dtheta`` into each ``param.grad`` (reading the parameters' current
        data: call it before ``optimizer.step()``). Returns None: there is no input gradient."""
        params = self._saved()
        dvalue = float(dvalue)
        if not math.isfinite(dvalue):
            raise ValueError(f"{type(self).__name__}.backward: dvalue must be finite, got {dvalue}")
        scale = dvalue * self.coeff
        for p in params:
            if not p.requires_grad:
                continue                                  # frozen: no gradient
            if p.grad is None:
                p.grad = np.zeros_like(p.data)
            self._accumulate(p, scale)
        return None

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class L1Penalty(_Penalty):
    r""":math:`R = c\sum_i|\theta_i|`; ``backward`` adds :math:`c\,\operatorname{sign}(\theta)`
    to each ``param.grad``."""

    @staticmethod
    def _value(flat):
        return float(np.abs(flat).sum(dtype=np.float64))

    @staticmethod
    def _accumulate(p, scale):
        p.grad += scale * np.sign(p.data)


class L2Penalty(_Penalty):
    r""":math:`R = \tfrac{c}{2}\sum_i\theta_i^2`; ``backward`` adds :math:`c\,\theta` to each
    ``param.grad`` -- the same term ``SGD(weight_decay=c)`` adds."""

    @staticmethod
    def _value(flat):
        flat = flat.astype(np.float64, copy=False)
        return 0.5 * float(np.dot(flat, flat))

    @staticmethod
    def _accumulate(p, scale):
        p.grad += scale * p.data
