"""What ``sample``, ``eval``, ``attention`` and ``gradnorms`` compute from a trained model: text
continued from a prompt, perplexity and bits per token/character of a text, attention maps, and
the gradient reaching each step of a recurrent net."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .._checks import NonFiniteError, float_errors_checked, positive_int
from ..data import Tokenizer, WordTokenizer, build_tokenizer, corpus_lines, encode_lines, read_corpus
from ..models import NGramLM

__all__ = ["ngram_sample_text", "evaluate_ngram", "sample_text", "evaluate_text",
           "attention_maps", "gradient_norms_over_time"]


def _finite_score(value, what: str, model) -> float:
    """The one check at the end of an evaluation: a NaN score means the model is broken, and is
    never reported as a number. (An n-gram model without smoothing may honestly score an unseen
    event as impossible: its infinite perplexity comes with a warning.)"""
    value = float(value)
    if np.isnan(value):
        raise NonFiniteError(f"the {what} of {type(model).__name__} on this text is NaN: its "
                             f"parameters or probabilities are not finite (a diverged model or a "
                             f"corrupt checkpoint?)")
    return value


def _perplexity(nats: float) -> float:
    """``exp(nats)``, infinite (not an OverflowError) past the float64 range."""
    return math.exp(nats) if nats < 709.0 else math.inf


def ngram_sample_text(model: NGramLM, tokenizer: Tokenizer, length=300, temperature=1.0,
                      top_k=None, seed=None, prompt="") -> str:
    """Generate ``length`` tokens after ``prompt`` and decode them; sentence ends become newlines."""
    if tokenizer is None:                               # a model over bare ids: print them
        context = [int(t) for t in prompt.split()] if prompt else []
        ids = model.generate(length, temperature=temperature, top_k=top_k, seed=seed, context=context)
        text = " ".join("</s>\n" if t == NGramLM.EOS else str(t) for t in ids.tolist())
        return (prompt + " " if prompt else "") + text.replace("\n ", "\n")
    context = tokenizer.encode(prompt) if prompt else np.zeros(0, np.int64)
    ids = model.generate(length, temperature=temperature, top_k=top_k, seed=seed, context=context)
    lines, current = [], []
    for t in ids.tolist():
        if t == NGramLM.EOS:
            lines.append(tokenizer.decode(current, skip_special_tokens=True))
            current = []
        else:
            current.append(t)
    lines.append(tokenizer.decode(current, skip_special_tokens=True))
    sep = " " if prompt and isinstance(tokenizer, WordTokenizer) else ""
    return prompt + sep + "\n".join(lines)


def evaluate_ngram(model: NGramLM, tokenizer: Tokenizer, text: str) -> dict:
    """Perplexity and bits per token of ``text`` (lines as sentences, ``</s>`` counted). With no
    tokenizer, each line must hold whitespace-separated token ids."""
    if tokenizer is None:
        try:
            seqs = [np.array([int(w) for w in line.split()], np.int64) for line in corpus_lines(text)]
        except ValueError as exc:
            raise ValueError("this model has no tokenizer, so the text must be lines of decimal "
                             f"token ids ({exc})") from exc
        if not seqs:
            raise ValueError("the text to evaluate has no non-blank line")
        ppl = _finite_score(model.perplexity(seqs), "perplexity", model)
        n = sum(len(q) + 1 for q in seqs)
        return {"perplexity": ppl, "bits_per_token": math.log2(ppl), "tokens": n, "bits_per_char": None}
    seqs = encode_lines(tokenizer, text)
    if not seqs:
        raise ValueError("the text to evaluate has no non-blank line")
    ppl = _finite_score(model.perplexity(seqs), "perplexity", model)
    n = sum(len(s) + 1 for s in seqs)
    chars = sum(len(line) + 1 for line in corpus_lines(text))
    return {"perplexity": ppl, "bits_per_token": math.log2(ppl), "tokens": n,
            "bits_per_char": math.log2(ppl) * n / chars}


def sample_text(model, tokenizer, prompt="", length=300, temperature=1.0, top_k=None,
                    top_p=None, greedy=False, seed=None) -> str:
    """Continue ``prompt`` (a newline when empty) by ``length`` tokens; returns prompt + sample."""
    start = prompt or "\n"
    idx = tokenizer.encode(start)[None, :]
    if idx.size == 0:
        raise ValueError("the prompt encodes to no tokens")
    out = model.generate(idx, length, temperature=temperature, top_k=top_k, top_p=top_p,
                         greedy=greedy, seed=seed)
    text = tokenizer.decode(out[0, idx.shape[1]:], skip_special_tokens=True)
    return (prompt + text) if prompt else text


@float_errors_checked          # it checks its results; no NumPy warnings
def evaluate_text(model, tokenizer, text, block=None) -> dict:
    """Cross-entropy of ``text`` under a neural LM (GPT or RNNLM) in consecutive windows of
    ``block`` tokens (default the model's ``block_size``, 256 for a recurrent model), each window
    predicting its tokens after the first; a recurrent model carries its state from window to
    window, so it sees the whole text. Returns perplexity, bits per token and per character.
    A model whose loss is not finite (NaN or infinite parameters) raises
    :class:`~scratchlm._checks.NonFiniteError`: its perplexity is never reported as a number."""
    ids = tokenizer.encode(text)
    recurrent = getattr(model, "recurrent", False)
    if block is None:
        block = 256 if recurrent else getattr(model.config, "block_size", 256)
    block = positive_int(block, "block")
    state = None
    if ids.size < 2:
        raise ValueError("the text to evaluate encodes to fewer than 2 tokens")
    model.eval()
    total, count = 0.0, 0
    for s in range(0, ids.size - 1, block):
        x = ids[s:s + block]
        y = ids[s + 1:s + 1 + block]
        x = x[:y.size]
        if recurrent:
            _, loss = model(x[None, :], y[None, :], state=state)
            state = model.state
        else:
            _, loss = model(x[None, :], y[None, :])
        total += loss * y.size
        count += y.size
    nats = total / count
    if not np.isfinite(nats):                  # finite parameters give a finite cross-entropy
        raise NonFiniteError(f"the cross-entropy of {type(model).__name__} on this text is "
                             f"{nats}: its parameters or activations are not finite (a diverged "
                             f"model or a corrupt checkpoint?) -- there is no perplexity to report")
    return {"perplexity": _perplexity(nats), "bits_per_token": nats / math.log(2), "tokens": count,
            "bits_per_char": nats / math.log(2) * count / max(len(text), 1)}


def attention_maps(model, tokenizer, prompt):
    """Attention probabilities of every layer and head of a GPT or a Llama (its query heads) for
    ``prompt``: (n_layer, n_head, T, T) and the token strings."""
    ids = tokenizer.encode(prompt)[-model.config.block_size:]
    if ids.size == 0:
        raise ValueError("the prompt encodes to no tokens")
    model.eval()
    model(ids[None, :])
    if hasattr(model, "transformer"):                                 # GPT
        caches = [block.attn._saved() for block in model.transformer.h]
    else:                                                             # Llama: query heads
        caches = [layer.self_attn._saved().attn.inner for layer in model.model.layers]
    maps = np.stack([F.attention_weights(c)[0] for c in caches])      # either cache (dense, tiled)
    labels = [tokenizer.decode([int(t)]) for t in ids]
    return maps, labels


def gradient_norms_over_time(length=100, hidden_size=128, corpus=None, seed=0,
                             cells=("rnn", "lstm", "gru")) -> dict:
    r"""For each cell type: a freshly initialised one-layer :class:`RNNLM` (PyTorch's default
    init) reads ``length`` characters of the corpus; the loss is the cross-entropy of the **last**
    prediction only, so :math:`\lVert \partial L / \partial h_t \rVert` for :math:`t < T-1`
    is exactly what backprop-through-time carries back from the end. Returns
    ``{cell: (T,) norms}`` -- a plain RNN's shrink geometrically, the gated cells' far less."""
    from ..models import RNNLM
    text, _ = read_corpus(corpus)
    tok = build_tokenizer("char", text, 0)
    ids = tok.encode(text)[:positive_int(length, "length") + 1]
    if ids.size < 2:
        raise ValueError("the corpus is too short")
    x, y = ids[None, :-1], int(ids[-1])
    norms = {}
    for cell in cells:
        model = RNNLM(tok.vocab_size, 64, hidden_size, cell, dtype=np.float64, rng=seed)
        logits = model(x)                                                   # (1, T, V)
        last = logits[0, -1]
        p = np.exp(last - last.max())
        p /= p.sum()
        p[y] -= 1.0                                                         # d CE / d logits
        dlogits = np.zeros_like(logits)
        dlogits[0, -1] = p
        model.backward(dlogits)
        norms[cell] = model.rnn.step_grad_norms[0].copy()
    return norms
