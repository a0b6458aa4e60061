"""What the neural language models share (GPT, Llama, RNNLM, ConvLM): the loss head and the two
forms of ``backward``; and the KV-cache ``generate`` of the decoders (GPT, Llama).

A subclass computes ``logits`` ``(B, T, V)`` in its ``forward`` and ends with
``return self._logits_and_loss(logits, idx, targets)``; it implements ``_backward(dlogits)``
(marked ``@trusted``). Then, as nanoGPT:

* ``logits = model(idx)``;
* ``logits, loss = model(idx, targets)`` -- the mean cross-entropy over the targets that are not
  ``-1``, through the fused Numba pass (``nn.CrossEntropyLoss``);
* ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from .._checks import boolean, float_array, float_errors_checked, index_array, make_rng, positive_int
from ..decoding import check_sampling, sample_next


def any_trainable(*modules) -> bool:
    """Whether any parameter of ``modules`` has ``requires_grad``: a decoder's backward stops
    once nothing below the current layer is trained (fine-tuning the top layers only)."""
    return any(p.requires_grad for m in modules for p in m.parameters())


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


class CachedLanguageModel(LanguageModel):
    """A decoder that generates with a KV cache (GPT, Llama). A subclass defines
    :attr:`context_size` (the longest context it takes) and ``_step_logits(idx_new, start,
    past)``: the logits ``(B, V)`` of the last of the new tokens ``idx_new`` ``(B, t)`` at
    positions ``start..start+t-1``, given ``past`` (None: an empty cache) and returning the
    extended cache."""

    @property
    def context_size(self) -> int:
        raise NotImplementedError

    @float_errors_checked          # it checks its results; no NumPy warnings
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 seed=None, use_cache=True):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens; returns ``(B, T + new)`` (the
        prompt then the new tokens), as nanoGPT's ``generate``.

        Each step samples from ``softmax(logits / temperature)`` restricted to the ``top_k``
        most likely tokens and/or the smallest set whose probability reaches ``top_p``
        (nucleus sampling, Holtzman et al., 2020); ``greedy=True`` takes the argmax. With
        ``use_cache`` (default) each step feeds only the new token and attends over cached keys
        and values; once the sequence outgrows :attr:`context_size` the context is cropped to the last
        ``context_size`` tokens as nanoGPT does, and the cache is rebuilt from that window, so the
        tokens are the same with and without the cache. Runs in ``eval`` mode (no dropout)
        and restores the previous mode. Logits with NaN or +inf (a diverged model) raise
        :class:`~scratchlm._checks.NonFiniteError` -- never a stream of token 0.
        """
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        context = self.context_size
        max_new_tokens = positive_int(max_new_tokens, "max_new_tokens", minimum=0)
        temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
        greedy = boolean(greedy, "greedy")
        use_cache = boolean(use_cache, "use_cache")
        rng = make_rng(seed)
        was_training = self.training
        self.eval()
        try:
            out = idx.copy()
            past, start = None, 0
            for _ in range(max_new_tokens):
                T = out.shape[1]
                if not use_cache or past is None or T > context:
                    window = out[:, -context:]                           # nanoGPT's crop
                    logits, past = self._step_logits(window, 0, None)
                    start = window.shape[1]
                else:
                    logits, past = self._step_logits(out[:, -1:], start, past)
                    start += 1
                if not use_cache:
                    past = None
                nxt = sample_next(logits, temperature, top_k, top_p, greedy, rng)
                out = np.concatenate([out, nxt[:, None]], axis=1)
            return out
        finally:
            self.train(was_training)
