"""``Linear``: the fully connected layer (torch.nn.Linear's names, shapes and initialisation)."""

import math

import numpy as np

from .. import functional as F
from .._per_example import accumulate_sample, linear_samples, per_example_active
from .._checks import boolean, make_rng, positive_int, resolve_dtype, same_dtype
from .module import Module, Parameter


class Linear(Module):
    r""":math:`y = x W^\top + b` over the last axis.

    Args:
        in_features, out_features: sizes of the last axis in and out.
        bias: learn an additive bias.
        dtype: ``np.float32`` (default) or ``np.float64``.
        rng: ``np.random.Generator`` or int seed for the initialisation.

    Parameters: ``weight`` ``(out_features, in_features)``, ``bias`` ``(out_features,)``, both
    drawn from :math:`U(-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}})` as torch's default
    (kaiming-uniform with ``a = sqrt(5)``).

    Shapes: x ``(..., in_features)`` -> y ``(..., out_features)``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(self.dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, self.out_features).astype(self.dtype)) \
            if boolean(bias, "bias") else None

    def forward(self, x):
        x = np.asarray(x) if isinstance(x, list) else x
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            same_dtype(x, "x", self.weight.dtype, "Linear")
        y, self._cache = F.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        return y

    def inference(self, x):
        """The forward without keeping a cache (inference: a KV-cache generation step)."""
        return F.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)[0]

    def backward(self, dy):
        w, b = self.weight, self.bias
        dx, dw, db = F.linear_backward(dy, self._saved(), needs_input_grad=(
            True, w.requires_grad, b is not None and b.requires_grad))
        if w.requires_grad:                            # frozen: dW = dy^T x is never formed
            w.grad += dw
        if b is not None and b.requires_grad:
            b.grad += db
        if per_example_active():                       # DP-SGD: each example's dW and db too
            cache = self._saved()
            if cache.precision is not None:
                raise ValueError("per-example gradients run in float32/float64, not under "
                                 "autocast")
            dws, dbs = linear_samples(cache.x, dy, ghost=True)   # (norms from factors)
            accumulate_sample(w, dws)
            if b is not None:
                accumulate_sample(b, dbs)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
