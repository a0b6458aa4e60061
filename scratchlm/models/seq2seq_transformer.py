r"""Seq2SeqTransformer: the encoder-decoder Transformer (Vaswani et al., 2017), pre-LayerNorm,
with ``torch.nn.Transformer``'s parameter names (``norm_first=True``, ``batch_first=True``).

    src (B, S)    -> src_embed * sqrt(d) + PE -> dropout -> N_enc x EncoderLayer -> norm
                                                                          = memory (B, S, d)
    tgt_in (B, T) -> tgt_embed * sqrt(d) + PE -> dropout -> N_dec x DecoderLayer(memory) -> norm
                  -> generator                                            -> logits (B, T, V_tgt)

Layers (``LN`` = LayerNorm, eps 1e-5; ``FF(h) = linear2(dropout(act(linear1(h))))`` with ReLU
or exact GELU; every residual branch ends in its own dropout):

.. math::

    \text{encoder:}\quad & x \leftarrow x + \mathrm{SA}(\mathrm{LN}_1(x);\ \text{src pad}), \qquad
                          x \leftarrow x + \mathrm{FF}(\mathrm{LN}_2(x)) \\
    \text{decoder:}\quad & y \leftarrow y + \mathrm{SA}_{\text{causal}}(\mathrm{LN}_1(y);\ \text{tgt pad}),
                          \quad y \leftarrow y + \mathrm{CA}(\mathrm{LN}_2(y), m, m;\ \text{src pad}),
                          \quad y \leftarrow y + \mathrm{FF}(\mathrm{LN}_3(y))

SA/CA are :class:`scratchlm.nn.MultiheadAttention` (query, key, value; ``key_padding_mask`` True
at ``pad_id``); :math:`m` is the memory. **Pre-LN** (Xiong et al., 2020; GPT-2; torch's
``norm_first=True``) rather than the original post-LN: the residual stream is never normalised,
so each block's gradient reaches the embeddings through the identity path and training is stable
without a long warm-up; the price is a final LayerNorm on each stack (``encoder.norm``,
``decoder.norm``). Token embeddings are multiplied by :math:`\sqrt{d}` (Vaswani et al., §3.4) and
drawn from :math:`\mathcal N(0, 1/d)` (fairseq's choice), so the scaled vectors have unit
variance, the scale of the sinusoidal table :math:`PE` (§3.5) -- or of a learned position table
(``positional='learned'``, :math:`\mathcal N(0, 1)`). The pad row of each embedding is zero and
gets no gradient.

**Backward** is the forward read in reverse. For a residual branch :math:`x_1 = x + f(g(x))`,
:math:`dx = dx_1 + g'(f'(dx_1))`. Self-attention passes one tensor as query, key and value, so
its input gradient is :math:`dq + dk + dv`. Cross-attention sends :math:`dk + dv` into the memory
from *every* decoder layer; these are summed, and the sum flows back through ``encoder.norm`` and
the encoder. Sinusoidal positions pass the gradient through; a learned table gets it summed over
the batch; the embeddings get it times :math:`\sqrt{d}`.

**Inference** (``encode``, ``init_state``, ``decode_step``; ``greedy`` and ``beam`` through
:mod:`scratchlm.decoding`): the memory is computed once, and each decoder layer's
cross-attention keys and values are projected from it once. With ``use_cache`` each step feeds
only the newest token and appends its self-attention keys and values to a per-layer cache, as
:meth:`scratchlm.models.GPT.generate` does; without it every step reruns the decoder on the whole
prefix (same tokens, slower).

Training on :class:`scratchlm.data.TranslationTask`: :class:`CharVocab`, :func:`scratchlm.training.fit_translation`
(AdamW, warm-up + cosine, gradient clipping) and :func:`exact_match`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import choice, index_array, make_rng, positive_int, probability, resolve_dtype, trusted
from .translation import EncoderDecoder

__all__ = ["Seq2SeqTransformer", "EncoderLayer", "DecoderLayer"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


# ------------------------------------------------------------------------------------------------
# attention on cached tensors (inference only: no cache for backward)
# ------------------------------------------------------------------------------------------------
def _heads(mha, x, i):
    """Project ``x`` (N, T, E) with the i-th block (0 query, 1 key, 2 value) of ``in_proj``
    -> (N, H, T, Dh)."""
    E, H = mha.embed_dim, mha.num_heads
    W = mha.in_proj_weight.data[i * E:(i + 1) * E]
    b = None if mha.in_proj_bias is None else mha.in_proj_bias.data[i * E:(i + 1) * E]
    y, _ = F.linear_forward(x, W, b)
    N, T, _ = x.shape
    return y.reshape(N, T, H, E // H).transpose(0, 2, 1, 3)


def _attend(mha, q, k, v, mask=None):
    """softmax(q k^T / sqrt(Dh)) v over heads, merged and through ``out_proj``: (N, Tq, E).
    ``mask``: bool, True = may attend (the functional convention)."""
    N, _, Tq, _ = q.shape
    ctx, _ = F.attention_forward(q, k, v, attn_mask=mask)
    merged = ctx.transpose(0, 2, 1, 3).reshape(N, Tq, mha.embed_dim)
    bias = None if mha.out_proj.bias is None else mha.out_proj.bias.data
    return F.linear_forward(merged, mha.out_proj.weight.data, bias)[0]


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
class _Layer(nn.Module):
    """The feed-forward block shared by both layers: ``linear2(dropout(act(linear1(h))))``."""

    def _build_ff(self, d_model, dim_feedforward, dropout, activation, dtype, rng):
        self.linear1 = nn.Linear(d_model, dim_feedforward, dtype=dtype, rng=rng)
        self.dropout = nn.Dropout(dropout, rng=rng)
        self.linear2 = nn.Linear(dim_feedforward, d_model, dtype=dtype, rng=rng)
        self.activation = _ACTIVATIONS[activation]()

    def _ff(self, h):
        return self.linear2(self.dropout(self.activation(self.linear1(h))))

    def _ff_backward(self, d):
        d = self.dropout.backward(self.linear2.backward(d))
        return self.linear1.backward(self.activation.backward(d))


class EncoderLayer(_Layer):
    """``x = x + dropout1(SA(norm1(x)))``; ``x = x + dropout2(FF(norm2(x)))``."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, dtype, rng):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True,
                                               dtype=dtype, rng=rng)
        self._build_ff(d_model, dim_feedforward, dropout, activation, dtype, rng)
        self.norm1 = nn.LayerNorm(d_model, dtype=dtype)
        self.norm2 = nn.LayerNorm(d_model, dtype=dtype)
        self.dropout1 = nn.Dropout(dropout, rng=rng)
        self.dropout2 = nn.Dropout(dropout, rng=rng)

    def forward(self, x, src_pad):
        h = self.norm1(x)
        a, _ = self.self_attn(h, h, h, key_padding_mask=src_pad, need_weights=False)
        x = x + self.dropout1(a)
        return x + self.dropout2(self._ff(self.norm2(x)))

    def backward(self, dout):
        # x2 = x1 + FF(norm2(x1)):  dx1 = dx2 + norm2'(FF'(dx2))
        d = dout + self.norm2.backward(self._ff_backward(self.dropout2.backward(dout)))
        # x1 = x + SA(h, h, h), h = norm1(x):  dh = dq + dk + dv
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(d))
        return d + self.norm1.backward(dq + dk + dv)


class DecoderLayer(_Layer):
    """``y = y + dropout1(causal SA(norm1(y)))``; ``y = y + dropout2(CA(norm2(y), memory))``;
    ``y = y + dropout3(FF(norm3(y)))``. ``backward`` returns ``(dy, dmemory)``."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, dtype, rng):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True,
                                               dtype=dtype, rng=rng)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout,
                                                    batch_first=True, dtype=dtype, rng=rng)
        self._build_ff(d_model, dim_feedforward, dropout, activation, dtype, rng)
        self.norm1 = nn.LayerNorm(d_model, dtype=dtype)
        self.norm2 = nn.LayerNorm(d_model, dtype=dtype)
        self.norm3 = nn.LayerNorm(d_model, dtype=dtype)
        self.dropout1 = nn.Dropout(dropout, rng=rng)
        self.dropout2 = nn.Dropout(dropout, rng=rng)
        self.dropout3 = nn.Dropout(dropout, rng=rng)

    def forward(self, y, memory, tgt_pad, src_pad):
        h = self.norm1(y)
        a, _ = self.self_attn(h, h, h, key_padding_mask=tgt_pad, need_weights=False, is_causal=True)
        y = y + self.dropout1(a)
        a, _ = self.multihead_attn(self.norm2(y), memory, memory, key_padding_mask=src_pad,
                                   need_weights=False)
        y = y + self.dropout2(a)
        return y + self.dropout3(self._ff(self.norm3(y)))

    def step(self, y, cross_kv, past, src_keep):
        """Inference on the newest position ``y`` (N, 1, E): self-attention over the cached
        keys/values ``past`` (N, H, t-1, Dh) each plus its own, cross-attention over the
        precomputed ``cross_kv``; returns the output and the extended ``past``."""
        h = self.norm1(y)
        k = np.concatenate([past[0], _heads(self.self_attn, h, 1)], axis=2)   # (N, H, t, Dh)
        v = np.concatenate([past[1], _heads(self.self_attn, h, 2)], axis=2)
        y = y + _attend(self.self_attn, _heads(self.self_attn, h, 0), k, v)   # sees all t: causal
        q = _heads(self.multihead_attn, self.norm2(y), 0)
        y = y + _attend(self.multihead_attn, q, *cross_kv, mask=src_keep)
        return y + self._ff(self.norm3(y)), (k, v)

    def backward(self, dout):
        d = dout + self.norm3.backward(self._ff_backward(self.dropout3.backward(dout)))
        dq, dk_mem, dv_mem = self.multihead_attn.backward(self.dropout2.backward(d))
        d = d + self.norm2.backward(dq)                       # memory is key and value only
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(d))
        return d + self.norm1.backward(dq + dk + dv), dk_mem + dv_mem


class Encoder(nn.Module):
    """``layers`` then ``norm`` (torch.nn.TransformerEncoder with ``norm=LayerNorm``)."""

    def __init__(self, layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, x, src_pad):
        for layer in self.layers:
            x = layer(x, src_pad)
        return self.norm(x)

    def backward(self, dmemory):
        d = self.norm.backward(dmemory)
        for layer in reversed(list(self.layers)):
            d = layer.backward(d)
        return d


class Decoder(nn.Module):
    """``layers`` then ``norm``; ``backward`` returns ``(dy, dmemory)`` with ``dmemory`` summed
    over the layers (every one attends to the same memory)."""

    def __init__(self, layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, y, memory, tgt_pad, src_pad):
        for layer in self.layers:
            y = layer(y, memory, tgt_pad, src_pad)
        return self.norm(y)

    def step(self, y, cross_kv, past, src_keep):
        new_past = []
        for layer, ckv, p in zip(self.layers, cross_kv, past):
            y, kv = layer.step(y, ckv, p, src_keep)
            new_past.append(kv)
        return self.norm(y), new_past

    def backward(self, dout):
        d = self.norm.backward(dout)
        dmemory = None
        for layer in reversed(list(self.layers)):
            d, dm = layer.backward(d)
            dmemory = dm if dmemory is None else dmemory + dm
        return d, dmemory


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
class Seq2SeqTransformer(EncoderDecoder):
    """``Seq2SeqTransformer(src_vocab_size, tgt_vocab_size, d_model=128, nhead=4,
    num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512, dropout=0.0, max_len=256,
    pad_id=0, bos_id=1, eos_id=2, activation='relu', positional='sinusoidal', dtype=np.float32,
    rng=None)``.

    * ``logits = model(src, tgt_in)``: src ``(B, S)``, tgt_in ``(B, T)`` int ids right-padded
      with ``pad_id`` -> ``(B, T, tgt_vocab_size)``;
    * ``logits, loss = model(src, tgt_in, tgt_out)``: mean cross-entropy over the non-pad
      targets;
    * ``model.backward(dlogits=None, dloss=None)``: ``backward()`` after a call with ``tgt_out``
      backpropagates the loss; ``backward(dlogits)`` an upstream gradient on the logits; both
      add. Returns None (ids have no gradient) and accumulates into every ``param.grad``.
    * inference: ``encode(src)``, ``init_state(src)``, ``decode_step(tokens, state)``,
      ``greedy(src)``, ``beam(src, beam_size)``.

    Padding: ``pad_id`` positions are ignored as keys (``key_padding_mask``) and as targets;
    the logits at padded target positions are computed but meaningless. A source row made only
    of padding gives a zero cross-attention output (PyTorch gives NaN).

    Parameter names are ``torch.nn.Transformer``'s (``encoder.layers.0.self_attn.in_proj_weight``,
    ``decoder.layers.0.multihead_attn.out_proj.weight``, ``decoder.norm.weight`` ...) plus
    ``src_embed``, ``tgt_embed``, ``src_pos``/``tgt_pos`` (buffer ``pe``, or ``weight`` when
    learned) and ``generator``.
    """

    differentiable_inputs = ()

    def __init__(self, src_vocab_size, tgt_vocab_size, d_model=128, nhead=4,
                 num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512, dropout=0.0,
                 max_len=256, pad_id=0, bos_id=1, eos_id=2, activation="relu",
                 positional="sinusoidal", dtype=np.float32, rng=None):
        super().__init__()
        self.src_vocab_size = positive_int(src_vocab_size, "src_vocab_size")
        self.tgt_vocab_size = positive_int(tgt_vocab_size, "tgt_vocab_size")
        self.d_model = positive_int(d_model, "d_model")
        self.nhead = positive_int(nhead, "nhead")
        if self.d_model % self.nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        num_encoder_layers = positive_int(num_encoder_layers, "num_encoder_layers")
        num_decoder_layers = positive_int(num_decoder_layers, "num_decoder_layers")
        dim_feedforward = positive_int(dim_feedforward, "dim_feedforward")
        dropout = probability(dropout, "dropout", allow_one=False)
        self.max_len = positive_int(max_len, "max_len")
        self._set_special_ids(pad_id, bos_id, eos_id)
        self.activation = choice(activation, "activation", tuple(_ACTIVATIONS))
        self.positional = choice(positional, "positional", ("sinusoidal", "learned"))
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        d = self.d_model

        self.src_embed = nn.Embedding(self.src_vocab_size, d, padding_idx=self.pad_id, dtype=dtype, rng=rng)
        self.tgt_embed = nn.Embedding(self.tgt_vocab_size, d, padding_idx=self.pad_id, dtype=dtype, rng=rng)
        for emb in (self.src_embed, self.tgt_embed):             # N(0, 1/d): unit variance after * sqrt(d)
            emb.weight.data *= emb.weight.data.dtype.type(1 / math.sqrt(d))
        if self.positional == "sinusoidal":
            self.src_pos = nn.SinusoidalPositionalEncoding(d, self.max_len, dtype=dtype)
            self.tgt_pos = nn.SinusoidalPositionalEncoding(d, self.max_len, dtype=dtype)
        else:
            self.src_pos = nn.Embedding(self.max_len, d, dtype=dtype, rng=rng)
            self.tgt_pos = nn.Embedding(self.max_len, d, dtype=dtype, rng=rng)
        self.src_drop = nn.Dropout(dropout, rng=rng)
        self.tgt_drop = nn.Dropout(dropout, rng=rng)
        args = (d, self.nhead, dim_feedforward, dropout, self.activation, dtype, rng)
        self.encoder = Encoder([EncoderLayer(*args) for _ in range(num_encoder_layers)],
                               nn.LayerNorm(d, dtype=dtype))
        self.decoder = Decoder([DecoderLayer(*args) for _ in range(num_decoder_layers)],
                               nn.LayerNorm(d, dtype=dtype))
        self.generator = nn.Linear(d, self.tgt_vocab_size, dtype=dtype, rng=rng)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=self.pad_id)
        self._has_loss = False

    # -- embeddings --------------------------------------------------------------------------
    def _parts(self, side):
        return ((self.src_embed, self.src_pos, self.src_drop) if side == "src"
                else (self.tgt_embed, self.tgt_pos, self.tgt_drop))

    def _embed(self, ids, side):
        """dropout(embed(ids) * sqrt(d) + P[:T]) (B, T, d), keeping caches for backward."""
        emb, pos, drop = self._parts(side)
        x = emb(ids)
        x = x * x.dtype.type(math.sqrt(self.d_model))
        x = pos(x) if self.positional == "sinusoidal" else x + pos(np.arange(ids.shape[1]))
        return drop(x)

    def _embed_backward(self, d, side):
        emb, pos, drop = self._parts(side)
        d = drop.backward(d)
        if self.positional == "sinusoidal":
            d = pos.backward(d)
        else:
            pos.backward(np.ascontiguousarray(d.sum(axis=0)))                # (T, d): summed over B
        emb.backward(d * d.dtype.type(math.sqrt(self.d_model)))

    def _embed_at(self, ids, side, offset):
        """Inference embedding of ``ids`` (N, t) at positions offset.. (no dropout, no cache)."""
        emb, pos, _ = self._parts(side)
        table = pos.pe if self.positional == "sinusoidal" else pos.weight.data
        w = emb.weight.data
        return w[ids] * w.dtype.type(math.sqrt(self.d_model)) + table[offset:offset + ids.shape[1]]

    # -- input checks ----------------------------------------------------------------------------
    def _ids(self, ids, name, vocab):
        ids = index_array(ids, name, vocab, ndim=2)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"{name} has sequence length {ids.shape[1]}, more than max_len "
                             f"{self.max_len}")
        return ids

    def _check_pair(self, src, tgt_in):
        src = self._ids(src, "src", self.src_vocab_size)
        tgt_in = self._ids(tgt_in, "tgt_in", self.tgt_vocab_size)
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src and tgt_in must have the same batch size, got src {src.shape} "
                             f"and tgt_in {tgt_in.shape}")
        return src, tgt_in

    # -- training path ---------------------------------------------------------------------------
    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, src, tgt_in, tgt_out=None):
        src, tgt_in = self._check_pair(src, tgt_in)
        if tgt_out is not None:
            tgt_out = index_array(tgt_out, "tgt_out", self.tgt_vocab_size, ndim=2)
            if tgt_out.shape != tgt_in.shape:
                raise ValueError(f"tgt_out must have the shape of tgt_in {tgt_in.shape}, got {tgt_out.shape}")
        src_pad, tgt_pad = src == self.pad_id, tgt_in == self.pad_id          # True = ignore
        memory = self.encoder(self._embed(src, "src"), src_pad)               # (B, S, d)
        y = self.decoder(self._embed(tgt_in, "tgt"), memory, tgt_pad, src_pad)   # (B, T, d)
        logits = self.generator(y)                                            # (B, T, V)
        self._cache = (logits.shape,)
        self._has_loss = tgt_out is not None
        if tgt_out is None:
            return logits
        B, T, V = logits.shape
        return logits, self.loss_fn(logits.reshape(B * T, V), tgt_out.reshape(-1))

    @trusted
    def _backward(self, g):
        dy, dmemory = self.decoder.backward(self.generator.backward(g))
        self._embed_backward(dy, "tgt")
        self._embed_backward(self.encoder.backward(dmemory), "src")

    # -- inference -------------------------------------------------------------------------------
    @trusted                        # ids checked here; a non-finite model is caught where
                                    # its log-probabilities are turned into a choice
    def encode(self, src):
        """The memory ``(B, S, d_model)`` of ``src`` ``(B, S)``, in eval mode (dropout off; the
        mode is restored)."""
        src = self._ids(src, "src", self.src_vocab_size)
        with self._evaluating():
            return self.encoder(self._embed(src, "src"), src == self.pad_id)

    @trusted
    def init_state(self, src, use_cache=True):
        """The decoding state of ``src``: ``memory``, ``src_keep`` (N, 1, 1, S) bool (True = a
        real source token) and, with ``use_cache``, each decoder layer's cross-attention keys and
        values ``cross_kv`` and an empty self-attention cache ``self_kv`` ((N, H, 0, Dh) each).
        Every array has the batch on axis 0, so :func:`scratchlm.decoding.default_reorder` applies."""
        src = self._ids(src, "src", self.src_vocab_size)
        memory = self.encode(src)
        state = {"memory": memory, "src_keep": (src != self.pad_id)[:, None, None, :]}
        if use_cache:
            N, H, Dh = src.shape[0], self.nhead, self.d_model // self.nhead
            layers = list(self.decoder.layers)
            state["cross_kv"] = [(_heads(l.multihead_attn, memory, 1), _heads(l.multihead_attn, memory, 2))
                                 for l in layers]
            empty = np.zeros((N, H, 0, Dh), memory.dtype)
            state["self_kv"] = [(empty, empty) for _ in layers]
        return state

    @trusted
    def decode_step(self, tokens, state):
        """``(log_probs (N, V) float64, new_state)`` for the next token after ``tokens`` (N, t)
        (BOS first): the step function of :mod:`scratchlm.decoding`. With a cache (see
        :meth:`init_state`) only ``tokens[:, -1]`` is fed, so the steps must come in order.
        ``pad_id`` and ``bos_id`` get probability 0: they are never generated."""
        tokens = self._ids(tokens, "tokens", self.tgt_vocab_size)
        if not isinstance(state, dict) or "memory" not in state:
            raise TypeError("state must be the dict returned by init_state")
        N, t = tokens.shape
        if state["memory"].shape[0] != N:
            raise ValueError(f"tokens has {N} rows but state holds {state['memory'].shape[0]}")
        with self._evaluating():
            if "self_kv" in state:
                cached = state["self_kv"][0][0].shape[2]
                if cached != t - 1:
                    raise ValueError(f"tokens has {t} positions but the cache holds {cached}: "
                                     f"decode_step must see every prefix in order")
                y = self._embed_at(tokens[:, -1:], "tgt", t - 1)
                y, self_kv = self.decoder.step(y, state["cross_kv"], state["self_kv"], state["src_keep"])
                state = {**state, "self_kv": self_kv}
            else:
                src_pad = ~state["src_keep"][:, 0, 0, :]
                y = self.decoder(self._embed(tokens, "tgt"), state["memory"], None, src_pad)[:, -1:]
            logits = self.generator(y)[:, 0].astype(np.float64)                # (N, V)
        logits[:, [self.pad_id, self.bos_id]] = -np.inf
        m = logits.max(axis=1, keepdims=True)
        return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))), state

    def _max_decode_len(self, max_len):
        if max_len is None:
            return self.max_len
        max_len = positive_int(max_len, "max_len")
        if max_len > self.max_len:
            raise ValueError(f"max_len must be <= the model's max_len {self.max_len}, got {max_len}")
        return max_len

    def extra_repr(self):
        return (f"d_model={self.d_model}, nhead={self.nhead}, max_len={self.max_len}, "
                f"positional={self.positional!r}")
