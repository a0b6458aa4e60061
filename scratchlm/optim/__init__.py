r"""Optimizers, learning-rate schedules, gradient clipping and weight penalties, with
``torch.optim``'s names, arguments, defaults, state layout and update rules.

The loop is PyTorch's::

    opt = AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sched = WarmupCosineLR(opt, warmup_steps=100, total_steps=5000, min_lr=3e-5)
    for batch in data:
        opt.zero_grad()
        loss = loss_fn(model(x), y); model.backward(loss_fn.backward())
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()

Update rules (gradient :math:`g_t`, learning rate :math:`\gamma`; details in each module):

.. math::

    \text{SGD:}\quad & b_t = \mu b_{t-1} + (1-\tau)(g_t + \lambda\theta_{t-1}),\quad
        \theta_t = \theta_{t-1} - \gamma\,b_t \ \ (\text{Nesterov: } \gamma(g_t + \mu b_t)) \\
    \text{Adam:}\quad & m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        \theta_t = \theta_{t-1} - \gamma\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}
        + \epsilon} \\
    \text{AdamW:}\quad & \text{Adam with } \theta_{t-1} \leftarrow (1-\gamma\lambda)\,
        \theta_{t-1} \text{ before the update, instead of } g_t \leftarrow g_t + \lambda\theta_{t-1}

References: Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum
in deep learning" (ICML 2013) -- Nesterov momentum; Kingma & Ba, "Adam: A Method for Stochastic
Optimization" (ICLR 2015); Loshchilov & Hutter, "Decoupled Weight Decay Regularization"
(ICLR 2019) -- AdamW.
"""

from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_, grad_norm
from .lr_scheduler import LambdaLR, LRScheduler, StepLR, WarmupCosineLR, cosine_with_warmup
from .optimizer import Optimizer
from .penalty import L1Penalty, L2Penalty
from .sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW",
    "clip_grad_norm_", "clip_grad_value_", "grad_norm",
    "L1Penalty", "L2Penalty",
    "LRScheduler", "StepLR", "LambdaLR", "WarmupCosineLR", "cosine_with_warmup",
]
