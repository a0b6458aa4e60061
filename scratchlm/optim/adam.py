r"""Adam and AdamW: ``torch.optim.Adam`` / ``torch.optim.AdamW``'s rule, one fused pass per
parameter (:func:`scratchlm.kernels.optim.adam_update`, Numba with a NumPy twin).

With learning rate :math:`\gamma`, decay rates :math:`\beta_1, \beta_2`, :math:`\epsilon` and
weight decay :math:`\lambda`, step :math:`t = 1, 2, \dots` on parameter :math:`\theta` with
gradient :math:`g_t` (negated first when ``maximize``) does

.. math::

    g_t &\leftarrow g_t + \lambda\,\theta_{t-1}
        && \text{(Adam: L2 penalty folded into the gradient)} \\
    \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
        && \text{(AdamW: decoupled weight decay)} \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
    \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(amsgrad)}, \qquad \text{else } \hat v_t = v_t \\
    \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
        \frac{m_t}{\sqrt{\hat v_t}\,/\sqrt{1-\beta_2^t} + \epsilon}

with :math:`m_0 = v_0 = \hat v_0 = 0`. The bias corrections :math:`1-\beta_i^t` undo the
zero initialisation of the moments; :math:`\epsilon` is added *after* correcting :math:`v`, as
in PyTorch.

References: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015); Loshchilov &
Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019) for AdamW; Reddi, Kale & Kumar, "On the
Convergence of Adam and Beyond" (ICLR 2018) for amsgrad.
"""

from __future__ import annotations

import numpy as np

from ..kernels.optim import adam_update
from .optimizer import Optimizer, check_bool, check_nonnegative, check_unit_interval

__all__ = ["Adam", "AdamW"]


def _flat(a: np.ndarray) -> np.ndarray:
    """A flat (n,) view of a C-contiguous array (no copy: the kernel updates it in place)."""
    if not a.flags.c_contiguous:
        raise ValueError("optimizer state arrays must be C-contiguous")
    return a.reshape(-1)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
    maximize=False, decoupled_weight_decay=False)`` -- arguments, defaults and update as
    ``torch.optim.Adam`` (``decoupled_weight_decay=True`` is AdamW, as in PyTorch).

    Per-parameter state, PyTorch's names: ``'step'`` (int), ``'exp_avg'`` (:math:`m`),
    ``'exp_avg_sq'`` (:math:`v`) and, with amsgrad, ``'max_exp_avg_sq'`` (:math:`\\hat v`): arrays
    of the parameter's shape and dtype (float32 parameters keep float32 state).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _validate(self, group, owner):
        check_nonnegative(group["lr"], "lr", owner)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        check_unit_interval(betas[0], "betas[0]", owner)
        check_unit_interval(betas[1], "betas[1]", owner)
        check_nonnegative(group["eps"], "eps", owner)
        check_nonnegative(group["weight_decay"], "weight_decay", owner)
        check_bool(group["amsgrad"], "amsgrad", owner)
        check_bool(group["maximize"], "maximize", owner)
        check_bool(group["decoupled_weight_decay"], "decoupled_weight_decay", owner)

    def step(self, closure=None):
        """One Adam step over every parameter with a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr = float(group["lr"])
            beta1, beta2 = (float(b) for b in group["betas"])
            eps = float(group["eps"])
            weight_decay = float(group["weight_decay"])
            amsgrad = bool(group["amsgrad"])
            maximize = bool(group["maximize"])
            decoupled = bool(group["decoupled_weight_decay"])
            for p in group["params"]:
                grad = self._grad(p)
                if grad is None:
                    continue
                g = np.negative(grad) if maximize else np.ascontiguousarray(grad)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data, order="C")
                    state["exp_avg_sq"] = np.zeros_like(p.data, order="C")
                    if amsgrad:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data, order="C")
                elif amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = np.zeros_like(p.data, order="C")
                state["step"] += 1
                t = state["step"]
                bc1 = 1.0 - beta1 ** t
                bc2 = 1.0 - beta2 ** t

                data = p.data
                contiguous = data.flags.c_contiguous
                flat_p = data.reshape(-1) if contiguous else np.ascontiguousarray(data).reshape(-1)
                m = _flat(state["exp_avg"])
                v = _flat(state["exp_avg_sq"])
                vmax = _flat(state["max_exp_avg_sq"]) if amsgrad else v
                adam_update(flat_p, _flat(np.ascontiguousarray(g)), m, v, vmax, lr, beta1, beta2,
                            eps, weight_decay, decoupled, amsgrad, bc1, bc2)
                if not contiguous:
                    data[...] = flat_p.reshape(data.shape)
        return loss


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
    *, maximize=False)`` -- Adam with decoupled weight decay
    :math:`\\theta \\leftarrow (1-\\gamma\\lambda)\\theta` before the moment update, as
    ``torch.optim.AdamW`` (note the default ``weight_decay=1e-2``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)
