"""What the neural language models share (GPT, Llama, RNNLM, ConvLM): the loss head and the two
forms of ``backward``; the KV-cache ``generate`` of the decoders (GPT, Llama); and their
sequence-classification head.

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
from .._checks import (boolean, float_array, float_errors_checked, index_array, make_rng,
                       positive_int, trusted)
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


class SequenceClassifier:
    r"""The classification head both decoders share (``LlamaForSequenceClassification``,
    ``GPTForSequenceClassification``; ``transformers``' heads of those names): ``score``
    (``Linear(hidden, num_labels)``, no bias) reads the final hidden state of each sequence's
    last token that is not ``pad_token_id`` (sequences are right-padded):

    .. math::  \ell_b = W_s\,h_{b,\,t_b},\qquad t_b = \max\{t : \text{idx}_{b,t} \ne
               \text{pad}\}

    * ``logits = model(idx)`` -- ``(B, num_labels)``; ``logits, loss = model(idx, labels)`` --
      mean cross-entropy over the batch;
    * ``model.backward(dlogits)`` or ``model.backward()``: the gradient enters the body at each
      sequence's last token only.

    A subclass provides the body: ``_build_body``, ``_init_weights``,
    ``_body_forward(idx) -> h (B, T, C)`` and ``_body_backward(dh)``, its parameters under
    ``BODY_PREFIX``, its config class ``CONFIG`` and the config's width field ``HIDDEN``.
    """

    BODY_PREFIX = ""
    CONFIG = None                                   # the body's config class
    HIDDEN = ""                                     # its field holding the width C

    def __init__(self, config, num_labels: int = 2, pad_token_id: int = 0, dtype=np.float32,
                 rng=None):
        super().__init__()
        rng = make_rng(rng)
        self._build_body(config, dtype, rng)
        self._init_head(getattr(config, self.HIDDEN), num_labels, pad_token_id, dtype, rng)
        self._init_weights(rng)

    def _init_head(self, hidden, num_labels, pad_token_id, dtype, rng):
        self.num_labels = positive_int(num_labels, "num_labels")
        self.pad_token_id = int(index_array(np.array([pad_token_id]), "pad_token_id",
                                            self.config.vocab_size)[0])
        self.score = nn.Linear(hidden, self.num_labels, bias=False, dtype=dtype, rng=rng)
        self.loss_fn = nn.CrossEntropyLoss()

    @classmethod
    def from_causal_lm(cls, lm, num_labels: int, pad_token_id: int = 0, rng=None):
        """A classifier whose body is a copy of the language model ``lm``'s (``score`` fresh)."""
        model = cls(lm.config, num_labels, pad_token_id, dtype=lm.dtype, rng=rng)
        body = {k: v for k, v in lm.state_dict().items() if k.startswith(cls.BODY_PREFIX)}
        model.load_state_dict(body | {"score.weight": model.score.weight.data}, strict=True)
        return model

    @classmethod
    def from_config(cls, config: dict, dtype=np.float32, rng=None):
        """Build from :meth:`config_dict` (a checkpoint's): the body's config plus
        ``num_labels`` and ``pad_token_id``."""
        if not isinstance(config, dict) or not {"num_labels", "pad_token_id"} <= set(config):
            raise ValueError(f"a {cls.__name__} config must be a dict with num_labels and "
                             f"pad_token_id, got {config!r:.80}")
        body = {k: v for k, v in config.items() if k not in ("num_labels", "pad_token_id")}
        return cls(cls.CONFIG(**body), config["num_labels"], config["pad_token_id"], dtype=dtype,
                   rng=rng)

    def last_token(self, idx) -> np.ndarray:
        """``(B,)`` the index of each row's last token that is not padding."""
        real = idx != self.pad_token_id                                       # (B, T)
        if not real.any(axis=1).all():
            row = int(np.flatnonzero(~real.any(axis=1))[0])
            raise ValueError(f"idx row {row} is all padding (pad_token_id {self.pad_token_id}): "
                             f"there is no token to classify from")
        return idx.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1)

    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, idx, labels=None):
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        h = self._body_forward(idx)                                           # (B, T, C)
        last = self.last_token(idx)                                           # (B,)
        logits = self.score(h[np.arange(idx.shape[0]), last])                 # (B, L)
        self._cache = (h.shape, last)
        if labels is None:
            self._has_loss = False
            return logits
        labels = index_array(labels, "labels", self.num_labels, ndim=1)
        if labels.shape != (idx.shape[0],):
            raise ValueError(f"labels must have shape ({idx.shape[0]},), got {labels.shape}")
        self._has_loss = True
        return logits, self.loss_fn(logits, labels)

    @trusted
    def backward(self, dlogits=None):
        shape, last = self._saved()
        if dlogits is None:
            if not self._has_loss:
                raise RuntimeError("backward() without dlogits needs a forward call with labels")
            dlogits = self.loss_fn.backward()
        dpooled = self.score.backward(dlogits)                                # (B, C)
        dh = np.zeros(shape, dpooled.dtype)                                   # (B, T, C)
        dh[np.arange(shape[0]), last] = dpooled             # from pooled = h[b, last_b]
        self._body_backward(dh)
        return None

    def config_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self.config) | {"num_labels": self.num_labels,
                                      "pad_token_id": self.pad_token_id}
