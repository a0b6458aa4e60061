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

Nothing here changes the model: it runs in eval mode (no dropout), the parameters' ``.grad``
are put back as they were, and the method wrappers that record block inputs and outputs
(:func:`_taps`) are removed afterwards.
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


class PromptError(ValueError):
    """A prompt the model cannot read (empty, longer than its context, or with characters its
    tokenizer cannot encode): shown to the user as it is."""


def model_kind(model) -> str:
    """``"transformer"`` (GPT, Llama) or ``"rnn"`` (RNNLM); a ValueError naming the supported
    models for anything else."""
    name = type(model).__name__
    if name in ("GPT", "Llama"):
        return "transformer"
    if name == "RNNLM":
        return "rnn"
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
        bad = sorted({ch for ch in prompt if unk in np.asarray(tokenizer.encode(ch)).tolist()})
        what = (f"characters {', '.join(repr(c) for c in bad[:10])}" if bad else
                f"{int(np.sum(ids == unk))} piece(s) of it")
        raise PromptError(f"the tokenizer cannot encode {what} (the model never saw them): "
                          f"remove or replace them")
    limit = context_size(model)
    if limit is not None and ids.size > limit:
        raise PromptError(f"the prompt is {ids.size} tokens; the model reads at most {limit} "
                          f"(its context): shorten it")
    if ids.max() >= model.config.vocab_size:
        raise PromptError(f"the tokenizer gives id {int(ids.max())}, beyond the model's "
                          f"{model.config.vocab_size} tokens: the checkpoint's tokenizer does "
                          f"not match its model")
    return ids


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
        info["heads"] = _heads(model)
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

        def run(*args, **kwargs):
            rec[(before, key)] = args[0]
            out = original(*args, **kwargs)
            rec[(after, key)] = out
            return out

        object.__setattr__(module, method, run)
        wrapped.append((module, method))

    try:
        for key, m in (forward or {}).items():
            wrap(m, "forward", key, "in", "out")
        for key, m in (backward or {}).items():
            wrap(m, "backward", key, "dout", "din")
        yield rec
    finally:
        for module, method in wrapped:
            if method in module.__dict__:
                object.__delattr__(module, method)


@contextmanager
def _grads_kept(model):
    """Run a backward without leaving a trace: every parameter trainable for the while (a
    frozen part would stop the backward early, before the embeddings), then each ``.grad`` and
    ``requires_grad`` as it was before."""
    saved = [(p, p.requires_grad, None if p.grad is None else p.grad.copy())
             for p in model.parameters()]
    for p, _, _ in saved:
        p.requires_grad = True
    try:
        yield
    finally:
        for p, trainable, g in saved:
            p.requires_grad = trainable
            if g is not None:
                p.grad[...] = g


def _blocks(model):
    return list(model.transformer.h) if type(model).__name__ == "GPT" else \
        list(model.model.layers)


def _parts(block, gpt):
    """A block's attention, MLP and output projection (whose input is the heads' outputs)."""
    if gpt:
        return block.attn, block.mlp, block.attn.c_proj
    return block.self_attn, block.mlp, block.self_attn.o_proj


def _heads(model) -> int:
    return int(model.config.n_head) if type(model).__name__ == "GPT" else \
        int(model.config.num_attention_heads)


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
    was_training = model.training
    model.eval()
    try:
        with _grads_kept(model):
            if kind == "transformer":
                out = _inspect_transformer(model, ids, target)
            else:
                out = _inspect_rnn(model, ids, target)
    finally:
        model.train(was_training)
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
        lens = out.pop("_lens")                                            # (L+1, T, V)
        top = np.argsort(-lens, axis=-1, kind="stable")[..., :lens_k]      # (L+1, T, k)
        result["logit_lens"] = [[[token(i, {"prob": float(lens[l, t, i])}) for i in top[l, t]]
                                 for t in range(lens.shape[1])] for l in range(lens.shape[0])]
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
    W = model.lm_head.weight.data.astype(np.float64)                         # (V, C)

    def normed(x):                                                           # (..., C)
        if gpt:
            mu = x.mean(-1, keepdims=True)
            y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
        else:
            y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        y = y * gamma
        return y + beta if beta is not None else y

    lens = _softmax64(normed(xs) @ W.T)                                      # (L+1, T, V)

    x_last = xs[-1, -1]                                                     # (C,)
    if gpt:
        scale = np.sqrt(((x_last - x_last.mean()) ** 2).mean() + eps)
    else:
        scale = np.sqrt((x_last * x_last).mean() + eps)
    wy = W[target] * gamma                                                   # (C,)

    def part(c):                                                             # (C,) -> its share
        c = np.asarray(c, np.float64)
        return float(wy @ ((c - c.mean()) if gpt else c) / scale)

    H = _heads(model)
    layers = []
    for l, b in enumerate(blocks):
        proj = _parts(b, gpt)[2]
        y = rec[("in", ("proj", l))][0, -1].astype(np.float64)              # (H d,) the heads
        Wo = proj.weight.data.astype(np.float64)                            # (C, H d)
        d = y.size // H
        heads = [part(Wo[:, h * d:(h + 1) * d] @ y[h * d:(h + 1) * d]) for h in range(H)]
        bias = getattr(proj, "bias", None)
        layers.append({"attention": part(rec[("out", ("attn", l))][0, -1]),
                       "mlp": part(rec[("out", ("mlp", l))][0, -1]),
                       "heads": heads,
                       "attention_bias": part(bias.data) if bias is not None else 0.0})
    contributions = {"embedding": part(xs[0, -1]), "layers": layers,
                     "final_bias": float(W[target] @ beta) if beta is not None else 0.0,
                     "logit": float(last[target])}
    e = xs[0]                                                                # (T, C)
    return {
        "_logits": last, "_probs": probs, "_target": target, "_lens": lens,
        "attention": np.stack(attention),                                    # (L, H, T, T)
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
    out = model.generate(ids[None, :], 1, temperature=1.0 if greedy else temperature,
                         top_k=top_k, greedy=greedy, seed=seed)
    new = int(out[0, -1])
    text = tokenizer.decode([new])
    if new in set(tokenizer.special_tokens.values()):
        raise PromptError(f"the model drew {text!r} (id {new}), a special token with no text "
                          f"of its own to append: sample again")
    return {"token": {"id": new, "text": text},
            "prompt": tokenizer.decode([int(i) for i in out[0]])}
