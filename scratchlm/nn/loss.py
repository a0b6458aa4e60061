"""Loss modules: ``loss = loss_fn(input, target)`` is a float (an array for ``reduction='none'``);
``dinput = loss_fn.backward()`` is the gradient of that loss with respect to ``input``.

``backward(dloss=1.0)`` accepts an upstream gradient: a number for reduced losses (e.g. a loss
weight), an array of the loss's shape for ``'none'``. Targets are data: no gradient is returned for
them. The mathematics is in ``scratchlm.functional.loss``.

Arguments are keyword-only: torch's first positional argument is a per-class ``weight`` (or the
deprecated ``size_average``), which is not implemented here, and a positional call must not
silently mean something else. Not implemented: ``weight``, ``pos_weight``, probability ("soft")
targets for ``CrossEntropyLoss``.
"""

from .. import _autocast
from .. import functional as F
from .._checks import choice, integer, probability
from .module import Module

_REDUCTIONS = ("mean", "sum", "none")


class _Loss(Module):
    differentiable_inputs = (0,)

    def __init__(self, *, reduction="mean"):
        super().__init__()
        self.reduction = choice(reduction, "reduction", _REDUCTIONS)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    r"""Cross-entropy from logits (log-softmax and NLL fused in one Numba pass), with torch's
    ``ignore_index``, ``reduction`` and ``label_smoothing``. Input ``(N, C)``, ``(C,)`` or
    ``(N, C, d1, ...)``; target the matching integer class indices."""

    def __init__(self, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction=reduction)
        self.ignore_index = integer(ignore_index, "ignore_index")
        self.label_smoothing = probability(label_smoothing, "label_smoothing")

    def forward(self, input, target):
        loss, self._cache = F.cross_entropy_forward(input, target, self.ignore_index,
                                                    self.reduction, self.label_smoothing)
        return loss

    def backward(self, dloss=1.0):
        # under autocast with a loss scale (fp16 training), the scaled loss is what is
        # differentiated, as torch's scaler.scale(loss).backward()
        dx = F.cross_entropy_backward(dloss, self._saved())[0]
        scale = _autocast.loss_scale()
        return dx if scale == 1.0 else dx * dx.dtype.type(scale)


class NLLLoss(_Loss):
    r"""Negative log-likelihood of log-probabilities (pair it with ``LogSoftmax``). ``-inf``
    log-probabilities (probability 0) are accepted, as in torch; NaN is refused."""

    def __init__(self, *, ignore_index=-100, reduction="mean"):
        super().__init__(reduction=reduction)
        self.ignore_index = integer(ignore_index, "ignore_index")

    def forward(self, input, target):
        loss, self._cache = F.nll_forward(input, target, self.ignore_index, self.reduction)
        return loss

    def backward(self, dloss=1.0):
        return F.nll_backward(dloss, self._saved())[0]


class BCEWithLogitsLoss(_Loss):
    r"""Binary cross-entropy on logits, :math:`\max(x,0) - xy + \log(1+e^{-|x|})`: finite for any
    finite logit."""

    def forward(self, input, target):
        loss, self._cache = F.bce_with_logits_forward(input, target, self.reduction)
        return loss

    def backward(self, dloss=1.0):
        return F.bce_with_logits_backward(dloss, self._saved())[0]


class MSELoss(_Loss):
    r"""Mean squared error :math:`(x - y)^2`."""

    def forward(self, input, target):
        loss, self._cache = F.mse_forward(input, target, self.reduction)
        return loss

    def backward(self, dloss=1.0):
        return F.mse_backward(dloss, self._saved())[0]


class GaussianKLLoss(_Loss):
    r"""KL divergence of :math:`\mathcal N(\mu, e^{\text{logvar}})` from :math:`\mathcal N(0, I)`,
    summed over the latent (last) axis; ``'mean'`` averages over the batch. Called as
    ``kl = loss_fn(mu, logvar)``; ``backward()`` returns ``(dmu, dlogvar)``."""

    differentiable_inputs = (0, 1)

    def forward(self, mu, logvar):
        loss, self._cache = F.gaussian_kl_forward(mu, logvar, self.reduction)
        return loss

    def backward(self, dloss=1.0):
        return F.gaussian_kl_backward(dloss, self._saved())
