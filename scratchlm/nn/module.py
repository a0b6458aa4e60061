"""``Parameter``, ``Module`` and ``Sequential``: the layer protocol every model is built on.

The protocol, in one paragraph: ``out = module(x)`` runs ``forward``, which computes the output
and keeps in ``self._cache`` what the backward needs. ``dx = module.backward(dout)`` takes the
gradient of the loss with respect to the output, returns the gradient with respect to the
input(s), and *adds* the parameter gradients into ``param.grad`` (so two backward calls
accumulate, exactly as PyTorch's ``.grad`` does until ``zero_grad()``).

Names mirror ``torch.nn``: ``parameters()``, ``named_parameters()`` with dotted names,
``state_dict()`` / ``load_state_dict()``, ``train()`` / ``eval()``, ``zero_grad()``, ``to()``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np

from .._checks import boolean, resolve_dtype

class _NoCache:
    """The value of ``module._cache`` before any forward (a cache may itself be ``None``)."""

    def __repr__(self):
        return "<no forward yet>"

    def __deepcopy__(self, memo):
        return self


NO_CACHE = _NoCache()


class Parameter:
    """A trainable array: ``data`` and the gradient ``grad`` accumulated into it (same shape/dtype).

    Unlike ``torch.Tensor`` a Parameter is not itself an array: read ``p.data`` and ``p.grad``.

    ``requires_grad`` (default True), as torch: a frozen parameter (``False``) has ``grad`` None;
    the layers compute no gradient for it (and skip the product where the gradient would cost
    one), optimizers and clipping pass it by, the gradient checker checks only trainable ones,
    and ``state_dict()`` still holds it. Setting it back to True gives a zero ``grad``.
    """

    __slots__ = ("data", "grad", "_requires_grad", "grad_sample")

    def __init__(self, data, requires_grad=True):
        data = np.array(data, copy=True)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter data must be float32 or float64, got {data.dtype}")
        self.data = data
        self._requires_grad = boolean(requires_grad, "requires_grad")
        self.grad = np.zeros_like(data) if self._requires_grad else None
        # (batch, *shape): each example's gradient, filled by a backward run under
        # scratchlm.per_example_gradients() (DP-SGD), as Opacus's grad_sample; else None
        self.grad_sample = None

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        self._requires_grad = boolean(value, "requires_grad")
        if not self._requires_grad:
            self.grad = None
        elif self.grad is None:
            self.grad = np.zeros_like(self.data)

    def requires_grad_(self, requires_grad=True) -> "Parameter":
        self.requires_grad = requires_grad
        return self

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    ndim = property(lambda self: self.data.ndim)

    def zero_grad(self) -> None:
        if self.grad is not None:
            self.grad[...] = 0

    def __repr__(self) -> str:
        frozen = "" if self._requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


class Module:
    """Base class of every layer, loss and model.

    One cache per module: a module called twice before its backward keeps only the second call's
    cache. To apply the same weights twice (tied weights, a layer used at several steps), share
    the ``Parameter`` between two modules, as GPT-2's tied ``lm_head`` does, or call the
    functional pair and keep both caches.

    Subclasses set parameters and sub-modules as attributes (they are registered in order, as in
    PyTorch) and implement ``forward(*inputs)`` and ``backward(*douts)``.

    * ``backward`` takes one upstream gradient per output (a module returning
      ``output, (h_n, c_n)`` takes ``doutput, dh_n, dc_n``), returns the gradient with respect to
      each floating-point input (one array, or a tuple when there are several; ``None`` when no
      input is differentiable, as for token ids) and accumulates into ``param.grad``.
    * Randomness (dropout, sampling) comes only from ``np.random.Generator`` objects held as
      attributes; there is no global random state.
    * ``differentiable_inputs`` names the positional inputs ``backward`` returns gradients for:
      ``None`` (the default) means every floating-point input; losses set ``(0,)`` because their
      target is data, not a variable. The gradient checker reads it.
    """

    differentiable_inputs = None

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", NO_CACHE)

    # -- registration ------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if name in self._buffers and (value is None or isinstance(value, np.ndarray)):
            object.__setattr__(self, name, value)   # a registered buffer stays registered (torch)
            return
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """A saved, non-trained array (e.g. a fixed positional table): in ``state_dict``, not in
        ``parameters()``."""
        object.__setattr__(self, name, value)
        self._buffers[name] = None  # the attribute holds the value; the table keeps the order

    # -- the protocol -----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, *douts):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def _saved(self):
        """The cache the last forward left; a clear error when backward comes first."""
        if self._cache is NO_CACHE:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward: run the forward pass first"
            )
        return self._cache

    # -- traversal ------------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        """Yield ``(dotted_name, module)`` for this module and every sub-module, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop(0)
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items()]
            stack[0:0] = children

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        """Yield ``(dotted_name, Parameter)``; a parameter shared by two modules (tied weights)
        is yielded once, under its first name, as in PyTorch."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mod_name, mod in self.named_modules(prefix):
            for name in mod._buffers:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(mod, name)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def trainable_parameters(self) -> list:
        """The parameters with ``requires_grad`` (what an optimizer of a fine-tuning run holds)."""
        return [p for p in self.parameters() if p.requires_grad]

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (``False``) or unfreeze every parameter, as torch's ``Module.requires_grad_``."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # -- modes, gradients, dtype -------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (dropout on) for this module and every submodule; ``mode`` must be a
        bool, as torch requires (``train("eval")`` would otherwise mean training)."""
        mode = boolean(mode, "mode")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    #: buffers whose dtype is a storage format, which :meth:`to` leaves alone (a quantized
    #: layer's float16 scales)
    STORAGE_BUFFERS = ()

    def to(self, dtype):
        """Cast every parameter (data and grad) and float buffer to ``dtype``, in place (except
        a module's :attr:`STORAGE_BUFFERS`)."""
        dt = resolve_dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                if p.data.dtype != dt:
                    p.data = p.data.astype(dt)
                    p.grad = None if p.grad is None else p.grad.astype(dt)
            for name in m._buffers:
                value = getattr(m, name)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and \
                        name not in m.STORAGE_BUFFERS:
                    object.__setattr__(m, name, value.astype(dt))
            if "dtype" in m.__dict__:
                object.__setattr__(m, "dtype", dt)
            object.__setattr__(m, "_cache", NO_CACHE)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def generators(self):
        """Yield ``(dotted_name, np.random.Generator)`` for every generator held by any sub-module
        (dropout masks, sampling): the whole random state a checkpoint must carry."""
        for mod_name, mod in self.named_modules():
            for attr, value in vars(mod).items():
                if isinstance(value, np.random.Generator):
                    yield (f"{mod_name}.{attr}" if mod_name else attr), value

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> array, parameters then buffers per module, in registration order.

        The arrays are the live ones (as PyTorch's are); copy them to keep a snapshot. Tied
        parameters appear under every name that holds them. (A buffer kept in a kernel's own
        layout comes as a copy in the reference layout: see :meth:`_buffer_to_state`.)
        """
        return OrderedDict((key, live if mod is None else mod._buffer_to_state(bname, live))
                           for key, live, mod, bname in self._live_state())

    def _live_state(self):
        """Yield ``(dotted name, live array, module, buffer name)`` for the state: parameters
        (module and buffer name ``None``) then buffers, per module in registration order."""
        seen = set()
        for mod_name, mod in self.named_modules():
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                yield pre + name, p.data, None, None
            for name in mod._buffers:
                yield pre + name, getattr(mod, name), mod, name

    # A buffer the forward keeps in a layout of its own (a kernel's: a quantized layer's
    # interleaved codes) shows in ``state_dict`` in the reference layout, as a copy -- as
    # PyTorch's prepacked quantized weights do -- and loads back through the inverse.
    def _buffer_to_state(self, name: str, value: np.ndarray) -> np.ndarray:
        """Buffer ``name`` as ``state_dict`` shows it (the live array itself by default)."""
        return value

    def _buffer_from_state(self, name: str, value: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`_buffer_to_state` (same shape and dtype)."""
        return value

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into this module's parameters and buffers (cast to their dtype).

        ``strict`` (the default) refuses missing keys, unexpected keys and mis-shaped arrays,
        naming every one; with ``strict=False`` only matching keys are loaded and the lists of
        missing and unexpected keys are returned. In both modes, arrays of the wrong kind (text,
        objects; floats into an integer buffer) and values a float32 parameter cannot hold (a
        finite float64 beyond float32's range) are refused, and so, when ``strict``, are
        different values under two names of one tied array (with ``strict=False`` the last
        wins, as in PyTorch).

        All or nothing: everything is checked before anything is written, so an error leaves
        the module exactly as it was.
        """
        writes, missing, unexpected = self._check_state_dict(state, strict)
        self._apply_state_dict(writes)
        return missing, unexpected

    def _check_state_dict(self, state, strict: bool = True):
        """Check ``state`` against this module without writing anything: ``(writes, missing,
        unexpected)`` with ``writes`` the ``(target array, value)`` pairs that
        :meth:`_apply_state_dict` copies (and that cannot fail). ``ValueError`` (``TypeError``
        when only dtypes are wrong) names every problem."""
        from collections.abc import Mapping
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"{name}.load_state_dict: state must be a mapping of name -> array, "
                            f"got {type(state).__name__}")
        bad_keys = [k for k in state if not isinstance(k, str)]
        if bad_keys:
            raise TypeError(f"{name}.load_state_dict: keys must be strings, got "
                            f"{', '.join(repr(k) for k in bad_keys[:5])}")
        own = OrderedDict((key, (live, mod, bname))
                          for key, live, mod, bname in self._live_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mis_shaped, mis_typed, other, writes = [], [], [], []
        loaded = {}                                    # id(target) -> (first name, value)
        for k, (target, mod, bname) in own.items():
            if k not in state:
                continue
            value = state[k]
            if not isinstance(value, np.ndarray):
                try:
                    value = np.asarray(value)
                except Exception as exc:               # a foreign object numpy cannot convert
                    mis_typed.append(f"{k}: {type(state[k]).__name__} is not an array ({exc})")
                    continue
            if value.shape != target.shape:
                mis_shaped.append(f"{k}: expected {target.shape}, got {value.shape}")
                continue
            problem, value = _castable(value, target.dtype)
            if problem:
                (mis_typed if problem.startswith("dtype") else other).append(f"{k}: {problem}")
                continue
            if not target.flags.writeable:
                other.append(f"{k}: this module's array is read-only")
                continue
            first = loaded.setdefault(id(target), (k, value))
            if first[0] != k:                          # tied names: one array, one value
                if strict and not np.array_equal(first[1], value,
                                                 equal_nan=value.dtype.kind in "fc"):
                    other.append(f"{k}: tied to {first[0]} (one shared array) but holds "
                                 f"different values")
                if strict:
                    continue
            writes.append((target, value if mod is None else
                           mod._buffer_from_state(bname, value)))
        problems = []
        if mis_shaped:
            problems.append("mis-shaped keys: " + "; ".join(mis_shaped))
        if mis_typed:
            problems.append("mis-typed keys: " + "; ".join(mis_typed))
        if other:
            problems.append("; ".join(other))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            kind = TypeError if problems == ["mis-typed keys: " + "; ".join(mis_typed)] else ValueError
            raise kind(f"cannot load state_dict into {name}: " + " | ".join(problems))
        return writes, missing, unexpected

    @staticmethod
    def _apply_state_dict(writes) -> None:
        for target, value in writes:
            target[...] = value

    def clone(self):
        """A deep copy (parameters, gradients, random generators and all)."""
        return copy.deepcopy(self)

    # -- printing ---------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, m in self._modules.items():
                child = repr(m).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {child}")
            lines.append("\n")
        return "".join(lines) + ")"


def _castable(value, dtype):
    """``(problem or None, value ready to copy)``: may ``value`` go into an array of ``dtype``
    without losing what it means? Numbers into floats (a finite value must stay finite); integers
    or bools into integers (in range); bools into bools."""
    kind = value.dtype.kind
    if dtype.kind == "f":
        if kind not in "fiu":
            return f"dtype {value.dtype}, expected numbers", value
        if kind == "f" and value.dtype.itemsize > dtype.itemsize and value.size:
            with np.errstate(over="ignore"):
                cast = value.astype(dtype)
            if np.isinf(cast).any() and np.isfinite(value[np.isinf(cast)]).any():
                return (f"values beyond the range of {dtype} (largest magnitude "
                        f"{np.nanmax(np.abs(value[np.isfinite(value)])):.3g})"), value
            return None, cast
        return None, value
    if dtype.kind in "iu":
        if kind not in "iub":
            return f"dtype {value.dtype}, expected integers", value
        if value.size and kind != "b":
            info = np.iinfo(dtype)
            lo, hi = value.min(), value.max()
            if int(lo) < info.min or int(hi) > info.max:
                return f"values {int(lo)}..{int(hi)} beyond the range of {dtype}", value
        return None, value
    if dtype.kind == "b" and kind != "b":
        return f"dtype {value.dtype}, expected bools", value
    if dtype.kind != "b" and kind != dtype.kind:
        return f"dtype {value.dtype}, expected {dtype}", value
    return None, value


class ModuleList(Module):
    """A list of modules registered as ``0``, ``1``, ... (torch.nn.ModuleList): GPT's
    ``transformer.h.0.ln_1.weight``. It has no forward of its own."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order; ``backward`` walks them in reverse.

    ``Sequential(Linear(4, 8), ReLU(), Linear(8, 2))`` has parameters ``0.weight``, ``0.bias``,
    ``2.weight``, ``2.bias`` -- the names ``torch.nn.Sequential`` gives.
    """

    def __init__(self, *modules: Module):
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential argument {i} must be a Module, got {type(m).__name__}")
        super().__init__(modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dout):
        for m in reversed(self._modules.values()):
            dout = m.backward(dout)
        return dout


class ModuleDict(Module):
    """Named sub-modules (torch.nn.ModuleDict): GPT's ``transformer.wte`` ... It has no
    forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            if not isinstance(m, Module):
                raise TypeError(f"ModuleDict[{name!r}] must be a Module, got {type(m).__name__}")
            setattr(self, name, m)

    def __getitem__(self, name):
        return self._modules[name]

    def __contains__(self, name):
        return name in self._modules

    def keys(self):
        return self._modules.keys()
