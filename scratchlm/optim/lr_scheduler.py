r"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s protocol.

A scheduler rewrites ``group['lr']`` of each of its optimizer's param groups. Constructing one
(with the default ``last_epoch=-1``) stores each group's current ``lr`` as ``group['initial_lr']``
(kept if already there), copies those into ``base_lrs`` and takes step 0, so ``group['lr']``
already holds the schedule's value at step 0. Call ``scheduler.step()`` once after every
``optimizer.step()``; ``get_last_lr()`` returns the current rates.

``StepLR`` and ``LambdaLR`` reproduce PyTorch's classes of the same names number for number;
``WarmupCosineLR`` is linear warm-up followed by cosine decay (the nanoGPT schedule), built as a
``LambdaLR`` so it equals ``torch.optim.lr_scheduler.LambdaLR`` given the same lambdas.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import types

from .._checks import positive_int
from .optimizer import Optimizer, check_nonnegative

__all__ = ["LRScheduler", "StepLR", "LambdaLR", "WarmupCosineLR", "cosine_with_warmup"]


def cosine_with_warmup(step, base_lr, warmup_steps, total_steps, min_lr=0.0) -> float:
    r"""The learning rate at step :math:`t` (counting from 0) of linear warm-up + cosine decay.

    With peak :math:`\eta_{\max}` = ``base_lr``, floor :math:`\eta_{\min}` = ``min_lr``,
    :math:`W` = ``warmup_steps`` and :math:`T` = ``total_steps`` (:math:`T > W \ge 0`):

    .. math::

        \eta_t = \begin{cases}
            \eta_{\max}\,\dfrac{t+1}{W+1} & t < W \\[1ex]
            \eta_{\min} + \tfrac12\,(\eta_{\max}-\eta_{\min})
                \Big(1 + \cos\!\Big(\pi\,\dfrac{t-W}{T-W}\Big)\Big) & W \le t \le T \\[1ex]
            \eta_{\min} & t > T
        \end{cases}

    Warm-up climbs from :math:`\eta_{\max}/(W+1)` (never 0) to :math:`\eta_{\max}W/(W+1)`; the
    peak :math:`\eta_{\max}` is reached at :math:`t = W` and the floor at :math:`t = T`.
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    warmup_steps = positive_int(warmup_steps, "warmup_steps", minimum=0)
    total_steps = positive_int(total_steps, "total_steps", minimum=1)
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be > warmup_steps ({warmup_steps}), got {total_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if step > total_steps:
        return min_lr
    ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (base_lr - min_lr)


def _check_like(current, new, where) -> None:
    """``new`` (a loaded value) must have the type of ``current`` (the scheduler's own value):
    bool, int, real (finite), str, or a list/dict of such of the same length/keys."""
    if isinstance(current, bool):
        ok = isinstance(new, bool)
    elif isinstance(current, numbers.Integral):
        ok = isinstance(new, numbers.Integral) and not isinstance(new, bool)
    elif isinstance(current, numbers.Real):
        ok = isinstance(new, numbers.Real) and not isinstance(new, bool) and math.isfinite(new)
    elif isinstance(current, str):
        ok = isinstance(new, str)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(new, (list, tuple)) and len(new) == len(current)
        if ok:
            for i, (c, v) in enumerate(zip(current, new)):
                _check_like(c, v, f"{where}[{i}]")
    elif isinstance(current, dict):
        ok = isinstance(new, dict) and set(new) == set(current)
        if ok:
            for k in current:
                _check_like(current[k], new[k], f"{where}[{k!r}]")
    elif current is None:
        ok = new is None or isinstance(new, (bool, numbers.Real, str))
    else:
        ok = type(new) is type(current)
    if not ok:
        what = (f"{len(current)} entries" if isinstance(current, (list, tuple, dict))
                else type(current).__name__)
        raise (ValueError if isinstance(current, (list, tuple, dict)) and isinstance(
            new, (list, tuple, dict)) or isinstance(new, numbers.Real) else TypeError)(
            f"{where}: expected {what}, got {new!r}"[:300])


class LRScheduler:
    """Base class: subclasses implement ``get_lr()``, the rates at ``self.last_epoch``.

    ``last_epoch=-1`` starts a schedule; another value resumes one and then every group must
    already hold ``'initial_lr'`` (``KeyError`` otherwise, as in PyTorch). ``state_dict()`` is
    every attribute but the optimizer; ``load_state_dict`` restores them.
    """

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a scratchlm Optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) \
                or last_epoch < -1:
            raise ValueError(f"last_epoch must be an int >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                        "a scheduler with last_epoch >= 0: load the optimizer's state first"
                    )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self.step()

    def get_lr(self) -> list:
        """The learning rate of each param group at step ``self.last_epoch``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def step(self) -> None:
        """Advance one step and write the new rates into the optimizer's param groups."""
        self._step_count += 1
        self.last_epoch += 1
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list:
        """The rates the last ``step()`` set, one per param group."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned. All or nothing: the keys must be exactly
        this scheduler's and every value of the type it holds (an int step, one rate per param
        group, ...), checked before anything is written; otherwise ``ValueError`` (or
        ``TypeError``) naming the key, and the scheduler is left as it was."""
        self.__dict__.update(self._check_state_dict(state_dict))

    def _check_state_dict(self, state_dict, own=None) -> dict:
        """The checked copy of ``state_dict`` that :meth:`load_state_dict` writes; ``own`` is
        the state it must look like (default this scheduler's ``state_dict()``)."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{owner}: state_dict must be a dict (what state_dict() returns), got "
                            f"{type(state_dict).__name__}")
        own = self.state_dict() if own is None else own
        unknown = sorted(str(k) for k in state_dict if k not in own)
        missing = sorted(k for k in own if k not in state_dict)
        if unknown or missing:
            raise ValueError(f"{owner}: the state does not fit this scheduler: " + "; ".join(
                p for p in (unknown and f"unexpected keys {unknown}",
                            missing and f"missing keys {missing}") if p))
        for k, v in state_dict.items():
            _check_like(own[k], v, f"{owner}: {k}")
        n = len(self.optimizer.param_groups)
        if state_dict["last_epoch"] < -1:
            raise ValueError(f"{owner}: last_epoch must be >= -1, got {state_dict['last_epoch']}")
        if state_dict["_step_count"] < 0:
            raise ValueError(f"{owner}: _step_count must be >= 0, got {state_dict['_step_count']}")
        for k in ("base_lrs", "_last_lr"):
            if k in state_dict:
                for lr in state_dict[k]:
                    check_nonnegative(lr, k, owner)
                if len(state_dict[k]) != n:
                    raise ValueError(f"{owner}: {k} must hold one rate per param group ({n}), got "
                                     f"{len(state_dict[k])}")
        return copy.deepcopy(state_dict)


class StepLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` every ``step_size`` steps:
    :math:`\eta_t = \eta_0\,\gamma^{\lfloor t / s \rfloor}` (applied incrementally to the current
    ``group['lr']``, exactly as ``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = positive_int(step_size, "step_size")
        self.gamma = check_nonnegative(gamma, "gamma", "StepLR")
        super().__init__(optimizer, last_epoch)

    def _check_state_dict(self, state_dict, own=None):
        values = super()._check_state_dict(state_dict, own)
        positive_int(values["step_size"], "step_size")
        check_nonnegative(values["gamma"], "gamma", "StepLR.load_state_dict")
        return values

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]


class LambdaLR(LRScheduler):
    r""":math:`\eta_t = \eta_0 \cdot \lambda(t)`: ``lr_lambda`` is a function of the step (or a
    list of them, one per param group), as ``torch.optim.lr_scheduler.LambdaLR``.

    ``state_dict`` saves the ``__dict__`` of lambdas that are callable objects, and ``None`` for
    plain functions and lambdas (which cannot be saved), as PyTorch does.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 0
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas (one per param group), but got "
                                 f"{len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas,
                                                                       self.base_lrs)]

    def state_dict(self):
        sd = {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}
        sd["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
                            for fn in self.lr_lambdas]
        return sd

    def load_state_dict(self, state_dict):
        """As :meth:`LRScheduler.load_state_dict`; ``lr_lambdas`` holds one entry per lambda
        (``None``, or the ``__dict__`` of a callable object), restored into the lambdas."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{owner}: state_dict must be a dict (what state_dict() returns), got "
                            f"{type(state_dict).__name__}")
        state_dict = dict(state_dict)
        saved = state_dict.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"{owner}: lr_lambdas must hold one entry per lambda "
                             f"({len(self.lr_lambdas)}), got {saved!r}"[:300])
        for i, (fn, d) in enumerate(zip(self.lr_lambdas, saved)):
            if d is None:
                continue
            if not (isinstance(d, dict) and all(isinstance(k, str) for k in d)):
                raise ValueError(f"{owner}: lr_lambdas[{i}] must be None or a dict of attributes, "
                                 f"got {type(d).__name__}")
            if not hasattr(fn, "__dict__") or isinstance(fn, types.FunctionType):
                raise ValueError(f"{owner}: lr_lambdas[{i}] holds attributes, but this "
                                 f"scheduler's lambda {i} is a plain function")
        own = {k: v for k, v in LRScheduler.state_dict(self).items() if k != "lr_lambdas"}
        values = self._check_state_dict(state_dict, own)
        self.__dict__.update(values)
        for fn, d in zip(self.lr_lambdas, saved):
            if d is not None:
                fn.__dict__.update(copy.deepcopy(d))


class WarmupCosineLR(LambdaLR):
    r"""Linear warm-up then cosine decay to ``min_lr`` (:func:`cosine_with_warmup`), per group.

    For a group with initial rate :math:`\eta_0` and floor :math:`\eta_{\min}` the multiplier is
    :math:`\lambda(t)` = ``cosine_with_warmup(t, 1.0, W, T, min_lr / eta_0)``, i.e.

    .. math::

        \lambda(t) = \begin{cases}
            \dfrac{t+1}{W+1} & t < W \\[1ex]
            \rho + \tfrac12 (1-\rho)\Big(1 + \cos\!\Big(\pi\,\dfrac{t-W}{T-W}\Big)\Big)
                & W \le t \le T \\[1ex]
            \rho & t > T
        \end{cases}
        \qquad \rho = \frac{\eta_{\min}}{\eta_0}, \qquad \eta_t = \eta_0\,\lambda(t),

    which is :func:`cosine_with_warmup` with ``base_lr`` :math:`=\eta_0` up to rounding. The
    lambdas are in ``self.lr_lambdas``: ``torch.optim.lr_scheduler.LambdaLR`` given them yields
    the same rates bit for bit. ``min_lr`` is an absolute rate (one for all groups, or a list),
    and must not exceed any group's initial lr.
    """

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr=0.0, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"WarmupCosineLR: optimizer must be a scratchlm Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.warmup_steps = positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.total_steps = positive_int(total_steps, "total_steps", minimum=1)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(f"total_steps must be > warmup_steps ({self.warmup_steps}), got "
                             f"{self.total_steps}")
        groups = optimizer.param_groups
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"min_lr must have one value per param group ({len(groups)}), "
                                 f"got {len(min_lr)}")
            min_lrs = list(min_lr)
        else:
            min_lrs = [min_lr] * len(groups)
        self.min_lrs = [check_nonnegative(m, "min_lr", "WarmupCosineLR") for m in min_lrs]
        initial = [g.get("initial_lr", g["lr"]) if last_epoch == -1 else g.get("initial_lr")
                   for g in groups]
        super().__init__(optimizer, self._build_lambdas(initial), last_epoch)

    def _build_lambdas(self, base_lrs, min_lrs=None, warmup_steps=None, total_steps=None):
        min_lrs = self.min_lrs if min_lrs is None else min_lrs
        warmup_steps = self.warmup_steps if warmup_steps is None else warmup_steps
        total_steps = self.total_steps if total_steps is None else total_steps
        lambdas = []
        for i, (base, floor) in enumerate(zip(base_lrs, min_lrs)):
            if base is None:  # resuming without 'initial_lr': the base class raises the KeyError
                ratio = 0.0
            elif floor > base:
                raise ValueError(f"min_lr must be <= the initial lr of every param group, got "
                                 f"min_lr={floor} > {base} in param group {i}")
            else:
                ratio = floor / base if base > 0 else 0.0
            lambdas.append(functools.partial(cosine_with_warmup, base_lr=1.0,
                                             warmup_steps=warmup_steps,
                                             total_steps=total_steps, min_lr=ratio))
        return lambdas

    def state_dict(self):
        return {k: v for k, v in LRScheduler.state_dict(self).items() if k != "lr_lambdas"}

    def load_state_dict(self, state_dict):
        """As :meth:`LRScheduler.load_state_dict`; the lambdas are rebuilt from the loaded
        ``warmup_steps``, ``total_steps``, ``min_lrs`` and ``base_lrs`` (checked first)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"WarmupCosineLR.load_state_dict: state_dict must be a dict (what "
                            f"state_dict() returns), got {type(state_dict).__name__}")
        state_dict = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}
        values = LRScheduler._check_state_dict(self, state_dict, self.state_dict())
        owner = "WarmupCosineLR.load_state_dict"
        warmup = positive_int(values["warmup_steps"], "warmup_steps", minimum=0)
        total = positive_int(values["total_steps"], "total_steps", minimum=1)
        if total <= warmup:
            raise ValueError(f"{owner}: total_steps must be > warmup_steps ({warmup}), got {total}")
        if len(values["min_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{owner}: min_lrs must hold one rate per param group")
        for m in values["min_lrs"]:
            check_nonnegative(m, "min_lr", owner)
        lambdas = self._build_lambdas(values["base_lrs"], values["min_lrs"], warmup, total)
        self.__dict__.update(values)
        self.lr_lambdas = lambdas
