r"""What the inspector shows, computed by the model's own forward and backward: one prompt in,
one JSON-ready dict out (:func:`inspect_prompt`). The web page (:mod:`.server`) only draws it.

For a prompt of tokens :math:`x_1 .. x_T` and a *target* token :math:`y` (by default the most
likely next token), with :math:`p = \mathrm{softmax}(z)` the next-token distribution at the
last position:

* **Attention** (GPT, Llama): every layer's and head's weights
  :math:`A^{(l,h)} = \mathrm{softmax}(q k^\top / \sqrt{d} + M)`, read from the attention
  caches of the forward (the query heads, for grouped-query attention).
* **Residual stream**: :math:`\lVert x_l[t] \rVert_2` for the embeddings (:math:`l = 0`) and the
  output of every block (:math:`l = 1 .. L`).
* **Logit lens** (nostalgebraist, 2020): each :math:`x_l` put through the final norm and the
  LM head as if it were the last layer, :math:`\mathrm{softmax}(W_U\, \mathrm{norm}(x_l[t]))`,
  and its top tokens.
* **Direct logit attribution**: the last position's residual is a sum of parts,
  :math:`x_L = e + \sum_l (a_l + m_l)` (embeddings, each attention output, each MLP output),
  and each attention output a sum over heads, :math:`a_l = \sum_h y_h W_{O,h}^\top + b_O`.
  With the final norm's scale frozen at its value for :math:`x_L` the norm is linear, so the
  target's logit splits exactly into one number per part:
  LayerNorm (GPT): :math:`z_y = \sum_c (w_y \odot \gamma) \cdot (c - \bar c) / \sigma + w_y
  \cdot \beta`; RMSNorm (Llama): :math:`z_y = \sum_c (w_y \odot \gamma) \cdot c / \mathrm{rms}`
  (:math:`w_y` the head's row of the target; :math:`\sigma` and rms those of :math:`x_L`).
* **Saliency**: the model's backward seeded with :math:`\partial \log p_y / \partial z =
  \mathbb 1_y - p` at the last position gives :math:`g_t = \partial \log p_y / \partial e_t`
  for every input embedding: its norm :math:`\lVert g_t \rVert`, and gradient x input
  :math:`g_t \cdot e_t`. The same backward gives :math:`\lVert \partial \log p_y / \partial x_l[t]
  \rVert` at every block boundary (Transformers) or :math:`\lVert \partial \log p_y /
  \partial h_t \rVert` in every layer (RNNs; the recurrent backward's own per-step norms).
* **RNNs** (RNN, LSTM, GRU): the hidden states :math:`h_t` and the gates after their
  nonlinearity (LSTM: i, f, g, o; GRU: r, z, n) of every layer, from the recurrent caches.

The model's weights, gradients and modes are left as they were: it runs in eval mode (no
dropout) and every module's mode is put back; only the token embedding is trained for the while
(enough for the backward to reach the embeddings, without the weight gradients of every layer),
and the ``.grad`` arrays and ``requires_grad`` flags are restored; an RNN's carried ``state`` is
put back; the method wrappers that record block inputs and outputs (:func:`_taps`) are removed.
What is *not* kept: the layers' caches of the last forward. Do not inspect between a training
forward and its backward, or from another thread while the model computes.

The views grow with the prompt (attention as layers x heads x T^2, an RNN's gates as layers x
gates x T x hidden): a prompt whose largest view would exceed :data:`MAX_NUMBERS` numbers is
refused, naming the longest prompt that fits.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .. import functional as F
from .._checks import positive_int

#: the model classes the inspector reads (the registry's ``model_class``)
SUPPORTED = ("GPT", "Llama", "RNNLM")
#: the registry names that build them
SUPPORTED_NAMES = "transformer (GPT), llama, rnn, lstm, gru"
#: the most numbers one view may hold (attention maps, gates): about 4M, 16 MB as float32
MAX_NUMBERS = 1 << 22


class PromptError(ValueError):
    """A prompt the model cannot read (empty, longer than its context, or with characters its
    tokenizer cannot encode): shown to the user as it is."""


def model_kind(model) -> str:
    """``"transformer"`` (GPT, Llama) or ``"rnn"`` (RNNLM); a ValueError naming the supported
    models for anything else."""
    name = type(model).__name__
    if name in SUPPORTED:
        return "rnn" if name == "RNNLM" else "transformer"
    raise ValueError(f"the inspector reads language models of kind {SUPPORTED_NAMES}; this "
                     f"checkpoint holds a {name}")


def context_size(model) -> int | None:
    """The longest prompt in tokens (None: no limit, the RNNs)."""
    return None if model_kind(model) == "rnn" else int(model.context_size)


def encode_prompt(tokenizer, prompt, model) -> np.ndarray:
    """``prompt`` -> ``(T,)`` ids, or a :class:`PromptError` that says what is wrong."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    if not prompt:
        raise PromptError("the prompt is empty: type some text")
    ids = np.asarray(tokenizer.encode(prompt), np.int64)
    if ids.size == 0:
        raise PromptError(f"the prompt {prompt[:40]!r} encodes to no tokens")
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and np.any(ids == unk):
        # the tokenizer's own units: words for a word tokenizer, else characters
        words = hasattr(tokenizer, "tokenize")
        pieces = tokenizer.tokenize(prompt) if words else list(prompt)
        bad = sorted({p for p in pieces if unk in np.asarray(tokenizer.encode(p)).tolist()})
        what = (f"{'words' if words else 'characters'} {', '.join(repr(c) for c in bad[:10])}"
                if bad else f"{int(np.sum(ids == unk))} piece(s) of it")
        raise PromptError(f"the tokenizer cannot encode {what} (the model never saw them): "
                          f"remove or replace them")
    limit = context_size(model)
    if limit is not None and ids.size > limit:
        raise PromptError(f"the prompt is {ids.size} tokens; the model reads at most {limit} "
                          f"(its context): shorten it")
    longest = _longest(model)
    if ids.size > longest:
        raise PromptError(f"the prompt is {ids.size} tokens; the inspector shows at most "
                          f"{longest} for this model (its largest view would hold "
                          f"{_view_numbers(model, ids.size):,} numbers; the limit is "
                          f"{MAX_NUMBERS:,}): shorten it")
    if ids.max() >= model.config.vocab_size:
        raise PromptError(f"the tokenizer gives id {int(ids.max())}, beyond the model's "
                          f"{model.config.vocab_size} tokens: the checkpoint's tokenizer does "
                          f"not match its model")
    return ids


def _view_numbers(model, T) -> int:
    """The numbers of the largest view for a prompt of ``T`` tokens."""
    if model_kind(model) == "transformer":
        return sum(_heads_of(b) for b in _blocks(model)) * T * T
    c = model.config
    return c.num_layers * (len(_GATES.get(c.cell, ())) + 1) * c.hidden_size * T


def _longest(model) -> int:
    """The longest prompt whose views fit in :data:`MAX_NUMBERS`."""
    T = 1
    while _view_numbers(model, 2 * T) <= MAX_NUMBERS:
        T *= 2
    lo, hi = T, 2 * T                                   # fits at lo, not at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _view_numbers(model, mid) <= MAX_NUMBERS else (lo, mid)
    return lo


def model_info(model, tokenizer) -> dict:
    """What the page needs to lay itself out."""
    kind = model_kind(model)
    c = model.config
    info = {"class": type(model).__name__, "kind": kind, "vocab_size": int(c.vocab_size),
            "context": context_size(model), "dtype": np.dtype(model.dtype).name,
            "parameters": int(model.num_parameters()),
            "tokenizer": type(tokenizer).__name__}
    if kind == "transformer":
        info["layers"] = len(_blocks(model))
        info["heads"] = [_heads_of(b) for b in _blocks(model)]     # per layer (pruning differs)
    else:
        info["layers"] = int(c.num_layers)
        info["cell"] = c.cell
        info["hidden_size"] = int(c.hidden_size)
        info["gates"] = list(_GATES.get(c.cell, ()))
    return info


# ------------------------------------------------------------------------------------------------
# recording inside the model: wrappers around chosen modules' forward and backward
# ------------------------------------------------------------------------------------------------
@contextmanager
def _taps(forward=None, backward=None):
    """Record, while the block runs, what chosen modules' ``forward`` took and returned and what
    their ``backward`` took and returned. ``forward``/``backward``: ``{key: module}``. Yields
    ``rec`` with ``rec[("in", key)]``, ``rec[("out", key)]`` (forward), ``rec[("dout", key)]``,
    ``rec[("din", key)]`` (backward). The wrappers are instance attributes shadowing the class's
    methods; they are deleted on the way out, whatever happens."""
    rec, wrapped = {}, []

    def wrap(module, method, key, before, after):
        original = getattr(module, method)
        wrapped.append((module, method, module.__dict__.get(method)))     # an instance's own

        def run(*args, **kwargs):
            rec[(before, key)] = args[0]
            out = original(*args, **kwargs)
            rec[(after, key)] = out
            return out

        object.__setattr__(module, method, run)

    try:
        for key, m in (forward or {}).items():
            wrap(m, "forward", key, "in", "out")
        for key, m in (backward or {}).items():
            wrap(m, "backward", key, "dout", "din")
        yield rec
    finally:
        for module, method, own in reversed(wrapped):
            if own is not None:                  # (e.g. a data-parallel hook): put it back
                object.__setattr__(module, method, own)
            elif method in module.__dict__:
                object.__delattr__(module, method)


@contextmanager
def _modes_kept(model):
    """Every module's train/eval mode and an RNN's carried ``state`` as they were, afterwards
    (``model.train(mode)`` would set one mode everywhere)."""
    modes = [(m, m.training) for m in model.modules()]
    state = getattr(model, "state", None)
    try:
        yield
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
        if hasattr(model, "state"):
            model.state = state


@contextmanager
def _kept_as_it_was(model):
    """Run a forward and a backward and leave no trace in the model (module docstring): only the
    token embedding trainable for the while -- the backward then reaches the embeddings, as it
    stops where nothing below is trained, but computes no other weight gradient -- and the
    gradients, ``requires_grad`` flags, modes and an RNN's carried state as they were."""
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]          # the arrays themselves
    embedding = _embedding(model).weight
    with _modes_kept(model):
        try:
            for p in params:
                p.requires_grad = p is embedding   # (False drops .grad: the array is in saved)
            embedding.grad = np.zeros_like(embedding.data)
            model.eval()
            yield
        finally:
            for p, trainable, grad in saved:
                p.requires_grad = trainable
                p.grad = grad


def _embedding(model):
    name = type(model).__name__
    if name == "GPT":
        return model.transformer.wte
    if name == "Llama":
        return model.model.embed_tokens
    return model.encoder


def _effective(layer):
    """``(W (out, in), bias or None)`` in float64: the weight a Linear computes with -- a
    quantized layer's dequantized codes, a LoRA layer's ``W + (alpha / r) B A`` (unless merged)."""
    if hasattr(layer, "base_layer"):                                   # LoRA
        W, b = _effective(layer.base_layer)
        if not layer.merged:
            W = W + layer.scaling * (layer.lora_B.weight.data.astype(np.float64) @
                                     layer.lora_A.weight.data.astype(np.float64))
        return W, b
    W = layer.dequantized() if hasattr(layer, "dequantized") else layer.weight.data
    b = getattr(layer, "bias", None)
    return W.astype(np.float64), None if b is None else b.data.astype(np.float64)


def _blocks(model):
    return list(model.transformer.h) if type(model).__name__ == "GPT" else \
        list(model.model.layers)


def _parts(block, gpt):
    """A block's attention, MLP and output projection (whose input is the heads' outputs)."""
    if gpt:
        return block.attn, block.mlp, block.attn.c_proj
    return block.self_attn, block.mlp, block.self_attn.o_proj


def _heads_of(block) -> int:
    """A block's query heads: its own count (structured pruning may leave fewer than the
    config says, and a different number per block)."""
    return int(block.attn.n_head) if hasattr(block, "attn") else int(block.self_attn.heads)


_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


# ------------------------------------------------------------------------------------------------
# the inspection
# ------------------------------------------------------------------------------------------------
def inspect_prompt(model, tokenizer, prompt, target=None, top_k=10, lens_k=5) -> dict:
    """Everything the inspector shows for ``prompt`` (module docstring), as plain Python
    (JSON-ready): ``model``, ``tokens``, ``next`` (the ``top_k`` most likely next tokens),
    ``target`` (``target`` id, default the most likely), ``saliency``; for Transformers
    ``attention`` ``(L, H, T, T)``, ``residual_norm`` ``(L+1, T)``, ``logit_lens`` ``(L+1, T,
    lens_k)``, ``contributions``, ``layer_grad_norm`` ``(L+1, T)``; for RNNs ``hidden``
    ``(layers, T, H)``, ``gates`` ``(layers, G, T, H)``, ``hidden_grad_norm`` ``(layers, T)``."""
    kind = model_kind(model)
    top_k = positive_int(top_k, "top_k")
    lens_k = positive_int(lens_k, "lens_k")
    ids = encode_prompt(tokenizer, prompt, model)
    V = int(model.config.vocab_size)
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or \
                not 0 <= int(target) < V:
            raise PromptError(f"the target must be a token id in [0, {V - 1}], got {target!r}")
        target = int(target)
    with _kept_as_it_was(model):
        if kind == "transformer":
            out = _inspect_transformer(model, ids, target)
        else:
            out = _inspect_rnn(model, ids, target)
    logits, probs = out.pop("_logits"), out.pop("_probs")
    target = out.pop("_target")

    def token(i, extra=None):
        d = {"id": int(i), "text": tokenizer.decode([int(i)])}
        return d | (extra or {})

    order = np.argsort(-probs, kind="stable")[:top_k]
    entropy = float(-np.sum(probs * np.log(np.where(probs > 0, probs, 1.0))))
    result = {
        "model": model_info(model, tokenizer),
        "prompt": prompt,
        "tokens": [token(i) for i in ids],
        "next": {"top": [token(i, {"prob": float(probs[i]), "logit": float(logits[i])})
                         for i in order], "entropy": entropy},
        "target": token(target, {"prob": float(probs[target]),
                                 "logprob": float(logits[target] - _logsumexp(logits)),
                                 "logit": float(logits[target])}),
    }
    if kind == "transformer":
        lens = out.pop("_lens")                              # (L+1, T) -> (top ids, their p)
        result["logit_lens"] = [[[token(i, {"prob": float(p)}) for i, p in zip(ids_t, p_t)]
                                 for ids_t, p_t in zip(*layer)] for layer in lens(lens_k)]
    result.update({k: _plain(v) for k, v in out.items()})
    return result


def _plain(v):
    """Arrays and NumPy scalars -> lists and Python numbers (JSON)."""
    if isinstance(v, np.ndarray):
        return v.astype(np.float64).tolist() if v.dtype.kind == "f" else v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _logsumexp(z):
    m = float(np.max(z))
    return m + float(np.log(np.sum(np.exp(np.asarray(z, np.float64) - m))))


def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _seed(logits, target):
    """``(1, T, V)`` d log p_target / d logits: 1_target - p at the last position, 0 elsewhere;
    the target (default the argmax) and the last position's probabilities."""
    last = np.asarray(logits[0, -1], np.float64)
    probs = _softmax64(last)
    if target is None:
        target = int(np.argmax(probs))
    d = np.zeros(logits.shape, np.float64)
    d[0, -1] = -probs
    d[0, -1, target] += 1.0
    return d.astype(logits.dtype), target, last, probs


def _inspect_transformer(model, ids, target):
    gpt = type(model).__name__ == "GPT"
    blocks = _blocks(model)
    L = len(blocks)
    fwd, bwd = {}, {}
    for l, b in enumerate(blocks):
        attn, mlp, proj = _parts(b, gpt)
        fwd |= {("block", l): b, ("attn", l): attn, ("mlp", l): mlp, ("proj", l): proj}
        bwd[("block", l)] = b
    with _taps(fwd, bwd) as rec:
        logits = model(ids[None, :])                                        # (1, T, V)
        attention = []
        for b in blocks:
            cache = b.attn._saved() if gpt else b.self_attn._saved().attn.inner
            attention.append(F.attention_weights(cache)[0])                 # (H, T, T)
        dlogits, target, last, probs = _seed(logits, target)
        model.backward(dlogits)
    xs = [rec[("in", ("block", 0))][0]] + [rec[("out", ("block", l))][0] for l in range(L)]
    xs = np.stack(xs).astype(np.float64)                                    # (L+1, T, C)
    grads = [rec[("din", ("block", l))][0] for l in range(L)] + \
        [rec[("dout", ("block", L - 1))][0]]
    grads = np.stack(grads).astype(np.float64)                              # (L+1, T, C)

    # the final norm, as a function of any residual (the logit lens), and frozen at x_L's
    # statistics for the attribution
    norm = model.transformer.ln_f if gpt else model.model.norm
    eps = norm.eps if norm.eps is not None else float(np.finfo(norm.weight.data.dtype).eps)
    gamma = norm.weight.data.astype(np.float64)
    beta = norm.bias.data.astype(np.float64) if gpt and norm.bias is not None else None
    W, head_bias = _effective(model.lm_head)                                # (V, C); no bias

    def normed(x):                                                           # (..., C)
        if gpt:
            mu = x.mean(-1, keepdims=True)
            y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
        else:
            y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        y = y * gamma
        return y + beta if beta is not None else y

    def lens(k):
        """Per layer: the top k tokens at each position and their probabilities, (T, k) each,
        one layer's (T, V) logits at a time (never all layers' at once)."""
        out = []
        for x in xs:                                                         # (T, C)
            z = normed(x) @ W.T                                              # (T, V)
            if head_bias is not None:
                z = z + head_bias
            k_ = min(k, z.shape[1])
            top = np.argpartition(-z, k_ - 1, axis=1)[:, :k_]                # (T, k) unordered
            zt = np.take_along_axis(z, top, 1)
            order = np.lexsort((top, -zt), axis=1)           # by logit, ties by id (stable)
            top, zt = np.take_along_axis(top, order, 1), np.take_along_axis(zt, order, 1)
            m = z.max(axis=1, keepdims=True)
            lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))       # (T, 1)
            out.append((top, np.exp(zt - lse)))
        return out

    x_last = xs[-1, -1]                                                     # (C,)
    if gpt:
        scale = np.sqrt(((x_last - x_last.mean()) ** 2).mean() + eps)
    else:
        scale = np.sqrt((x_last * x_last).mean() + eps)
    wy = W[target] * gamma                                                   # (C,)

    def part(c):                                                             # (C,) -> its share
        c = np.asarray(c, np.float64)
        return float(wy @ ((c - c.mean()) if gpt else c) / scale)

    layers = []
    for l, b in enumerate(blocks):
        proj = _parts(b, gpt)[2]
        y = rec[("in", ("proj", l))][0, -1].astype(np.float64)              # (H d,) the heads
        Wo, bias = _effective(proj)                                         # (C, H d), (C,)
        H = _heads_of(b)
        d = y.size // H
        heads = [part(Wo[:, h * d:(h + 1) * d] @ y[h * d:(h + 1) * d]) for h in range(H)]
        layers.append({"attention": part(rec[("out", ("attn", l))][0, -1]),
                       "mlp": part(rec[("out", ("mlp", l))][0, -1]),
                       "heads": heads,
                       "attention_bias": part(bias) if bias is not None else 0.0})
    contributions = {"embedding": part(xs[0, -1]), "layers": layers,
                     "final_bias": (float(W[target] @ beta) if beta is not None else 0.0) +
                     (float(head_bias[target]) if head_bias is not None else 0.0),
                     "logit": float(last[target])}
    e = xs[0]                                                                # (T, C)
    return {
        "_logits": last, "_probs": probs, "_target": target, "_lens": lens,
        "attention": attention,                                  # L x (H_l, T, T)
        "residual_norm": np.linalg.norm(xs, axis=-1),                        # (L+1, T)
        "contributions": contributions,
        "layer_grad_norm": np.linalg.norm(grads, axis=-1),                   # (L+1, T)
        "saliency": {"grad_norm": np.linalg.norm(grads[0], axis=-1),         # (T,)
                     "grad_x_input": np.sum(grads[0] * e, axis=-1)},         # (T,)
    }


def _inspect_rnn(model, ids, target):
    with _taps({"rnn": model.rnn}, {"rnn": model.rnn}) as rec:
        logits = model(ids[None, :])                                        # (1, T, V)
        caches = model.rnn._saved()[0]                                      # one per layer
        hidden = np.stack([c.out[:, 0] for c in caches])                    # (layers, T, H)
        cell = model.config.cell
        if cell in _GATES:
            G, Hn = len(_GATES[cell]), model.config.hidden_size
            gates = np.stack([c.act[:, 0].reshape(ids.size, G, Hn).transpose(1, 0, 2)
                              for c in caches])                              # (layers, G, T, H)
        else:
            gates = np.zeros((len(caches), 0, ids.size, model.config.hidden_size))
        dlogits, target, last, probs = _seed(logits, target)
        model.backward(dlogits)
        step_norms = np.array(model.rnn.step_grad_norms, np.float64)        # (layers, T)
    e = rec[("in", "rnn")][0].astype(np.float64)                             # (T, E)
    g = rec[("din", "rnn")][0].astype(np.float64)                            # (T, E)
    return {
        "_logits": last, "_probs": probs, "_target": target,
        "hidden": hidden, "gates": gates, "hidden_grad_norm": step_norms,
        "saliency": {"grad_norm": np.linalg.norm(g, axis=-1),
                     "grad_x_input": np.sum(g * e, axis=-1)},
    }


def sample_step(model, tokenizer, prompt, temperature=1.0, top_k=None, seed=None) -> dict:
    """One token drawn by the model's own sampler (``generate``) after ``prompt``
    (``temperature`` 0: the most likely token): ``token`` (id and text) and ``prompt``, the
    text with it appended. A special token (``<unk>``, ``<eos>``...) has no text to append: a
    :class:`PromptError` says so (sample again)."""
    ids = encode_prompt(tokenizer, prompt, model)
    limit = context_size(model)
    if limit is not None and ids.size >= limit:
        raise PromptError(f"the prompt already fills the model's context ({limit} tokens)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not 0 <= temperature < float("inf"):
        raise PromptError(f"the temperature must be a number >= 0 (0: the most likely token), "
                          f"got {temperature!r}")
    greedy = temperature == 0
    with _modes_kept(model):
        out = model.generate(ids[None, :], 1, temperature=1.0 if greedy else temperature,
                             top_k=top_k, greedy=greedy, seed=seed)
    new = int(out[0, -1])
    text = tokenizer.decode([new])
    again = ("at temperature 0 it is drawn every time: raise the temperature" if greedy else
             "sample again")
    if new in set(tokenizer.special_tokens.values()):
        raise PromptError(f"the model drew {text!r} (id {new}), a special token with no text "
                          f"of its own to append; {again}")
    prompt = tokenizer.decode([int(i) for i in out[0]])
    if np.asarray(tokenizer.encode(prompt)).tolist() != out[0].tolist():
        # a byte that is only part of a character, or text the tokenizer would split another
        # way: the page holds text, and this text would not read back as these tokens
        raise PromptError(f"the model drew token {new} ({text!r}), which does not read back "
                          f"as itself once appended to the text (a part of a character, or "
                          f"pieces the tokenizer joins differently); {again}")
    return {"token": {"id": new, "text": text}, "prompt": prompt}
