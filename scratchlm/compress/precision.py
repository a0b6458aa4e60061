r"""Mixed-precision training: rounding float32 to the two 16-bit formats, autocast (the products
in 16 bits), dynamic loss scaling with ``torch.amp.GradScaler``'s semantics, and where a model's
gradients fall against the 16-bit ranges.

**The formats.** float16 keeps 10 mantissa bits and 5 exponent bits (largest 65504, smallest
normal :math:`2^{-14}`, smallest subnormal :math:`2^{-24}`); bfloat16 keeps float32's 8
exponent bits and only 7 mantissa bits (the range of float32, about 3 significant digits).
:func:`round_fp16` and :func:`round_bf16` round float32 values to the nearest representable
value, ties to even, and return them as float32 -- what a tensor core's operand or output holds.
:func:`round_bf16` can round stochastically instead (up with probability equal to the distance
from the value below), the rounding that keeps a long sum of small weight updates unbiased.

**Loss scaling.** float16 flushes gradient entries below :math:`2^{-24}` to zero. Scaling the
loss by :math:`s` scales every gradient by :math:`s` (the backward is linear in its upstream
gradient), lifting them into range; the optimizer sees them divided by :math:`s` again in
float32. :class:`GradScaler` picks :math:`s` as torch does: start at :math:`2^{16}`; a step
whose gradients hold an inf or a NaN is skipped and halves :math:`s`; every 2000 clean steps in
a row double it.

**Autocast.** Inside ``with autocast("fp16")`` (or ``"bf16"``), the products of
:func:`~scratchlm.functional.linear_forward` and :func:`~scratchlm.functional.attention_forward`
run as a tensor core runs them: operands rounded to the 16-bit format, products accumulated in
float32, results rounded back; their backward does the same with the upstream gradient. What
the backward reads -- a ``Linear``'s input, attention's q, k, v and output, GELU's derivative --
is kept in 16 bits. Everything else --
LayerNorm/RMSNorm statistics, softmax, the loss, element-wise functions -- stays float32, as
AMP keeps them. The training loop turns it on (``TrainConfig(precision="fp16")``, ``train
--precision fp16``), with a :class:`GradScaler` for float16.
"""

from __future__ import annotations

import numpy as np

from .._autocast import (PRECISIONS, active, autocast, loss_scale, pack16, round_bf16, round_fp16,
                         scaled_backwards, to16, unpack16)
from .._checks import positive_int

__all__ = ["round_fp16", "round_bf16", "GradScaler", "autocast", "active", "to16", "pack16",
           "unpack16", "loss_scale", "scaled_backwards", "PRECISIONS", "activation_gradients",
           "gradient_ranges", "RANGES"]


class GradScaler:
    """Dynamic loss scaling, ``torch.amp.GradScaler``'s rules and names.

    Per step::

        loss_scale = scaler.scale          # multiply the loss's upstream gradient by this
        ... backward ...
        scaler.step(optimizer)             # unscale; skip the update if a gradient is inf/NaN
        scaler.update()                    # back off after a skipped step, grow after
                                           # growth_interval clean ones

    The scale is a float32 (as torch's tensor): unscaling multiplies each gradient by the
    float32 of ``1 / scale`` computed in float64, as torch does. ``unscale_(optimizer)`` may be
    called before ``step`` (to clip the true gradients); ``state_dict()`` holds ``scale``,
    ``growth_factor``, ``backoff_factor``, ``growth_interval`` and ``_growth_tracker``.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        for name, value, ok, want in (
                ("init_scale", init_scale, lambda v: v > 0, "> 0"),
                ("growth_factor", growth_factor, lambda v: v > 1, "> 1"),
                ("backoff_factor", backoff_factor, lambda v: 0 < v < 1, "in (0, 1)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not np.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a finite number {want}, got {value!r}")
        self._scale = np.float32(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = positive_int(growth_interval, "growth_interval")
        self._growth_tracker = 0
        self._found_inf = None                  # this step's: None until unscaled

    @property
    def scale(self) -> float:
        """The current loss scale."""
        return float(self._scale)

    @staticmethod
    def _grads(optimizer):
        return [p.grad for g in optimizer.param_groups for p in g["params"]
                if p.grad is not None and p.requires_grad]

    def unscale_(self, optimizer) -> bool:
        """Divide every gradient of ``optimizer``'s parameters by the scale (in place); return
        whether any is inf or NaN. Once per step."""
        if self._found_inf is not None:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update()")
        inv = np.float32(1.0 / np.float64(self._scale))
        found = False
        for g in self._grads(optimizer):
            found = found or not np.isfinite(g).all()
            g *= inv.astype(g.dtype)
        self._found_inf = found
        return found

    def step(self, optimizer) -> bool:
        """Unscale (unless done) and take ``optimizer``'s step unless a gradient is inf/NaN.
        Returns whether the step was taken."""
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Set the next step's scale: times ``backoff_factor`` after a skipped step, times
        ``growth_factor`` after ``growth_interval`` clean steps in a row (if it stays finite)."""
        if self._found_inf is None:
            raise RuntimeError("update() needs a step() (or unscale_()) since the last update")
        if self._found_inf:
            self._scale = np.float32(self._scale * np.float32(self.backoff_factor))
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful == self.growth_interval:
                with np.errstate(over="ignore"):
                    new = np.float32(self._scale * np.float32(self.growth_factor))
                if np.isfinite(new):
                    self._scale = new
                self._growth_tracker = 0
            else:
                self._growth_tracker = successful
        self._found_inf = None

    def state_dict(self) -> dict:
        return {"scale": float(self._scale), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != set(self.state_dict()):
            raise ValueError(f"a GradScaler state must hold {sorted(self.state_dict())}, got "
                             f"{state!r:.80}")
        fresh = GradScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                           state["growth_interval"])
        tracker = state["_growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, int) or \
                not 0 <= tracker < fresh.growth_interval:
            raise ValueError(f"_growth_tracker must be an int in [0, growth_interval), got "
                             f"{tracker!r}")
        self.__dict__.update(fresh.__dict__, _growth_tracker=tracker)


# ------------------------------------------------------------------------------------------------
# why loss scaling: where a model's activation gradients fall against the 16-bit ranges
# ------------------------------------------------------------------------------------------------
#: log2 of the edges: (smallest subnormal, smallest normal, largest finite) of each format
RANGES = {"fp16": (-24.0, -14.0, float(np.log2(65504.0))),
          "bf16": (-133.0, -126.0, float(np.log2(np.finfo(np.float32).max)))}


def activation_gradients(model, batches) -> np.ndarray:
    """Every entry of the gradients that reach the model's ``Linear`` layers from above (the
    activation gradients ``dL/dy`` of each Linear's output), over a float32 forward and backward
    of each ``(x, y)`` batch: a flat float32 array."""
    from .. import nn
    layers = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    seen = []

    def hook(layer):
        def backward(dy):
            seen.append(np.asarray(dy, np.float32).ravel())
            return type(layer).backward(layer, dy)
        return backward
    try:
        for layer in layers:
            layer.backward = hook(layer)             # (an instance attribute, removed below)
        for x, y in batches:
            model.zero_grad()
            model(x, y)
            model.backward()
    finally:
        for layer in layers:
            layer.__dict__.pop("backward", None)
        model.zero_grad()
    if not seen:
        raise ValueError(f"{type(model).__name__} has no Linear layer whose gradient to record")
    return np.concatenate(seen)


def gradient_ranges(grads, scale: float = 2.0 ** 16) -> dict:
    """What each 16-bit format does to the gradient entries ``grads`` (before and after
    multiplying by ``scale``): the fractions of the nonzero entries that flush to zero, that land
    among the subnormals (fewer significant bits) and that overflow."""
    g = np.abs(np.asarray(grads, np.float64))
    g = g[g > 0]
    if g.size == 0:
        raise ValueError("grads holds no nonzero entry")
    out = {"entries": int(g.size)}
    for name, s in (("fp16", 1.0), ("fp16_scaled", scale), ("bf16", 1.0)):
        fmt = "bf16" if name == "bf16" else "fp16"
        sub, normal, top = RANGES[fmt]
        v = g * s
        out[name] = {"flushed": float((v <= 2.0 ** (sub - 1)).mean()),   # below half the
                     "subnormal": float(((v > 2.0 ** (sub - 1)) & (v < 2.0 ** normal)).mean()),
                     "overflow": float((v > 2.0 ** top).mean())}          # smallest: to zero
    return out
