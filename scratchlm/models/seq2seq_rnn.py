r"""Seq2Seq: the RNN encoder-decoder (Sutskever et al., 2014, "Sequence to Sequence Learning with
Neural Networks"; Cho et al., 2014, "Learning Phrase Representations using RNN Encoder-Decoder"),
with optional global attention (Bahdanau et al., 2015, "Neural Machine Translation by Jointly
Learning to Align and Translate"; Luong et al., 2015, "Effective Approaches to Attention-based
Neural Machine Translation").

.. code-block:: text

    src (B, S)    -> src_embed -> dropout -> encoder RNN ------------> memory (B, S, H)
                                               | final state (h_n[, c_n]) (L, B, H)
                                               v
    tgt_in (B, T) -> tgt_embed -> dropout -> decoder RNN (h_0 = encoder's final state)
                  -> s_t (B, T, H) -> [attention over memory, combine] -> dropout -> generator
                                                                          -> logits (B, T, V_tgt)

**Encoder.** An ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (``cell``) of ``num_layers`` layers over
the embedded source, :math:`m_s = \mathrm{RNN}(x_s, m_{s-1})`. Its final state -- every layer's
:math:`h` (and the LSTM's :math:`c`) *at each sequence's own last real token* -- is the
decoder's initial state (Sutskever et al.; Cho et al.'s summary vector :math:`c`). Sources are
right-padded with ``pad_id``; to take the final state at the true last step, rows of equal
length run together (as ``torch.nn.utils.rnn.pack_padded_sequence`` does): one pass of
:func:`scratchlm.functional.recurrent_forward` per layer and per distinct length, each on
exactly its sequences' real steps, with the encoder module's parameters. So padding never enters
the encoder, and a padded batch gives the outputs of its sequences run one at a time (tested).
Memory positions past a sequence's end are zero and masked out of the attention.

**Decoder** (teacher forcing). The same cell type and size, run over the whole target prefix
``tgt_in`` = BOS + target at once: :math:`s_t = \mathrm{RNN}(y_{t-1}, s_{t-1})`,
:math:`s_0 = h^{enc}_{\mathrm{final}}`. Without attention the logits are
:math:`W_o\,s_t + b_o`.

**Attention** (``attention='dot'`` or ``'additive'``; :class:`GlobalAttention`). Luong's global
attention, in which the decoder's output :math:`s_t` queries the memory after the recurrent
step (no input feeding, so the decoder still runs over the whole sequence at once):

.. math::

    \text{dot (Luong):}\quad & e_{ts} = s_t^\top m_s \\
    \text{additive (Bahdanau; Luong's "concat"):}\quad & e_{ts} = v^\top \tanh(W_q s_t + W_k m_s) \\
    & a_{ts} = \frac{\exp e_{ts}\,[s < n]}{\sum_{s' < n} \exp e_{ts'}},\qquad
      c_t = \sum_s a_{ts}\, m_s \\
    & \tilde s_t = \tanh(W_c\,[c_t; s_t]),\qquad \text{logits}_t = W_o\,\tilde s_t + b_o

with :math:`n` the source length (padded positions get weight 0; an all-padding source gives
:math:`c_t = 0`). ``W_q``, ``W_k`` (``attention_size`` x ``hidden_size``), ``W_c`` have no bias,
as in the papers.

**Backward**, in reverse order: generator, combine layer (``d[c_t; s_t]`` split in two), the
attention (masked-softmax backward, :math:`dm_s \mathrel{+}= \sum_t a_{ts}\,dc_t` plus the score
path), then the decoder RNN with :math:`ds_t` = the gradient through the logits plus the
attention query's gradient; the decoder's ``dhx`` -- the gradient of its initial state -- is the
gradient of the encoder's final state, which enters each length group's BPTT as ``dh_n``
(``dc_n``) next to :math:`dm` on every output. Every parameter's ``.grad`` accumulates.

**Inference** (``init_state``, ``decode_step``; ``greedy`` and ``beam`` through
:mod:`scratchlm.decoding`): the memory (and, for additive attention, :math:`W_k m`) is computed
once; each step feeds only the newest token, the RNN state carrying the prefix.

Training and evaluation on :class:`scratchlm.data.TranslationTask` use the same
:func:`~scratchlm.training.fit_translation` and
:func:`~scratchlm.models.seq2seq_transformer.exact_match` as :class:`Seq2SeqTransformer`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import (choice, float_array, index_array, make_rng, positive_int, probability,
                       resolve_dtype, trusted, upstream)
from .translation import EncoderDecoder
from ..kernels import attention as KA

__all__ = ["Seq2Seq", "GlobalAttention"]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
def _masked_softmax(e, keep):
    """softmax of the scores ``e`` (B, T, S) over the keys kept by ``keep`` (B, S); a row with
    nothing kept is all zeros. Returns probs (B, T, S)."""
    e = np.where(keep[:, None, :], e, e.dtype.type(-np.inf))                     # (B, T, S)
    return KA.attention_softmax(np.ascontiguousarray(e), 1.0, False, 0)


def _masked_softmax_backward(dprobs, probs):
    """From ``p = softmax(e)`` over the kept keys: :math:`de = p \\odot (dp - \\langle dp, p
    \\rangle)`, zero where ``p`` is zero (the masked keys)."""
    return KA.attention_softmax_backward(np.ascontiguousarray(dprobs), probs, 1.0, False, 0)


def _additive_forward(q, k, v, memory, keep):
    """Bahdanau scores from projected queries ``q`` (B, T, A) and keys ``k`` (B, S, A):
    context (B, T, H), weights (B, T, S) and the tanh's cache (``.y``: z (B, T, S, A))."""
    z, tanh_cache = F.tanh_forward(q[:, :, None, :] + k[:, None, :, :])        # (B, T, S, A)
    probs = _masked_softmax(z @ v, keep)                                        # (B, T, S)
    return probs @ memory, probs, tanh_cache                                    # (B, T, H)


class GlobalAttention(nn.Module):
    r"""``GlobalAttention(hidden_size, score='dot', attention_size=None, dtype=np.float32,
    rng=None)``: Luong et al.'s global attention of queries over a memory, with the ``'dot'``
    score :math:`e_{ts} = q_t^\top m_s` or the ``'additive'`` one :math:`e_{ts} = v^\top
    \tanh(W_q q_t + W_k m_s)` (Bahdanau et al.), a softmax over the kept memory positions and
    the context :math:`c_t = \sum_s a_{ts} m_s`.

    ``context, weights = attn(query (B, T, H), memory (B, S, H), keep (B, S) bool or None)``
    (``keep`` True = a real position) -> ``(B, T, H)``, ``(B, T, S)``;
    ``backward(dcontext, dweights=None)`` -> ``(dquery, dmemory)``.

    Parameters (additive only): ``query.weight`` :math:`W_q` and ``key.weight`` :math:`W_k`
    ``(attention_size, hidden_size)`` (default ``attention_size = hidden_size``), ``v``
    ``(attention_size,)`` from :math:`U(\pm 1/\sqrt{A})`.
    """

    def __init__(self, hidden_size, score="dot", attention_size=None, dtype=np.float32, rng=None):
        super().__init__()
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.score = choice(score, "score", ("dot", "additive"))
        self.dtype = resolve_dtype(dtype)
        if attention_size is not None and self.score != "additive":
            raise ValueError(f"attention_size applies to the additive score only, got "
                             f"attention_size={attention_size!r} with score={self.score!r}")
        if self.score == "additive":
            rng = make_rng(rng)
            A = self.hidden_size if attention_size is None else positive_int(attention_size, "attention_size")
            self.query = nn.Linear(self.hidden_size, A, bias=False, dtype=dtype, rng=rng)
            self.key = nn.Linear(self.hidden_size, A, bias=False, dtype=dtype, rng=rng)
            self.v = nn.Parameter(rng.uniform(-1 / math.sqrt(A), 1 / math.sqrt(A), A).astype(self.dtype))

    def _check(self, query, memory, keep):
        query = float_array(query, "query", ndim=3)
        memory = float_array(memory, "memory", ndim=3)
        for name, x in (("query", query), ("memory", memory)):
            if x.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but GlobalAttention holds {self.dtype}")
            if x.shape[2] != self.hidden_size:
                raise ValueError(f"{name} must have last dimension hidden_size={self.hidden_size}, "
                                 f"got shape {x.shape}")
        if memory.shape[0] != query.shape[0]:
            raise ValueError(f"query and memory must have the same batch size, got {query.shape} "
                             f"and {memory.shape}")
        B, S = memory.shape[:2]
        if keep is None:
            return query, memory, np.ones((B, S), bool)
        if not isinstance(keep, np.ndarray) or keep.dtype != bool:
            got = getattr(keep, "dtype", type(keep).__name__)
            raise TypeError(f"keep must be a bool numpy array, got {got}")
        if keep.shape != (B, S):
            raise ValueError(f"keep must have shape {(B, S)} (batch, memory length), got {keep.shape}")
        return query, memory, keep

    def keys(self, memory):
        """What :meth:`attend` needs of the memory, computed once per source (no cache):
        :math:`W_k m` (B, S, A) for the additive score, ``None`` for the dot score."""
        if self.score == "dot":
            return None
        return F.linear_forward(memory, self.key.weight.data)[0]                   # (B, S, A)

    def attend(self, query, memory, keep, keys):
        """Inference (no cache): the context (B, T, H), with ``keys = self.keys(memory)``."""
        if self.score == "dot":
            return F.attention_forward(query, memory, memory, attn_mask=keep[:, None, :], scale=1.0)[0]
        q = F.linear_forward(query, self.query.weight.data)[0]                     # (B, T, A)
        return _additive_forward(q, keys, self.v.data, memory, keep)[0]

    def forward(self, query, memory, keep=None):
        query, memory, keep = self._check(query, memory, keep)
        if self.score == "dot":
            context, cache = F.attention_forward(query, memory, memory, attn_mask=keep[:, None, :],
                                                 scale=1.0, method="dense")  # (B, T, H); weights
            weights = cache.weights                                                  # (B, T, S)
        else:
            q = self.query(query)                                                    # (B, T, A)
            k = self.key(memory)                                                     # (B, S, A)
            context, weights, tanh_cache = _additive_forward(q, k, self.v.data, memory, keep)
            cache = (memory, weights, tanh_cache)
        self._cache = (cache, context.shape, weights.shape)
        return context, weights

    def backward(self, dcontext, dweights=None):
        cache, cshape, wshape = self._saved()
        dt = self.dtype
        dcontext = upstream(dcontext, cshape, dt, name="dcontext")
        if dweights is not None:
            dweights = upstream(dweights, wshape, dt, name="dweights")
        if self.score == "dot":
            dq, dk, dv, _ = F.attention_backward(dcontext, cache, dweights)
            return dq, dk + dv                                      # memory is key and value
        memory, probs, tanh_cache = cache
        dprobs = dcontext @ memory.transpose(0, 2, 1)                # (B, T, S)
        if dweights is not None:
            dprobs = dprobs + dweights
        dmemory = probs.transpose(0, 2, 1) @ dcontext                # (B, S, H): through c = a m
        de = _masked_softmax_backward(dprobs, probs)                 # (B, T, S)
        z = tanh_cache.y                                             # (B, T, S, A)
        self.v.grad += np.tensordot(de, z, axes=([0, 1, 2], [0, 1, 2]))   # (A,): e = z . v
        dpre = F.tanh_backward(de[..., None] * self.v.data, tanh_cache)   # (B, T, S, A)
        dquery = self.query.backward(dpre.sum(axis=2))              # (B, T, A) -> (B, T, H)
        dmemory += self.key.backward(dpre.sum(axis=1))              # (B, S, A) -> (B, S, H)
        return dquery, dmemory

    def extra_repr(self):
        return f"{self.hidden_size}, score={self.score!r}"


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
class Seq2Seq(EncoderDecoder):
    """``Seq2Seq(src_vocab_size, tgt_vocab_size, embed_dim=64, hidden_size=128, cell='lstm',
    num_layers=1, attention=None, attention_size=None, dropout=0.0, max_len=256, pad_id=0,
    bos_id=1, eos_id=2, dtype=np.float32, rng=None)``.

    * ``cell``: ``'lstm'``, ``'gru'`` or ``'rnn'`` (tanh), for encoder and decoder alike;
      ``num_layers`` stacked layers each, with ``dropout`` between them (and on the embeddings
      and before the generator).
    * ``attention``: ``None``, ``'dot'`` or ``'additive'`` (``attention_size``: the width of
      the additive score, default ``hidden_size``).
    * ``max_len``: the default cap on generated tokens for ``greedy``/``beam``; inputs may be
      of any length.
    * ``logits = model(src, tgt_in)``: src ``(B, S)`` right-padded with ``pad_id``, tgt_in
      ``(B, T)`` -> ``(B, T, tgt_vocab_size)``; ``logits, loss = model(src, tgt_in, tgt_out)``:
      mean cross-entropy over the non-pad targets.
    * ``model.backward(dlogits=None, dloss=None)``: as :class:`Seq2SeqTransformer` -- returns
      None and accumulates into every ``param.grad``.
    * inference: ``encode(src)``, ``init_state(src)``, ``decode_step(tokens, state)``,
      ``greedy(src, max_len=None)``, ``beam(src, beam_size=4, max_len=None, length_penalty=0.6,
      n_best=None)``.

    Sub-modules: ``src_embed``, ``tgt_embed`` (``nn.Embedding``, pad row zero, no gradient),
    ``encoder``, ``decoder`` (``nn.LSTM``/``GRU``/``RNN``, ``batch_first``; torch's parameter
    names ``weight_ih_l0`` ...), ``attention`` (:class:`GlobalAttention`) and ``combine``
    (``nn.Linear(2H, H, bias=False)``) when attention is on, ``generator`` (``nn.Linear(H, V)``).
    A source row made only of padding starts the decoder from zeros, with a zero context.
    """

    differentiable_inputs = ()

    def __init__(self, src_vocab_size, tgt_vocab_size, embed_dim=64, hidden_size=128, cell="lstm",
                 num_layers=1, attention=None, attention_size=None, dropout=0.0, max_len=256,
                 pad_id=0, bos_id=1, eos_id=2, dtype=np.float32, rng=None):
        super().__init__()
        self.src_vocab_size = positive_int(src_vocab_size, "src_vocab_size")
        self.tgt_vocab_size = positive_int(tgt_vocab_size, "tgt_vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.cell = choice(cell, "cell", tuple(_CELLS))
        self.num_layers = positive_int(num_layers, "num_layers")
        self.attention_type = choice(attention, "attention", (None, "dot", "additive"))
        if attention_size is not None and self.attention_type != "additive":
            raise ValueError(f"attention_size applies to attention='additive' only, got "
                             f"attention_size={attention_size!r} with attention={attention!r}")
        dropout = probability(dropout, "dropout", allow_one=False)
        self.max_len = positive_int(max_len, "max_len")
        self._set_special_ids(pad_id, bos_id, eos_id)
        self.dtype = resolve_dtype(dtype)
        self._config = dict(src_vocab_size=self.src_vocab_size, tgt_vocab_size=self.tgt_vocab_size,
                            embed_dim=self.embed_dim, hidden_size=self.hidden_size, cell=self.cell,
                            num_layers=self.num_layers, attention=self.attention_type,
                            attention_size=attention_size, dropout=dropout, max_len=self.max_len,
                            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        rng = make_rng(rng)
        E, H, L, rnn = self.embed_dim, self.hidden_size, self.num_layers, _CELLS[self.cell]

        self.src_embed = nn.Embedding(self.src_vocab_size, E, padding_idx=self.pad_id, dtype=dtype, rng=rng)
        self.tgt_embed = nn.Embedding(self.tgt_vocab_size, E, padding_idx=self.pad_id, dtype=dtype, rng=rng)
        self.src_drop = nn.Dropout(dropout, rng=rng)
        self.tgt_drop = nn.Dropout(dropout, rng=rng)
        between = dropout if L > 1 else 0.0                  # the RNNs' dropout is between layers
        self.encoder = rnn(E, H, L, batch_first=True, dropout=between, dtype=dtype, rng=rng)
        self.decoder = rnn(E, H, L, batch_first=True, dropout=between, dtype=dtype, rng=rng)
        if self.attention_type is None:
            self.attention = self.combine = None
        else:
            self.attention = GlobalAttention(H, self.attention_type, attention_size, dtype=dtype, rng=rng)
            self.combine = nn.Linear(2 * H, H, bias=False, dtype=dtype, rng=rng)
            self.combine_act = nn.Tanh()
        self.out_drop = nn.Dropout(dropout, rng=rng)
        self.generator = nn.Linear(H, self.tgt_vocab_size, dtype=dtype, rng=rng)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=self.pad_id)
        self._has_loss = False

    # -- input checks ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Build from :meth:`config_dict`'s dict (e.g. a checkpoint's)."""
        return cls(**dict(config), dtype=dtype, rng=rng)

    def config_dict(self) -> dict:
        """The constructor's arguments (without dtype and rng): ``Seq2Seq(**config_dict())``
        rebuilds the architecture, as a checkpoint does."""
        return dict(self._config)

    def _src(self, src):
        """``src`` as int64 (B, S), checked to be right-padded, and its lengths (B,)."""
        src = index_array(src, "src", self.src_vocab_size, ndim=2)
        real = src != self.pad_id
        lengths = real.sum(axis=1)
        late = real & (np.arange(src.shape[1]) >= lengths[:, None])          # a token after a pad
        if late.any():
            b, t = (int(i) for i in np.argwhere(late)[0])
            raise ValueError(f"src must be right-padded with pad_id={self.pad_id}: row {b} has a "
                             f"token at index {(b, t)} after padding")
        return src, lengths

    # -- encoder: rows of equal length run together -----------------------------------------------
    def _encode(self, src):
        """Embed and encode ``src`` (checked): memory (B, S, H), zero past each length; the final
        state ``h_n`` (L, B, H) -- ``(h_n, c_n)`` for the LSTM -- at each row's last real token;
        and the cache for :meth:`_encode_backward`. Keeps the embedding's and dropout's caches."""
        src, lengths = self._src(src)
        enc, lstm = self.encoder, self.cell == "lstm"
        L, H = enc.num_layers, enc.hidden_size
        x = self.src_drop(self.src_embed(src))                                 # (B, S, E)
        x = np.ascontiguousarray(x.transpose(1, 0, 2))                         # (S, B, E) time first
        S, B, _ = x.shape
        memory = np.zeros((S, B, H), x.dtype)
        h_n = np.zeros((L, B, H), x.dtype)
        c_n = np.zeros((L, B, H), x.dtype) if lstm else None
        drop = self.training and enc.dropout > 0
        groups = []
        for n in np.unique(lengths[lengths > 0]):
            rows = np.flatnonzero(lengths == n)
            inp = x[:n, rows]                                                  # (n, b, E)
            zeros = np.zeros((len(rows), H), x.dtype)
            caches, masks = [], []
            for k in range(L):
                mask = None
                if k > 0 and drop:                                             # between layers
                    inp, drop = F.dropout_forward(inp, enc.dropout, True, enc.rng)
                    mask = drop.mask                                           # (n, b, H)
                inp, h, c, cache = F.recurrent_forward(inp, zeros, zeros if lstm else None,
                                                       *enc._weights(k, ""), enc.mode)   # (n, b, H)
                h_n[k, rows] = h
                if lstm:
                    c_n[k, rows] = c
                caches.append(cache)
                masks.append(mask)
            memory[:n, rows] = inp
            groups.append((rows, int(n), caches, masks))
        memory = np.ascontiguousarray(memory.transpose(1, 0, 2))               # (B, S, H)
        keep = np.arange(S) < lengths[:, None]                                 # (B, S) real tokens
        return memory, ((h_n, c_n) if lstm else h_n), keep, (groups, x.shape)

    def _encode_backward(self, dmemory, dstate, cache):
        """BPTT for each length group: ``dmemory`` (B, S, H) or None on the outputs, ``dstate``
        (the decoder's ``dhx``) on the final state; accumulates the encoder's parameter grads and
        returns d(embedded source) (B, S, E)."""
        groups, x_shape = cache
        enc = self.encoder
        dh_n, dc_n = dstate if self.cell == "lstm" else (dstate, None)
        dmem = None if dmemory is None else dmemory.transpose(1, 0, 2)        # (S, B, H)
        dx = np.zeros(x_shape, dh_n.dtype)                                      # (S, B, E)
        for rows, n, caches, masks in groups:
            d = None if dmem is None else np.ascontiguousarray(dmem[:n, rows])  # (n, b, H)
            for k in reversed(range(enc.num_layers)):
                d, _, _, *grads, _ = F.recurrent_backward(
                    d, dh_n[k, rows], None if dc_n is None else dc_n[k, rows], caches[k])
                for p, g in zip(enc._params(k, ""), grads):
                    if p is not None and p.requires_grad:
                        p.grad += g
                if masks[k] is not None:
                    d = d * masks[k]                                           # through the dropout
            dx[:n, rows] = d
        return dx.transpose(1, 0, 2)                                           # (B, S, E)

    # -- the output features ----------------------------------------------------------------------
    def _features(self, s, memory, keep, keys=None, inference=False):
        """tanh(W_c [context; s]) (B, T, H) with attention, else ``s``. Training keeps the
        caches; ``inference`` uses :meth:`GlobalAttention.attend` with the precomputed ``keys``."""
        if self.attention is None:
            return s
        if inference:
            context = self.attention.attend(s, memory, keep, keys)              # (B, T, H)
        else:
            context, _ = self.attention(s, memory, keep)                        # (B, T, H)
        cat = np.concatenate([context, s], axis=-1)                            # (B, T, 2H)
        return self.combine_act(self.combine(cat))                              # (B, T, H)

    def _features_backward(self, d):
        """-> (ds (B, T, H), dmemory (B, S, H) or None)."""
        if self.attention is None:
            return d, None
        dcat = self.combine.backward(self.combine_act.backward(d))             # (B, T, 2H)
        H = self.hidden_size
        dquery, dmemory = self.attention.backward(np.ascontiguousarray(dcat[..., :H]))
        return dcat[..., H:] + dquery, dmemory

    # -- training path ---------------------------------------------------------------------------
    @trusted                        # ids are checked here; the layers inside skip their NaN scans
    def forward(self, src, tgt_in, tgt_out=None):
        src = index_array(src, "src", self.src_vocab_size, ndim=2)
        tgt_in = index_array(tgt_in, "tgt_in", self.tgt_vocab_size, ndim=2)
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src and tgt_in must have the same batch size, got src {src.shape} "
                             f"and tgt_in {tgt_in.shape}")
        if tgt_out is not None:
            tgt_out = index_array(tgt_out, "tgt_out", self.tgt_vocab_size, ndim=2)
            if tgt_out.shape != tgt_in.shape:
                raise ValueError(f"tgt_out must have the shape of tgt_in {tgt_in.shape}, got {tgt_out.shape}")
        memory, state, keep, enc_cache = self._encode(src)                    # (B, S, H), (L, B, H)
        s, _ = self.decoder(self.tgt_drop(self.tgt_embed(tgt_in)), state)     # (B, T, E) -> (B, T, H)
        logits = self.generator(self.out_drop(self._features(s, memory, keep)))   # (B, T, V)
        self._cache = (logits.shape, enc_cache)
        self._has_loss = tgt_out is not None
        if tgt_out is None:
            return logits
        B, T, V = logits.shape
        return logits, self.loss_fn(logits.reshape(B * T, V), tgt_out.reshape(-1))

    @trusted
    def _backward(self, g):
        enc_cache = self._saved()[1]
        ds, dmemory = self._features_backward(self.out_drop.backward(self.generator.backward(g)))
        dy = self.decoder.backward(ds)                           # (B, T, E); dhx: d(initial state)
        self.tgt_embed.backward(self.tgt_drop.backward(dy))
        dx = self._encode_backward(dmemory, self.decoder.dhx, enc_cache)      # (B, S, E)
        self.src_embed.backward(self.src_drop.backward(np.ascontiguousarray(dx)))

    # -- inference -------------------------------------------------------------------------------
    @trusted                        # ids checked here; a non-finite model is caught where
                                    # its log-probabilities are turned into a choice
    def encode(self, src):
        """``(memory (B, S, H), state)`` of ``src`` (B, S) in eval mode (the mode is restored):
        ``state`` is the encoder's final ``h_n`` (L, B, H), or ``(h_n, c_n)`` for the LSTM."""
        with self._evaluating():
            memory, state, _, _ = self._encode(src)
        return memory, state

    @trusted
    def init_state(self, src):
        """The decoding state of ``src`` (B, S): the decoder state ``h`` (and ``c``) as
        (B, L, H), ``memory``, ``keys`` (:meth:`GlobalAttention.keys`) and ``keep`` (B, S) --
        ``None`` without attention -- and ``steps``, the tokens fed so far. Every array has the
        batch on axis 0, so :func:`scratchlm.decoding.default_reorder` applies."""
        with self._evaluating():
            memory, state, keep, _ = self._encode(src)
        h, c = state if self.cell == "lstm" else (state, None)
        out = {"h": h.transpose(1, 0, 2), "c": None if c is None else c.transpose(1, 0, 2),
               "memory": None, "keys": None, "keep": None, "steps": 0}
        if self.attention is not None:
            out.update(memory=memory, keys=self.attention.keys(memory), keep=keep)
        return out

    @trusted
    def decode_step(self, tokens, state):
        """``(log_probs (N, V) float64, new_state)`` for the next token after ``tokens`` (N, t)
        (BOS first): the step function of :mod:`scratchlm.decoding`. Only ``tokens[:, -1]`` is
        fed -- the RNN state holds the rest -- so the steps must come in order. ``pad_id`` and
        ``bos_id`` get probability 0: they are never generated."""
        tokens = index_array(tokens, "tokens", self.tgt_vocab_size, ndim=2)
        if not isinstance(state, dict) or "h" not in state or "steps" not in state:
            raise TypeError("state must be the dict returned by init_state")
        N, t = tokens.shape
        if state["h"].shape[0] != N:
            raise ValueError(f"tokens has {N} rows but state holds {state['h'].shape[0]}")
        if state["steps"] != t - 1:
            raise ValueError(f"tokens has {t} positions but the state has seen {state['steps']}: "
                             f"decode_step must see every prefix in order")
        hx = np.ascontiguousarray(state["h"].transpose(1, 0, 2))                # (L, N, H)
        if self.cell == "lstm":
            hx = (hx, np.ascontiguousarray(state["c"].transpose(1, 0, 2)))
        with self._evaluating():
            s, new = self.decoder(self.tgt_embed(tokens[:, -1:]), hx)          # (N, 1, E) -> (N, 1, H)
            s = self._features(s, state["memory"], state["keep"], state["keys"], inference=True)
            logits = self.generator(s)[:, 0].astype(np.float64)                # (N, V)
        h, c = new if self.cell == "lstm" else (new, None)
        state = {**state, "h": h.transpose(1, 0, 2), "c": None if c is None else c.transpose(1, 0, 2),
                 "steps": t}
        logits[:, [self.pad_id, self.bos_id]] = -np.inf
        m = logits.max(axis=1, keepdims=True)
        return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))), state

    def extra_repr(self):
        return (f"cell={self.cell!r}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"attention={self.attention_type!r}, max_len={self.max_len}")
