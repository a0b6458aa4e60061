"""What the neural language models share (GPT, RNNLM, ConvLM): the loss head and the two forms of
``backward``.

A subclass computes ``logits`` ``(B, T, V)`` in its ``forward`` and ends with
``return self._logits_and_loss(logits, idx, targets)``; it implements ``_backward(dlogits)``
(marked ``@trusted``). Then, as nanoGPT:

* ``logits = model(idx)``;
* ``logits, loss = model(idx, targets)`` -- the mean cross-entropy over the targets that are not
  ``-1``, through the fused Numba pass (``nn.CrossEntropyLoss``);
* ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets.
"""

from __future__ import annotations

from .. import nn
from .._checks import float_array, index_array


class LanguageModel(nn.Module):
    """Base of the token-level language models; ``self.config.vocab_size`` names the vocabulary."""

    def _logits_and_loss(self, logits, idx, targets):
        B, T = idx.shape
        self._cache = (B, T)
        if targets is None:
            self._has_loss = False
            return logits
        targets = index_array(targets, "targets", self.config.vocab_size, ndim=2, ignore_index=-1)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {idx.shape}, got {targets.shape}")
        loss = self.loss_fn(logits.reshape(B * T, -1), targets.reshape(-1))   # (B*T, V) vs (B*T,)
        self._has_loss = True
        return logits, loss

    def backward(self, dlogits=None):
        """Backpropagate ``dlogits`` ``(B, T, V)``, or the loss of the last call with targets.
        Returns None (the inputs are token ids); every ``param.grad`` is accumulated."""
        B, T = self._saved()
        if dlogits is None:
            if not self._has_loss:
                raise RuntimeError("backward() without dlogits needs a forward call with targets")
            dlogits = self.loss_fn.backward().reshape(B, T, -1)
        else:
            dlogits = float_array(dlogits, "dlogits", ndim=3)               # finite, checked here
        self._backward(dlogits)
