r"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay:
``torch.optim.SGD``'s rule, step for step.

With learning rate :math:`\gamma`, momentum :math:`\mu`, dampening :math:`\tau` and weight
decay :math:`\lambda`, each step on parameter :math:`\theta` with gradient :math:`g_t` does

.. math::

    g_t &\leftarrow -g_t \quad \text{(maximize only)} \\
    g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \quad (\lambda \ne 0) \\
    b_t &= \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-\tau)\, g_t & t > 1 \end{cases}
        \quad (\mu \ne 0) \\
    g_t &\leftarrow \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}
        \end{cases} \\
    \theta_t &= \theta_{t-1} - \gamma\, g_t

The first step stores the (decayed) gradient itself as the buffer, undamped, exactly as PyTorch
does. The Nesterov form is PyTorch's reformulation of Sutskever, Martens, Dahl & Hinton, "On the
importance of initialization and momentum in deep learning" (ICML 2013). Weight decay here is the
L2 penalty :math:`\tfrac{\lambda}{2}\lVert\theta\rVert^2` folded into the gradient (see
:class:`~scratchlm.optim.L2Penalty`).
"""

from __future__ import annotations

import numpy as np

from .optimizer import Optimizer, check_bool, check_nonnegative, _real

__all__ = ["SGD"]


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
    maximize=False)`` -- arguments, defaults and update as ``torch.optim.SGD``.

    Per-parameter state: ``'momentum_buffer'`` (only when ``momentum != 0``), created on the
    first step. ``nesterov=True`` requires ``momentum > 0`` and ``dampening == 0``.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _validate(self, group, owner):
        check_nonnegative(group["lr"], "lr", owner)
        momentum = check_nonnegative(group["momentum"], "momentum", owner)
        dampening = _real(group["dampening"], "dampening", owner)
        check_nonnegative(group["weight_decay"], "weight_decay", owner)
        nesterov = check_bool(group["nesterov"], "nesterov", owner)
        check_bool(group["maximize"], "maximize", owner)
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError(
                f"{owner}: nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']} and dampening={group['dampening']}"
            )

    def step(self, closure=None):
        """One SGD step over every parameter with a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            dampening = float(group["dampening"])
            weight_decay = float(group["weight_decay"])
            nesterov = bool(group["nesterov"])
            maximize = bool(group["maximize"])
            for p in group["params"]:
                d_p = self._grad(p)
                if d_p is None:
                    continue
                if maximize:
                    d_p = -d_p                      # a new array: p.grad is left alone
                if weight_decay != 0.0:
                    d_p = d_p + weight_decay * p.data
                if momentum != 0.0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = np.array(d_p, dtype=p.data.dtype, order="C", copy=True)
                        state["momentum_buffer"] = buf
                    else:
                        buf *= momentum
                        buf += (1.0 - dampening) * d_p
                    d_p = d_p + momentum * buf if nesterov else buf
                p.data -= lr * d_p
        return loss
