r"""ConvLM: a causal, dilated 1-D convolutional language model (the residual stack of WaveNet,
van den Oord et al., 2016, and of the TCN of Bai et al., 2018, without gates by default).

    idx (B, T) -> embed (Embedding V -> C) -> transpose        -> x (B, C, T)
               -> for each dilation d:  x = x + ReLU(CausalConv1d(x; kernel k, dilation d))
               -> transpose -> head (Linear C -> V)             -> logits (B, T, V)

A causal convolution pads the sequence on the **left** by :math:`(k-1)d` zeros and none on the
right, so output :math:`t` reads only inputs :math:`t, t-d, \dots, t-(k-1)d`:

.. math::  y_{o,t} = b_o + \sum_{c} \sum_{j=0}^{k-1} W_{o,c,j}\, x_{c,\, t - (k-1-j)\,d}
           \qquad (x_{c,s} = 0 \text{ for } s < 0)

With dilations 1, 2, 4, 8 and kernel 5 a position sees the last
:math:`1 + (k-1)\sum d = 61` tokens (the receptive field). Changing a future token never changes
an earlier output (tested).

Each block is ``blocks.{i}.conv`` (an ``nn.Conv1d`` with ``padding=0``; the left padding is done
here, explicitly). ``gated=True`` (off by default) makes a block WaveNet's gated unit,
:math:`x + \tanh(W_f * x) \odot \sigma(W_g * x)`, with one conv of ``2C`` outputs split in two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import (boolean, float_errors_checked, index_array, make_rng, positive_int,
                       resolve_dtype, trusted)
from ..decoding import check_sampling, sample_next
from .lm import LanguageModel


@dataclass
class ConvLMConfig:
    vocab_size: int = 256
    channels: int = 128
    kernel_size: int = 5
    dilations: list = field(default_factory=lambda: [1, 2, 4, 8])
    gated: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "channels", "kernel_size"):
            positive_int(getattr(self, name), name)
        self.dilations = [positive_int(d, "dilations entry") for d in self.dilations]
        if not self.dilations:
            raise ValueError("dilations must name at least one dilation")
        boolean(self.gated, "gated")

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


class CausalBlock(nn.Module):
    """``x + ReLU(conv(left_pad(x)))`` (or the gated form); x ``(B, C, T)``."""

    def __init__(self, channels, kernel_size, dilation, gated, dtype, rng):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.gated = gated
        self.conv = nn.Conv1d(channels, (2 if gated else 1) * channels, kernel_size,
                              dilation=dilation, dtype=dtype, rng=rng)

    def forward(self, x):
        B, C, T = x.shape
        xp = np.concatenate([np.zeros((B, C, self.pad), x.dtype), x], axis=2)   # (B, C, pad + T)
        h = self.conv(xp)                                                       # (B, C or 2C, T)
        if self.gated:
            f, g = np.tanh(h[:, :C]), F.sigmoid_forward(h[:, C:])[0]
            self._cache = (f, g)
            return x + f * g
        y, self._cache = F.add_relu_forward(x, h)                                # (B, C, T)
        return y

    def backward(self, dout):
        if self.gated:
            f, g = self._saved()
            # from y = x + f g, f = tanh(h_f), g = sigmoid(h_g)
            dh = np.concatenate([dout * g * (1 - f * f), dout * f * g * (1 - g)], axis=1)
        else:
            dout, dh = F.add_relu_backward(dout, self._saved())   # from y = x + ReLU(h)
        dxp = self.conv.backward(dh)                                            # (B, C, pad + T)
        return dout + dxp[:, :, self.pad:]                                      # drop the padding


class ConvLM(LanguageModel):
    """``ConvLM(vocab_size, channels=128, kernel_size=5, dilations=(1, 2, 4, 8), gated=False,
    dtype=np.float32, rng=None)``.

    * ``logits = model(idx)`` -- ``(B, T) -> (B, T, vocab_size)``;
    * ``logits, loss = model(idx, targets)`` -- mean cross-entropy (targets ``-1`` ignored);
    * ``model.backward(dlogits)``, or ``model.backward()`` after a call with targets.
    """

    def __init__(self, vocab_size, channels=128, kernel_size=5, dilations=(1, 2, 4, 8),
                 gated=False, dtype=np.float32, rng=None):
        super().__init__()
        self.config = ConvLMConfig(vocab_size, channels, kernel_size, list(dilations), gated)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.channels, dtype=dtype, rng=rng)
        self.blocks = nn.ModuleList([CausalBlock(c.channels, c.kernel_size, d, c.gated, dtype, rng)
                                     for d in c.dilations])
        self.head = nn.Linear(c.channels, c.vocab_size, dtype=dtype, rng=rng)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Build from a :class:`ConvLMConfig` or its :meth:`config_dict` (e.g. a checkpoint's)."""
        return cls(**asdict(ConvLMConfig(**config) if isinstance(config, dict) else config),
                   dtype=dtype, rng=rng)

    def config_dict(self) -> dict:
        return asdict(self.config)

    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, idx, targets=None):
        c = self.config
        idx = index_array(idx, "idx", c.vocab_size, ndim=2)
        B, T = idx.shape
        x = np.ascontiguousarray(self.embed(idx).transpose(0, 2, 1))          # (B, C, T)
        for block in self.blocks:
            x = block(x)
        logits = self.head(x.transpose(0, 2, 1))                              # (B, T, V)
        return self._logits_and_loss(logits, idx, targets)

    @trusted
    def _backward(self, dlogits):
        dx = np.ascontiguousarray(self.head.backward(dlogits).transpose(0, 2, 1))   # (B, C, T)
        for block in reversed(list(self.blocks)):
            dx = block.backward(dx)
        self.embed.backward(np.ascontiguousarray(dx.transpose(0, 2, 1)))           # (B, T, C)

    @trusted
    @float_errors_checked          # it checks its results; no NumPy warnings
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 seed=None):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens; returns ``(B, T + new)``. Each
        step reads only the last ``receptive_field`` tokens -- all an output can see -- so the
        cost per token is constant. Sampling as :meth:`GPT.generate` (shared
        :func:`sample_next`)."""
        idx = index_array(idx, "idx", self.config.vocab_size, ndim=2)
        max_new_tokens = positive_int(max_new_tokens, "max_new_tokens", minimum=0)
        temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
        greedy = boolean(greedy, "greedy")
        rng = make_rng(seed)
        R = self.config.receptive_field
        was = self.training
        self.eval()
        try:
            out = idx
            for _ in range(max_new_tokens):
                logits = self.forward(out[:, -R:])[:, -1]                       # (B, V)
                nxt = sample_next(logits, temperature, top_k, top_p, greedy, rng)
                out = np.concatenate([out, nxt[:, None]], axis=1)
            return out
        finally:
            self.train(was)

    def extra_repr(self):
        c = self.config
        return (f"vocab={c.vocab_size}, channels={c.channels}, kernel={c.kernel_size}, "
                f"dilations={c.dilations}, receptive_field={c.receptive_field}")
