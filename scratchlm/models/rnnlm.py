r"""RNNLM: a recurrent language model (Mikolov et al., 2010; Zaremba et al., 2014 for the LSTM
with dropout; Press & Wolf, 2017 / Inan et al., 2017 for tied weights).

    idx (B, T) -> encoder (Embedding) -> dropout -> RNN | LSTM | GRU (num_layers, batch_first)
               -> dropout -> decoder (Linear H -> V)                   -> logits (B, T, V)

.. math::  p(x_{t+1} \mid x_{\le t}) = \mathrm{softmax}(W_{dec}\, h_t + b_{dec}),\qquad
           h_t = \mathrm{cell}(E x_t, h_{t-1})

The layout and names follow PyTorch's ``word_language_model`` example (``encoder``, ``rnn``,
``decoder``); ``tie_weights=True`` makes ``decoder.weight`` the embedding matrix (it needs
``hidden_size == embed_dim``).

Truncated backprop-through-time: ``model(x, y, state=...)`` starts from a carried state and leaves
the final one in ``model.state`` (plain arrays, i.e. detached: the backward stops at the start of
the batch). :func:`scratchlm.training.fit_lm` carries it across consecutive chunks of a stream
(:func:`scratchlm.data.sequential_batches`' layout).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import nn
from .._checks import (boolean, choice, float_array, float_errors_checked, index_array, make_rng,
                       positive_int, probability, resolve_dtype, trusted)
from ..decoding import check_sampling, sample_next
from .lm import LanguageModel

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNLMConfig:
    vocab_size: int = 256
    embed_dim: int = 128
    hidden_size: int = 256
    cell: str = "lstm"
    num_layers: int = 1
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            positive_int(getattr(self, name), name)
        choice(self.cell, "cell", tuple(_CELLS))
        probability(self.dropout, "dropout", allow_one=False)
        if self.tie_weights and self.hidden_size != self.embed_dim:
            raise ValueError(f"tie_weights needs hidden_size == embed_dim, got {self.hidden_size} "
                             f"and {self.embed_dim}")


class RNNLM(LanguageModel):
    """``RNNLM(vocab_size, embed_dim, hidden_size, cell='rnn'|'lstm'|'gru', num_layers=1,
    dropout=0.0, tie_weights=False, dtype=np.float32, rng=None)``.

    * ``logits = model(idx)`` -- ``(B, T, vocab_size)``;
    * ``logits, loss = model(idx, targets)`` -- mean cross-entropy (targets ``-1`` ignored);
    * ``state=`` -- the initial state (``h`` ``(L, B, H)``, or ``(h, c)`` for the LSTM); the final
      one is left in ``model.state``;
    * ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets.
      ``model.rnn.step_grad_norms`` then holds the per-step gradient norms.
    """

    recurrent = True                     # fit_lm carries model.state across consecutive chunks

    def __init__(self, vocab_size, embed_dim=128, hidden_size=256, cell="lstm", num_layers=1,
                 dropout=0.0, tie_weights=False, dtype=np.float32, rng=None):
        super().__init__()
        self.config = RNNLMConfig(vocab_size, embed_dim, hidden_size, cell, num_layers, dropout,
                                  tie_weights)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        c = self.config
        self.encoder = nn.Embedding(c.vocab_size, c.embed_dim, dtype=dtype, rng=rng)
        self.drop = nn.Dropout(c.dropout, rng=rng)
        self.rnn = _CELLS[c.cell](c.embed_dim, c.hidden_size, num_layers=c.num_layers,
                                  dropout=c.dropout if c.num_layers > 1 else 0.0,  # between layers
                                  batch_first=True, dtype=dtype, rng=rng)
        self.drop_out = nn.Dropout(c.dropout, rng=rng)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size, dtype=dtype, rng=rng)
        if c.tie_weights:
            self.decoder.weight = self.encoder.weight
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
        self.state = None

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Build from an :class:`RNNLMConfig` or its :meth:`config_dict` (e.g. a checkpoint's)."""
        return cls(**asdict(RNNLMConfig(**config) if isinstance(config, dict) else config),
                   dtype=dtype, rng=rng)

    def config_dict(self) -> dict:
        return asdict(self.config)

    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, idx, targets=None, state=None):
        c = self.config
        idx = index_array(idx, "idx", c.vocab_size, ndim=2)
        B, T = idx.shape
        x = self.drop(self.encoder(idx))                                      # (B, T, E)
        out, self.state = self.rnn(x, self._check_state(state, B))            # (B, T, H)
        logits = self.decoder(self.drop_out(out))                             # (B, T, V)
        return self._logits_and_loss(logits, idx, targets)

    def _check_state(self, state, B):
        if state is None:
            return None
        lstm = self.config.cell == "lstm"
        if lstm != isinstance(state, tuple):
            raise TypeError(f"state must be {'a tuple (h, c)' if lstm else 'an array h'} for a "
                            f"{self.config.cell} model")
        parts = state if lstm else (state,)
        want = (self.config.num_layers, B, self.config.hidden_size)
        for name, s in zip(("h", "c"), parts):
            s = float_array(s, f"state {name}")
            if s.shape != want:
                raise ValueError(f"state {name} must have shape {want} (num_layers, batch, "
                                 f"hidden_size), got {s.shape}")
        return state

    @trusted
    def _backward(self, dlogits):
        dout = self.drop_out.backward(self.decoder.backward(dlogits))         # (B, T, H)
        dx = self.drop.backward(self.rnn.backward(dout))                      # (B, T, E)
        self.encoder.backward(dx)                                             # into the embedding

    @trusted
    @float_errors_checked          # it checks its results; no NumPy warnings
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 seed=None):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens: read the prompt once, then feed
        one token at a time with the carried state (constant cost per token). Returns
        ``(B, T + new)``; sampling as :meth:`GPT.generate` (shared :func:`sample_next`)."""
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        max_new_tokens = positive_int(max_new_tokens, "max_new_tokens", minimum=0)
        temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
        greedy = boolean(greedy, "greedy")
        rng = make_rng(seed)
        was = self.training
        self.eval()
        try:
            out = [idx]
            logits = self.forward(idx)[:, -1]                                 # (B, V)
            for _ in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, greedy, rng)[:, None]
                out.append(nxt)
                logits = self.forward(nxt, state=self.state)[:, -1]
            return np.concatenate(out, axis=1)
        finally:
            self.train(was)

    def extra_repr(self):
        c = self.config
        return f"{c.cell}, vocab={c.vocab_size}, embed={c.embed_dim}, hidden={c.hidden_size}, layers={c.num_layers}"
