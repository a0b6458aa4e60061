r"""The gradient checker: finite differences against the analytic backward, for any layer.

Two entry points, for the two ways an op is written here:

* :func:`check_function` for a forward/backward *pair* (``out, cache = forward(*inputs)``,
  ``grads = backward(dout, cache)`` with one gradient per input -- see ``scratchlm.functional``);
* :func:`check_module` for a :class:`~scratchlm.nn.Module` (your own too): every float input and
  every parameter.

How the check works. Draw a random upstream gradient :math:`g` (standard normal -- never all
ones, which would hide transposition and broadcasting bugs) and define the scalar
:math:`L(\theta) = \langle g, f(\theta)\rangle`. The analytic backward gives
:math:`\nabla_\theta L`; each checked entry :math:`\theta_i` is also differentiated numerically
with the fourth-order central difference

.. math:: \frac{\partial L}{\partial\theta_i} \approx
          \frac{-L(\theta_i+2h) + 8L(\theta_i+h) - 8L(\theta_i-h) + L(\theta_i-2h)}{12h},

whose truncation error is :math:`O(h^4)`, so a step :math:`h = 10^{-4}` in float64 leaves
both truncation and round-off near :math:`10^{-12}`. (Keep inputs of non-smooth ops -- ReLU,
max -- further than :math:`2h` from their kinks.) Everything runs in float64; float32 modules are
cast for the numeric part.

Error measure, per entry with analytic :math:`a_i` and numeric :math:`n_i`:

.. math:: r_i = \frac{|a_i - n_i|}{\max\big(|a_i|,\ |n_i|,\ 10^{-3}\max_j |n_j|,\
          \text{atol}\,(1 + |L|)\big)}

i.e. relative error, floored at a thousandth of the tensor's largest gradient and at
``atol * (1 + |L|)`` (default ``atol`` :math:`10^{-5}`): below that size the round-off in
:math:`L` (about :math:`10^{-12}|L|` here) is what a difference quotient measures, so entries
that are zero up to round-off do not divide by zero. A tensor passes when
:math:`\max_i r_i \le` ``rtol`` (default :math:`10^{-6}`).

Small tensors are checked at every entry; a tensor with more than ``max_entries`` entries is
checked at a seeded random sample of that many, and the report says how many.

:func:`check_module` also checks three properties a correct layer must have:

* ``backward`` twice accumulates exactly twice the parameter gradient (bit for bit for a
  parameter fed by one path; to round-off, 1e-12 relative, for one fed by two, such as tied
  weights) and returns the same input gradient both times;
* float32 in gives float32 out and float32 gradients (no silent promotion);
* the forward is deterministic given its random state (dropout included): two copies of the
  module with the same generator state give bit-identical outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ._checks import integer, positive_int, scalar
from .nn.module import NO_CACHE

__all__ = ["check_function", "check_module", "GradcheckReport", "GradcheckError", "TensorCheck",
           "PropertyCheck"]


class GradcheckError(AssertionError):
    """Raised by the checkers with ``raise_on_failure=True`` when a check fails; carries the report."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


@dataclass
class TensorCheck:
    name: str
    shape: tuple
    checked: int
    total: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class PropertyCheck:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class GradcheckReport:
    """The result of a check: one :class:`TensorCheck` per differentiated tensor, one
    :class:`PropertyCheck` per extra property. ``report.ok`` is the verdict; ``print(report)``
    shows the table."""

    title: str
    rtol: float
    eps: float
    tensors: list = field(default_factory=list)
    properties: list = field(default_factory=list)

    @property
    def checked(self) -> int:
        """Entries differentiated numerically, over every tensor."""
        return sum(t.checked for t in self.tensors)

    @property
    def ok(self) -> bool:
        """PASS needs at least one entry checked: a report that checked nothing proves nothing."""
        return (self.checked > 0 and all(t.ok for t in self.tensors)
                and all(p.ok for p in self.properties))

    @property
    def max_rel(self) -> float:
        return max((t.max_rel for t in self.tensors), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((t.max_abs for t in self.tensors), default=0.0)

    def raise_if_failed(self) -> "GradcheckReport":
        if not self.ok:
            raise GradcheckError(self)
        return self

    def __str__(self) -> str:
        head = (f"gradcheck {self.title}: float64, 4th-order central differences, h={self.eps:g}, "
                f"rtol={self.rtol:g}")
        rows = [("tensor", "shape", "checked", "max abs err", "max rel err", "ok")]
        for t in self.tensors:
            rows.append((t.name, str(t.shape), f"{t.checked}/{t.total}", f"{t.max_abs:.2e}",
                         f"{t.max_rel:.2e}", "ok" if t.ok else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if not self.tensors:
            lines.append("  (no differentiable tensor)")
        if self.checked == 0:
            lines.append("  FAIL no entry was checked")
        for p in self.properties:
            detail = f" ({p.detail})" if p.detail else ""
            lines.append(f"  {'ok  ' if p.ok else 'FAIL'} {p.name}{detail}")
        lines.append(f"  result: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _is_float_array(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype.kind == "f"


def _flatten(out):
    """Outputs -> list of float64 arrays (scalars become 0-d), plus the structure to rebuild."""
    if isinstance(out, (tuple, list)):
        parts, specs = [], []
        for o in out:
            p, s = _flatten(o)
            parts.extend(p)
            specs.append((len(p), s))
        return parts, ("seq", type(out), specs)
    if isinstance(out, np.ndarray):
        return [out], ("array",)
    if isinstance(out, (float, int, np.floating)):
        return [np.asarray(out, dtype=np.float64)], ("scalar",)
    if out is None:
        return [], ("none",)
    raise TypeError(f"forward returned {type(out).__name__}; expected arrays, floats or tuples of them")


def _unflatten(parts, spec):
    kind = spec[0]
    if kind == "array":
        return parts[0]
    if kind == "scalar":
        return float(parts[0])
    if kind == "none":
        return None
    _, typ, specs = spec
    out, i = [], 0
    for n, s in specs:
        out.append(_unflatten(parts[i:i + n], s))
        i += n
    return typ(out) if typ is tuple else list(out)


def _objective(parts, douts) -> float:
    return float(sum(np.sum(np.asarray(p, dtype=np.float64) * d) for p, d in zip(parts, douts)))


def _sample(size, max_entries, rng):
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def _compare(name, analytic, array, evaluate, eps, rtol, atol, max_entries, rng) -> TensorCheck:
    """Differentiate ``evaluate()`` numerically w.r.t. entries of ``array`` (perturbed in place)."""
    base = abs(evaluate())
    flat = array.reshape(-1)  # a view: perturbing it perturbs the array the forward reads
    if not np.shares_memory(flat, array):
        raise ValueError(f"{name} must be contiguous to be perturbed in place")
    idx = _sample(array.size, max_entries, rng)
    num = np.empty(idx.size)
    for k, i in enumerate(idx):
        orig = flat[i]
        vals = []
        for step in (2, 1, -1, -2):
            flat[i] = orig + step * eps
            vals.append(evaluate())
        flat[i] = orig
        num[k] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * eps)
    if analytic is None:
        return TensorCheck(name, array.shape, idx.size, array.size, float("inf"), float("inf"), False)
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    if a.size != array.size:
        return TensorCheck(name + f" (gradient has shape {np.shape(analytic)})", array.shape,
                           idx.size, array.size, float("inf"), float("inf"), False)
    a = a[idx]
    err = np.abs(a - num)
    floor = max(1e-3 * (np.abs(num).max() if num.size else 0.0), atol * (1.0 + base))
    rel = err / np.maximum(np.maximum(np.abs(a), np.abs(num)), floor)
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    ok = bool(np.isfinite(max_rel) and max_rel <= rtol)
    return TensorCheck(name, array.shape, idx.size, array.size, max_abs, max_rel, ok)


def _check_options(eps, rtol, atol, max_entries, seed):
    """The checkers' numeric options; ``max_entries`` must let at least one entry be checked."""
    if not scalar(eps, "eps") > 0:
        raise ValueError(f"eps must be > 0 (the finite-difference step), got {eps}")
    if not scalar(rtol, "rtol") > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    if not scalar(atol, "atol") >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    if max_entries is not None:
        if isinstance(max_entries, (int, np.integer)) and not isinstance(max_entries, bool) \
                and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 (or None for every entry), got "
                             f"{max_entries}: a check of no entry would pass vacuously")
        positive_int(max_entries, "max_entries")
    integer(seed, "seed")


def _nothing_checked(report, what):
    """A check that differentiated no entry is an error, not a PASS."""
    if report.checked == 0:
        raise ValueError(f"gradcheck {report.title}: nothing to check -- {what}; a check of no "
                         f"entry would pass vacuously")


def _as_grads(grads, n):
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    grads = tuple(grads)
    if len(grads) != n:
        raise ValueError(f"backward returned {len(grads)} gradient(s) for {n} input(s)")
    return grads


# ------------------------------------------------------------------------------------------------
# check_function
# ------------------------------------------------------------------------------------------------
def check_function(forward, backward, *inputs, eps: float = 1e-4, rtol: float = 1e-6,
                   atol: float = 1e-5, max_entries: int | None = 256, seed: int = 0,
                   raise_on_failure: bool = False, name: str | None = None) -> GradcheckReport:
    """Check a forward/backward pair.

    Args:
        forward: ``forward(*inputs) -> (out, cache)``; ``out`` an array, a float, or a tuple
            of them. Bind hyperparameters with ``functools.partial`` or a lambda.
        backward: ``backward(dout, cache) -> grads``, one per input (a single array when there
            is one input), ``None`` for non-differentiable ones.
        inputs: float arrays are differentiated (as float64 copies); integer arrays and other
            values are passed through untouched.
        eps: finite-difference step ``h``. rtol, atol: see the module docstring.
        max_entries: per tensor, check at most this many entries (a seeded random sample);
            ``None`` checks all.
        seed: seeds the upstream gradient and the sample.
        raise_on_failure: raise :class:`GradcheckError` instead of returning a failing report.

    Raises ``ValueError`` when nothing would be checked (no non-empty float input, or
    ``max_entries=0``): such a check would pass vacuously.
    """
    _check_options(eps, rtol, atol, max_entries, seed)
    rng = np.random.default_rng(seed)
    xs = [np.array(x, dtype=np.float64) if _is_float_array(x) else x for x in inputs]
    if not any(_is_float_array(x) and x.size for x in xs):
        raise ValueError(f"gradcheck {name or getattr(forward, '__name__', 'function')}: nothing "
                         f"to check -- no input is a non-empty float array (integer arrays and "
                         f"other values are passed through, not differentiated)")
    out, cache = forward(*xs)
    parts, spec = _flatten(out)
    douts = [rng.standard_normal(np.shape(p)) for p in parts]
    grads = _as_grads(backward(_unflatten(douts, spec), cache), len(xs))

    def evaluate():
        return _objective(_flatten(forward(*xs)[0])[0], douts)

    report = GradcheckReport(name or getattr(forward, "__name__", "function"), rtol, eps)
    for i, x in enumerate(xs):
        if _is_float_array(x):
            report.tensors.append(_compare(f"input[{i}]", grads[i], x, evaluate, eps, rtol, atol,
                                           max_entries, rng))
    _nothing_checked(report, "no float input has an entry")
    if raise_on_failure:
        report.raise_if_failed()
    return report


# ------------------------------------------------------------------------------------------------
# check_module
# ------------------------------------------------------------------------------------------------
def _rng_snapshot(module):
    gens = [g for _, g in module.generators()]
    states = [copy.deepcopy(g.bit_generator.state) for g in gens]

    def restore():
        for g, s in zip(gens, states):
            g.bit_generator.state = s
    return restore


def _grad_input_positions(module, inputs):
    floats = [i for i, x in enumerate(inputs) if _is_float_array(x)]
    chosen = module.differentiable_inputs
    return floats if chosen is None else [i for i in chosen if i in floats]


def _returned_input_grads(dx, n):
    if n == 0:
        return ()
    if n == 1:
        return (dx,)
    return _as_grads(dx, n)


def check_module(module, *inputs, eps: float = 1e-4, rtol: float = 1e-6, atol: float = 1e-5,
                 max_entries: int | None = 256, seed: int = 0, properties: bool = True,
                 raise_on_failure: bool = False, name: str | None = None) -> GradcheckReport:
    """Check a module's ``backward`` against finite differences, for every float input and every
    parameter, plus (``properties=True``) accumulation, float32 fidelity and determinism.

    The module itself is not modified: the check runs on deep copies (cast to float64 for the
    numeric part). Arguments as :func:`check_function`. The module's ``backward`` must take one
    upstream gradient per output and return gradients for the inputs named by its
    ``differentiable_inputs`` (default: every float input) -- see :class:`~scratchlm.nn.Module`.

    Raises ``ValueError`` when nothing would be checked (a module with no parameters and no
    differentiable float input, or ``max_entries=0``): such a check would pass vacuously.
    """
    _check_options(eps, rtol, atol, max_entries, seed)
    rng = np.random.default_rng(seed)
    title = name or type(module).__name__
    m = copy.deepcopy(module).to(np.float64)
    m._cache = NO_CACHE
    xs = [np.array(x, dtype=np.float64) if _is_float_array(x) else x for x in inputs]
    restore = _rng_snapshot(m)

    restore()
    out = m(*xs)
    parts, _ = _flatten(out)
    douts = [rng.standard_normal(np.shape(p)) for p in parts]
    dout_args = [float(d) if d.ndim == 0 else d for d in douts]
    positions = _grad_input_positions(m, xs)
    if not any(xs[i].size for i in positions) and not any(p.size for p in m.parameters()):
        raise ValueError(f"gradcheck {title}: nothing to check -- the module has no parameters "
                         f"and no differentiable float input (differentiable_inputs="
                         f"{m.differentiable_inputs}); a check of no entry would pass vacuously")

    m.zero_grad()
    dx = m.backward(*dout_args)
    input_grads = _returned_input_grads(dx, len(positions))
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]   # frozen: no grad
    param_grads = {n: p.grad.copy() for n, p in trainable}

    def evaluate():
        restore()
        return _objective(_flatten(m(*xs))[0], douts)

    report = GradcheckReport(title, rtol, eps)
    for pos, g in zip(positions, input_grads):
        report.tensors.append(_compare(f"input[{pos}]", g, xs[pos], evaluate, eps, rtol, atol,
                                       max_entries, rng))
    for pname, p in trainable:
        report.tensors.append(_compare(pname, param_grads[pname], p.data, evaluate, eps, rtol,
                                       atol, max_entries, rng))
    _nothing_checked(report, "no parameter or differentiable input has an entry")

    if properties:
        report.properties.extend([
            _check_accumulation(m, xs, dout_args, restore, input_grads, len(positions)),
            _check_float32(module, inputs, douts, len(positions)),
            _check_determinism(m, xs, restore),
        ])
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _check_accumulation(m, xs, dout_args, restore, first_input_grads, n_inputs) -> PropertyCheck:
    name = "backward twice accumulates exactly twice the gradient"
    restore()
    m(*xs)
    m.zero_grad()
    m.backward(*dout_args)
    once = {n: p.grad.copy() for n, p in m.named_parameters() if p.requires_grad}
    dx2 = _returned_input_grads(m.backward(*dout_args), n_inputs)
    # a parameter fed by one path doubles bit for bit; one fed by two (tied weights) adds its
    # contributions in another order the second time, so round-off is allowed (1e-12 relative)
    bad = [n for n, p in m.named_parameters() if p.requires_grad
           and not np.allclose(p.grad, 2 * once[n], rtol=1e-12, atol=1e-300)]
    bad += [f"input gradient {i} changed" for i, (a, b) in enumerate(zip(first_input_grads, dx2))
            if not np.array_equal(np.asarray(a), np.asarray(b))]
    return PropertyCheck(name, not bad, ", ".join(bad))


def _check_float32(module, inputs, douts, n_inputs) -> PropertyCheck:
    name = "float32 in gives float32 out and float32 gradients"
    m = copy.deepcopy(module).to(np.float32)
    m._cache = NO_CACHE
    xs = [x.astype(np.float32) if _is_float_array(x) else x for x in inputs]
    try:
        out = m(*xs)
        parts, _ = _flatten(out)
        arrays = [p for p in parts if p.ndim > 0 or isinstance(out, np.ndarray)]
        bad = [f"output dtype {p.dtype}" for p in arrays if p.dtype != np.float32]
        d32 = [float(d) if d.ndim == 0 else d.astype(np.float32) for d in douts]
        m.zero_grad()
        dx = _returned_input_grads(m.backward(*d32), n_inputs)
        bad += [f"input gradient dtype {np.asarray(g).dtype}" for g in dx
                if g is not None and np.asarray(g).dtype != np.float32]
        bad += [f"{n}.grad dtype {p.grad.dtype}" for n, p in m.named_parameters()
                if p.data.dtype != np.float32 or p.grad is not None and p.grad.dtype != np.float32]
    except Exception as exc:  # a failing float32 path must fail the property, not the whole report
        return PropertyCheck(name, False, f"float32 run failed: {type(exc).__name__}: {exc}")
    return PropertyCheck(name, not bad, ", ".join(bad))


def _check_determinism(m, xs, restore) -> PropertyCheck:
    name = "forward is deterministic given its random state"
    restore()
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    pa, _ = _flatten(a(*xs))
    pb, _ = _flatten(b(*xs))
    same = all(np.array_equal(u, v) for u, v in zip(pa, pb))
    return PropertyCheck(name, same, "" if same else "two copies with equal random state differ")
