r"""``Optimizer``: the base class every optimizer shares, with ``torch.optim.Optimizer``'s layout.

An optimizer holds

* ``param_groups`` -- a list of dicts, each with ``'params'`` (a list of
  :class:`~scratchlm.nn.Parameter`) and every hyperparameter (per-group values override the
  constructor's defaults, as in PyTorch: ``SGD([{'params': a}, {'params': b, 'lr': 1e-2}],
  lr=1e-3)``);
* ``state`` -- a dict keyed by the ``Parameter`` object itself, holding that parameter's
  running buffers (NumPy arrays of the parameter's shape and dtype) and counters (ints).

``step()`` applies one update to every parameter from its accumulated ``param.grad`` (a frozen
one, ``requires_grad=False``, is passed by: no update, no state);
``zero_grad()`` sets every ``param.grad`` to zero in place. ``state_dict()`` /
``load_state_dict()`` use PyTorch's layout: parameters are replaced by integer indices, numbered
in order over all groups, so a checkpoint can be loaded into a fresh optimizer built over the
same parameters in the same order.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import defaultdict

import numpy as np

from ..nn.module import Parameter

__all__ = ["Optimizer"]


# -- hyperparameter checks (each names the argument, what was expected and what arrived) -------
def _real(value, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__} "
                        f"({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    return value


def check_nonnegative(value, name: str, owner: str) -> float:
    """``value`` must be a finite real number >= 0."""
    value = _real(value, name, owner)
    if value < 0.0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
    return value


def check_unit_interval(value, name: str, owner: str) -> float:
    """``value`` must lie in ``[0, 1)`` (a decay rate such as Adam's betas)."""
    value = _real(value, name, owner)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value}")
    return value


def check_bool(value, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} ({value!r})")
    return bool(value)


def _param_list(params, what: str) -> list:
    """An ordered list of Parameters from a Parameter or an ordered iterable of them."""
    if isinstance(params, Parameter):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(f"{what} must be an ordered collection (list, tuple, generator), not a set: "
                        "the order of a set changes between runs")
    if isinstance(params, (np.ndarray, str, bytes, dict)):
        raise TypeError(f"{what} must be an iterable of Parameters, got {type(params).__name__}")
    try:
        return list(params)
    except TypeError:
        raise TypeError(
            f"{what} must be an iterable of Parameters, got {type(params).__name__}"
        ) from None


def _state_value(v, k, key, p):
    """A copy of the loaded state entry ``k`` of parameter ``key``: an array of the parameter's
    shape (floats cast to its dtype), the int ``step``, or a plain scalar."""
    where = f"loaded state dict: state[{key}][{k!r}]"
    if not isinstance(k, str):
        raise ValueError(f"loaded state dict: state[{key}] has a key {k!r} that is not a string")
    if isinstance(v, np.ndarray) and v.ndim > 0:
        if v.shape != p.data.shape:
            raise ValueError(f"{where} has shape {v.shape}, but parameter {key} has shape "
                             f"{p.data.shape}")
        if v.dtype.kind not in "fiu":
            raise TypeError(f"{where} has dtype {v.dtype}, expected numbers")
        dtype = p.data.dtype if v.dtype.kind == "f" else v.dtype
        with np.errstate(over="ignore"):
            out = np.array(v, dtype=dtype, order="C", copy=True)
        if v.dtype.kind == "f" and np.isinf(out).any() and np.isfinite(v[np.isinf(out)]).any():
            raise ValueError(f"{where} holds values beyond the range of {dtype}")
        return out
    if k == "step":
        a = np.asarray(v)
        if a.ndim != 0 or a.dtype.kind not in "iuf" or not np.isfinite(a) \
                or a != np.floor(a) or a < 0:
            raise ValueError(f"{where} must be a whole number >= 0, got {v!r}"[:300])
        return int(a)
    if isinstance(v, np.ndarray):                  # a 0-d array
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{where} has dtype {v.dtype}, expected a number")
        return v.copy()
    if v is None or isinstance(v, (bool, numbers.Real, str)):
        return v
    raise TypeError(f"{where} is a {type(v).__name__}; state entries are arrays or numbers")


class Optimizer:
    """Base class: subclasses implement ``step(closure=None)`` and ``_validate(group, owner)``.

    ``params`` is an iterable of :class:`~scratchlm.nn.Parameter` (e.g. ``model.parameters()``)
    or of dicts (parameter groups), each with ``'params'`` and optional per-group
    hyperparameters. ``defaults`` holds the hyperparameters a group does not set itself.

    Raises ``TypeError`` for an empty ``params`` or one holding something that is not a
    ``Parameter``, ``ValueError`` for a parameter listed twice and for invalid hyperparameters.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self._validate(self.defaults, type(self).__name__)
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []

        if isinstance(params, dict):
            params = [params]
        groups = _param_list(params, "params")
        if not groups:
            raise TypeError(f"{type(self).__name__} got an empty parameter list: params must hold "
                            "at least one Parameter")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- subclass hooks -------------------------------------------------------------------------
    def _validate(self, group: dict, owner: str) -> None:
        """Check the hyperparameters in ``group`` (the defaults, or one param group); raise
        ``ValueError``/``TypeError`` naming the bad one. The base checks ``lr`` only."""
        if "lr" in group:
            check_nonnegative(group["lr"], "lr", owner)

    def step(self, closure=None):
        """Apply one update to every parameter; ``closure`` (optional) re-evaluates the loss
        first and its value is returned."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step")

    # -- groups ----------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Append a parameter group: a dict with ``'params'`` and optional hyperparameters
        (missing ones are taken from the defaults). The dict is copied, not kept."""
        index = len(self.param_groups)
        if not isinstance(param_group, dict):
            raise TypeError(
                f"param group {index} must be a dict with a 'params' entry, got "
                f"{type(param_group).__name__} (do not mix Parameters and dicts in params)"
            )
        if "params" not in param_group:
            raise ValueError(f"param group {index} has no 'params' entry; got keys "
                             f"{sorted(param_group)}")
        group = dict(param_group)
        params = _param_list(group["params"], f"param group {index} 'params'")
        if not params:
            raise TypeError(f"param group {index} has an empty parameter list")
        for j, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} can only optimize scratchlm.nn.Parameter objects, but "
                    f"entry {j} of param group {index} is a {type(p).__name__}"
                )
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"param group {index} lists the same Parameter more than once")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate(group, f"{type(self).__name__} (param group {index})")
        self.param_groups.append(group)

    # -- gradients -------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to zero, in place (the arrays are kept)."""
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue                             # frozen: no gradient at all
                if p.grad is None:
                    p.grad = np.zeros_like(p.data)
                else:
                    p.grad[...] = 0

    @staticmethod
    def _grad(p: Parameter):
        """``p.grad`` checked against ``p.data`` (same shape and dtype), or None to skip ``p``."""
        g = p.grad
        if g is None or not p.requires_grad:                          # frozen: left untouched
            return None
        if not isinstance(g, np.ndarray) or g.shape != p.data.shape or g.dtype != p.data.dtype:
            raise ValueError(
                f"parameter of shape {p.data.shape} and dtype {p.data.dtype} has a gradient of "
                f"shape {np.shape(g)} and dtype {getattr(g, 'dtype', type(g).__name__)}; "
                "they must match"
            )
        return g

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{'state': {index: {name: array or int}}, 'param_groups': [{..., 'params': [indices]}]}``.

        Indices number the parameters in order over all groups (PyTorch's layout). The arrays are
        the live ones, as PyTorch's tensors are; ``copy.deepcopy`` the result to keep a snapshot.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = dict(s)
        state = dict(sorted(state.items()))
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict` taken from an optimizer over parameters of the same shapes,
        grouped the same way. Hyperparameters come from the checkpoint; state arrays are copied
        (cast to each parameter's dtype), so the checkpoint is never aliased.

        Raises ``ValueError`` (``TypeError`` for a value of the wrong type) when the layout
        differs from this optimizer's (the number of groups, the parameters in a group, the
        shape of a state array), when a state entry is not a number or an array, or when a
        loaded hyperparameter is invalid. All or nothing: everything is checked before anything
        is written, so an error leaves the optimizer exactly as it was.
        """
        self._apply_state_dict(self._check_state_dict(state_dict))

    def _check_state_dict(self, state_dict: dict):
        """Check ``state_dict`` and build the new ``(state, param_groups)`` without touching this
        optimizer (:meth:`_apply_state_dict` installs them)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{name}.load_state_dict expects a dict with 'state' and "
                             "'param_groups' entries (what state_dict() returns)")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not all(
                isinstance(g, dict) and "params" in g for g in saved_groups):
            raise ValueError(f"{name}.load_state_dict: 'param_groups' must be a list of dicts, "
                             f"each with 'params'")
        if not isinstance(saved_state, dict):
            raise ValueError(f"{name}.load_state_dict: 'state' must be a dict of parameter "
                             f"index -> dict, got {type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, but this {name} has "
                f"{len(self.param_groups)}"
            )
        id_map = {}
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            indices = saved["params"]
            if not isinstance(indices, (list, tuple)) or not all(
                    isinstance(j, numbers.Integral) and not isinstance(j, bool) for j in indices):
                raise ValueError(f"param group {i}: loaded 'params' must be a list of parameter "
                                 f"indices, got {indices!r}"[:300])
            if len(indices) != len(group["params"]):
                raise ValueError(
                    f"param group {i}: loaded state dict has {len(indices)} parameters, "
                    f"but this {name}'s group has {len(group['params'])}"
                )
            for j, p in zip(indices, group["params"]):
                if int(j) in id_map:
                    raise ValueError(f"param group {i}: loaded state dict lists parameter index "
                                     f"{int(j)} more than once")
                id_map[int(j)] = p

        new_state: defaultdict = defaultdict(dict)
        for key, pstate in saved_state.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral) \
                    or int(key) not in id_map:
                raise ValueError(f"loaded state dict has state for parameter index {key!r}, "
                                 "which no param group lists")
            if not isinstance(pstate, dict):
                raise ValueError(f"loaded state dict: state[{key}] must be a dict, got "
                                 f"{type(pstate).__name__}")
            p = id_map[int(key)]
            new_state[p] = {k: _state_value(v, k, key, p) for k, v in pstate.items()}

        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            new = copy.deepcopy({k: v for k, v in saved.items() if k != "params"})
            for k, v in group.items():
                if k != "params":
                    new.setdefault(k, v)
            self._validate(new, f"{name} (loaded param group {i})")
            new["params"] = group["params"]
            new_groups.append(new)
        return new_state, new_groups

    def _apply_state_dict(self, plan) -> None:
        self.state, self.param_groups = plan

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)
