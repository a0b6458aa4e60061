"""Training pipelines behind ``python -m scratchlm train ...``: text -> tokens -> model -> checkpoint.

Every language model trains on the same data path: a corpus (the built-in one or ``--corpus``),
a deterministic train/validation split at a line boundary, a tokenizer trained on the training
part only, and lines as sentences. Checkpoints are scratchlm checkpoints (``scratchlm.io``) that
carry the model's config and the tokenizer, so ``sample`` and ``eval`` need nothing else.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .data import (BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, WordTokenizer,
                   builtin_corpus, corpus_lines, load_corpus, split_corpus)
from ._checks import positive_int
from .io import read_checkpoint
from .models import NGramLM

TOKENIZERS = ("char", "byte", "word", "bpe")


def build_tokenizer(kind: str, text: str, vocab_size: int = 1000) -> Tokenizer:
    """A tokenizer of ``kind`` trained on ``text`` (``vocab_size`` is BPE's)."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {kind!r}")


def encode_lines(tokenizer: Tokenizer, text: str) -> list:
    """One int64 id array per non-blank line: the sentences of an n-gram model."""
    return [tokenizer.encode(line) for line in corpus_lines(text)]


def read_corpus(path=None) -> tuple[str, str]:
    """The text and its name: ``path`` if given, else the built-in corpus."""
    if path is None:
        return builtin_corpus(), "built-in (pydoc_data.topics)"
    return load_corpus(path), os.fspath(path)


@dataclass
class NGramResult:
    model: NGramLM
    tokenizer: Tokenizer
    val_perplexity: float
    val_bits_per_token: float
    val_bits_per_char: float
    val_tokens: int
    train_tokens: int
    seconds: float


def train_ngram(order=5, smoothing="kneser_ney", corpus=None, tokenizer="char", vocab_size=1000,
                val_fraction=0.1, out=None, progress=None, k=1.0) -> NGramResult:
    """Fit an :class:`~scratchlm.models.NGramLM` on a corpus, report validation perplexity, save.

    ``progress(stage)`` is called as the work advances (the CLI passes a tqdm updater).
    """
    tell = progress or (lambda stage: None)
    text, name = read_corpus(corpus)
    train_text, val_text = split_corpus(text, val_fraction)
    tell("tokenize")
    tok = build_tokenizer(tokenizer, train_text, vocab_size)
    train_seqs, val_seqs = encode_lines(tok, train_text), encode_lines(tok, val_text)
    t0 = time.perf_counter()
    model = NGramLM(order, smoothing, k=k).fit(train_seqs, progress=tell)
    seconds = time.perf_counter() - t0
    tell("evaluate")
    ppl = model.perplexity(val_seqs)
    n_val = sum(len(s) + 1 for s in val_seqs)
    chars = sum(len(line) + 1 for line in corpus_lines(val_text))
    result = NGramResult(model, tok, ppl, math.log2(ppl), math.log2(ppl) * n_val / chars, n_val,
                         sum(len(s) + 1 for s in train_seqs), seconds)
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        model.save(out, kind="ngram", tokenizer=tok.to_dict(), corpus=name,
                   corpus_path=None if corpus is None else os.path.abspath(corpus),
                   val_fraction=val_fraction, val_perplexity=ppl)
    return result


def load_model(path):
    """Any saved model -> ``(model, tokenizer or None, meta)``. A checkpoint written by ``train``
    carries its tokenizer; one saved with ``NGramLM.save`` may (``save(path, tokenizer=
    tok.to_dict())``) or may not, in which case the CLI works in token ids."""
    _, doc = read_checkpoint(path)
    if doc.get("module") in ("GPT", "RNNLM", "ConvLM"):
        from .io import load_checkpoint
        from .models import GPT, RNNLM, ConvLM, ConvLMConfig, GPTConfig, RNNLMConfig
        cfg = doc["meta"]["config"]
        model = {"GPT": lambda: GPT(GPTConfig(**cfg), rng=0),
                 "RNNLM": lambda: RNNLM.from_config(RNNLMConfig(**cfg), rng=0),
                 "ConvLM": lambda: ConvLM.from_config(ConvLMConfig(**cfg), rng=0)}[doc["module"]]()
        meta = load_checkpoint(path, model)
        return model, Tokenizer.from_dict(meta["tokenizer"]), meta
    if doc.get("module") == "CNN":
        from .io import load_checkpoint
        from .models import CNN
        model = CNN.from_config(doc["meta"]["config"], rng=0)
        return model, None, load_checkpoint(path, model)
    if doc.get("module") == "Seq2Seq":
        from .io import load_checkpoint
        from .models import CharVocab, Seq2Seq
        model = Seq2Seq(**doc["meta"]["config"], rng=0)
        meta = load_checkpoint(path, model)
        model.vocab = CharVocab(meta["chars"])
        return model, None, meta
    if doc.get("module") == NGramLM.__name__:
        model, meta = NGramLM.load(path)
        tok = Tokenizer.from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
        return model, tok, meta
    raise ValueError(f"{path}: no sampler for a checkpoint of {doc.get('module')!r}")


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
        ppl = model.perplexity(seqs)
        n = sum(len(q) + 1 for q in seqs)
        return {"perplexity": ppl, "bits_per_token": math.log2(ppl), "tokens": n, "bits_per_char": None}
    seqs = encode_lines(tokenizer, text)
    if not seqs:
        raise ValueError("the text to evaluate has no non-blank line")
    ppl = model.perplexity(seqs)
    n = sum(len(s) + 1 for s in seqs)
    chars = sum(len(line) + 1 for line in corpus_lines(text))
    return {"perplexity": ppl, "bits_per_token": math.log2(ppl), "tokens": n,
            "bits_per_char": math.log2(ppl) * n / chars}


# ================================================================================================
# neural language models: one training loop
# ================================================================================================
@dataclass
class LoopConfig:
    """How to train (the model's own config is separate).

    ``steps`` fixes the run length and makes it reproducible; with only ``time_limit`` (seconds)
    the number of steps is estimated from the speed of the first steps, so the learning-rate
    schedule depends on the machine. ``block_size`` is the sequence length of a batch (for a
    recurrent model: the truncated-BPTT length); it defaults to ``model.config.block_size``.
    """
    steps: int | None = None
    time_limit: float | None = 120.0
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    seed: int = 0
    block_size: int | None = None      # tokens per sequence; default the model's block_size


def _param_groups(model, weight_decay):
    """nanoGPT's grouping: decay every matrix (weights, embeddings), not biases or norms."""
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for _, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def evaluate_lm(model, ids, block_size, batch_size=16, batches=20, seed=1234) -> float:
    """Mean cross-entropy (nats per token) over ``batches`` fixed random windows of ``ids``."""
    from .data import random_windows
    rng = np.random.default_rng(seed)
    was = model.training
    model.eval()
    try:
        losses = []
        for _ in range(batches):
            x, y = random_windows(ids, batch_size, block_size, rng)
            losses.append(model(x, y)[1])
        return float(np.mean(losses))
    finally:
        model.train(was)


def _stream_chunk(streams, i, block):
    """Chunk ``i`` of the ``(B, L)`` streams (:func:`scratchlm.data.sequential_batches`' layout):
    ``(x, y, restarted)``; ``restarted`` when chunk ``i`` wraps round to the streams' start."""
    n_chunks = -(-(streams.shape[1] - 1) // block)
    j = i % n_chunks
    s = j * block
    e = min(s + block, streams.shape[1] - 1)
    return streams[:, s:e], streams[:, s + 1:e + 1], j == 0


def _state_to_json(state):
    if state is None:
        return None
    parts = state if isinstance(state, tuple) else (state,)
    return {"tuple": isinstance(state, tuple), "dtype": str(parts[0].dtype),
            "arrays": [p.tolist() for p in parts]}          # float32/64 -> JSON -> back: exact


def _state_from_json(doc):
    if doc is None:
        return None
    parts = tuple(np.array(a, dtype=doc["dtype"]) for a in doc["arrays"])
    return parts if doc["tuple"] else parts[0]


def train_lm(model, train_ids, val_ids, loop: LoopConfig, out=None, meta=None, resume=False,
             progress=None, log=print):
    """Train ``model`` (``logits, loss = model(x, y)``; ``model.backward()``) with AdamW, linear
    warm-up then cosine decay, and gradient clipping; evaluate on ``val_ids`` every
    ``eval_interval`` steps; checkpoint to ``out`` (model, optimizer, step, the batch sampler's
    random state, the loss history and ``meta``) so that ``resume=True`` continues
    bit-identically. Returns the history dict.

    Batches: random windows of ``train_ids`` -- or, for a recurrent model (``model.recurrent``),
    consecutive chunks of ``batch_size`` parallel streams with the hidden state carried from one
    chunk to the next (``model(x, y, state=...)`` / ``model.state``): truncated BPTT. The carried
    state is saved in the checkpoint too.

    ``progress(n, postfix)``: an optional callable advanced once per step (the CLI's tqdm bar).
    """
    import time as _time

    from .data import random_windows
    from .io import load_checkpoint, save_checkpoint
    from .optim import AdamW, clip_grad_norm_, cosine_with_warmup

    block = loop.block_size or model.config.block_size
    recurrent = getattr(model, "recurrent", False)
    opt = AdamW(_param_groups(model, loop.weight_decay), lr=loop.lr, betas=tuple(loop.betas))
    rng = np.random.default_rng(loop.seed)
    history = {"step": [], "train_loss": [], "val_step": [], "val_loss": []}
    step, total, state = 0, loop.steps, None
    if recurrent:
        L = train_ids.size // loop.batch_size
        if L < 2:
            raise ValueError(f"the training text has {train_ids.size} tokens, too few for "
                             f"{loop.batch_size} streams")
        streams = np.asarray(train_ids[:loop.batch_size * L]).reshape(loop.batch_size, L)
    if resume:
        saved = load_checkpoint(out, model, opt)
        step, total, history = saved["step"], saved["total_steps"], saved["history"]
        rng.bit_generator.state = saved["batch_rng"]
        state = _state_from_json(saved.get("carried_state"))
        log(f"resumed from {out} at step {step} of {total}")

    def save():
        if out is not None:
            save_checkpoint(out, model, opt, step=step, total_steps=total, history=history,
                            batch_rng=rng.bit_generator.state, loop=vars(loop) | {"betas": list(loop.betas)},
                            carried_state=_state_to_json(state), **(meta or {}))

    def evaluate():
        v = evaluate_lm(model, val_ids, block, loop.batch_size, loop.eval_batches)
        history["val_step"].append(step)
        history["val_loss"].append(v)
        return v

    t0 = _time.perf_counter()
    start_step = step
    tokens_per_step = loop.batch_size * block
    model.train()
    while total is None or step < total:
        if recurrent:
            x, y, restarted = _stream_chunk(streams, step, block)
            state = None if restarted else state
        else:
            x, y = random_windows(train_ids, loop.batch_size, block, rng)
        horizon = total or 10**9
        lr = cosine_with_warmup(step, loop.lr, min(loop.warmup, horizon - 1), horizon, loop.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        if recurrent:
            _, loss = model(x, y, state=state)
            state = model.state                   # carried to the next chunk, never backpropagated
        else:
            _, loss = model(x, y)
        if not np.isfinite(loss):          # the model's layers skip NaN scans: stop here, clearly
            raise FloatingPointError(f"the training loss became {float(loss)} at step {step + 1}; "
                                     f"lower the learning rate (now {lr:.3g}) or resume from the "
                                     f"last checkpoint")
        model.backward()
        clip_grad_norm_(model.parameters(), loop.grad_clip)
        opt.step()
        step += 1
        history["step"].append(step)
        history["train_loss"].append(float(loss))
        elapsed = _time.perf_counter() - t0
        if total is None and step - start_step == 10:                 # fix the schedule's length
            per_step = elapsed / 10
            total = max(step + 1, int(loop.time_limit / per_step))
            log(f"{per_step * 1e3:.0f} ms/step: {total} steps fit in {loop.time_limit:.0f} s")
        if step % loop.eval_interval == 0 and (total is None or step < total):
            evaluate()
            save()
        if progress:                       # after the checkpoint: an interrupt here loses nothing
            progress(step, total, {"loss": f"{loss:.3f}",
                                   "tok/s": f"{(step - start_step) * tokens_per_step / elapsed:,.0f}"})
    evaluate()
    save()
    return history


def plot_history(history, path, title=""):
    """Write the loss curve (train per step, validation per evaluation) as a PNG; returns False
    when matplotlib (the ``plot`` extra) is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    to_bits = 1 / math.log(2)
    ax.plot(history["step"], np.array(history["train_loss"]) * to_bits, lw=0.8, label="train")
    ax.plot(history["val_step"], np.array(history["val_loss"]) * to_bits, "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (bits per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _neural_data(corpus, tokenizer, vocab_size, val_fraction, resume, out):
    """Text -> (train_ids, val_ids, tokenizer, corpus name, checkpoint doc or None); on resume the
    tokenizer comes from the checkpoint so the ids are the ones the model was trained on."""
    text, name = read_corpus(corpus)
    train_text, val_text = split_corpus(text, val_fraction)
    doc = None
    if resume:
        _, doc = read_checkpoint(out)
        tok = Tokenizer.from_dict(doc["meta"]["tokenizer"])
    else:
        tok = build_tokenizer(tokenizer, train_text, vocab_size)
    return tok.encode(train_text), tok.encode(val_text), tok, name, doc


def _train_neural(model, kind, tok, train_ids, val_ids, name, corpus, val_fraction, block, loop,
                  out, resume, progress, log):
    for part, ids in (("training", train_ids), ("validation", val_ids)):
        if ids.size <= block:
            raise ValueError(f"the {part} text has {ids.size} tokens, too few for block_size "
                             f"{block}: use a larger corpus or a smaller --block-size")
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = {"kind": kind, "config": model.config_dict(), "tokenizer": tok.to_dict(), "corpus": name,
            "corpus_path": None if corpus is None else os.path.abspath(corpus),
            "val_fraction": val_fraction}
    return train_lm(model, train_ids, val_ids, loop, out=out, meta=meta, resume=resume,
                    progress=progress, log=log)


def train_transformer(corpus=None, tokenizer="char", vocab_size=1000, val_fraction=0.1,
                      n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0,
                      loop: LoopConfig | None = None, out="runs/gpt.npz", resume=False,
                      progress=None, log=print):
    """The README's main job: a small GPT on the built-in corpus (or ``corpus``), char-level by
    default. Returns ``(model, tokenizer, history)``."""
    from .models import GPT, GPTConfig
    loop = loop or LoopConfig()
    train_ids, val_ids, tok, name, doc = _neural_data(corpus, tokenizer, vocab_size, val_fraction,
                                                      resume, out)
    if doc is not None:
        cfg = GPTConfig(**doc["meta"]["config"])
    else:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer,
                        n_head=n_head, n_embd=n_embd, dropout=dropout)
    model = GPT(cfg, rng=loop.seed)
    log(f"GPT: {model.num_parameters():,} parameters, {cfg.n_layer} layers, d={cfg.n_embd}, "
        f"block {cfg.block_size}, vocab {cfg.vocab_size} ({tokenizer}); "
        f"{train_ids.size:,} training tokens")
    history = _train_neural(model, "gpt", tok, train_ids, val_ids, name, corpus, val_fraction,
                            loop.block_size or cfg.block_size, loop, out, resume, progress, log)
    return model, tok, history


def train_rnn(cell="lstm", corpus=None, tokenizer="char", vocab_size=1000, val_fraction=0.1,
              embed_dim=128, hidden_size=256, num_layers=1, dropout=0.0, tie_weights=False,
              loop: LoopConfig | None = None, out=None, resume=False, progress=None, log=print):
    """A recurrent LM (``cell``: rnn, lstm or gru) on the corpus with truncated BPTT over
    ``loop.block_size`` steps (default 64) and gradient clipping. Returns
    ``(model, tokenizer, history)``."""
    from dataclasses import replace

    from .models import RNNLM, RNNLMConfig
    loop = loop or LoopConfig()
    loop = replace(loop, block_size=loop.block_size or 64)
    out = out if out is not None else os.path.join("runs", f"{cell}.npz")
    train_ids, val_ids, tok, name, doc = _neural_data(corpus, tokenizer, vocab_size, val_fraction,
                                                      resume, out)
    if doc is not None:
        cfg = RNNLMConfig(**doc["meta"]["config"])
    else:
        cfg = RNNLMConfig(tok.vocab_size, embed_dim, hidden_size, cell, num_layers, dropout,
                          tie_weights)
    model = RNNLM.from_config(cfg, rng=loop.seed)
    log(f"RNNLM ({cfg.cell}): {model.num_parameters():,} parameters, {cfg.num_layers} layer(s), "
        f"hidden {cfg.hidden_size}, embed {cfg.embed_dim}, vocab {cfg.vocab_size} ({tokenizer}); "
        f"truncated BPTT over {loop.block_size} steps; {train_ids.size:,} training tokens")
    history = _train_neural(model, "rnnlm", tok, train_ids, val_ids, name, corpus, val_fraction,
                            loop.block_size, loop, out, resume, progress, log)
    return model, tok, history


def train_convlm(corpus=None, tokenizer="char", vocab_size=1000, val_fraction=0.1, channels=128,
                 kernel_size=5, dilations=(1, 2, 4, 8), gated=False, loop: LoopConfig | None = None,
                 out="runs/convlm.npz", resume=False, progress=None, log=print, **_ignored):
    """The causal dilated :class:`~scratchlm.models.ConvLM` on the corpus: random windows of
    ``loop.block_size`` tokens (default 256). Returns ``(model, tokenizer, history)``."""
    from dataclasses import replace

    from .models import ConvLM, ConvLMConfig
    loop = loop or LoopConfig()
    loop = replace(loop, block_size=loop.block_size or 256)
    train_ids, val_ids, tok, name, doc = _neural_data(corpus, tokenizer, vocab_size, val_fraction,
                                                      resume, out)
    cfg = ConvLMConfig(**doc["meta"]["config"]) if doc is not None else \
        ConvLMConfig(tok.vocab_size, channels, kernel_size, list(dilations), gated)
    model = ConvLM.from_config(cfg, rng=loop.seed)
    log(f"ConvLM: {model.num_parameters():,} parameters, {len(cfg.dilations)} causal blocks "
        f"(kernel {cfg.kernel_size}, dilations {cfg.dilations}, receptive field "
        f"{cfg.receptive_field}), {cfg.channels} channels, vocab {cfg.vocab_size} ({tokenizer}); "
        f"{train_ids.size:,} training tokens")
    history = _train_neural(model, "convlm", tok, train_ids, val_ids, name, corpus, val_fraction,
                            loop.block_size, loop, out, resume, progress, log)
    return model, tok, history


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


def evaluate_text(model, tokenizer, text, block=None) -> dict:
    """Cross-entropy of ``text`` under a neural LM (GPT or RNNLM) in consecutive windows of
    ``block`` tokens (default the model's ``block_size``, 256 for a recurrent model), each window
    predicting its tokens after the first; a recurrent model carries its state from window to
    window, so it sees the whole text. Returns perplexity, bits per token and per character."""
    ids = tokenizer.encode(text)
    recurrent = getattr(model, "recurrent", False)
    block = block or (256 if recurrent else getattr(model.config, "block_size", 256))
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
    return {"perplexity": math.exp(nats), "bits_per_token": nats / math.log(2), "tokens": count,
            "bits_per_char": nats / math.log(2) * count / max(len(text), 1)}


def attention_maps(model, tokenizer, prompt):
    """Attention probabilities of every layer and head for ``prompt``: (n_layer, n_head, T, T)
    and the token strings."""
    ids = tokenizer.encode(prompt)[-model.config.block_size:]
    if ids.size == 0:
        raise ValueError("the prompt encodes to no tokens")
    model.eval()
    model(ids[None, :])
    maps = np.stack([block.attn._saved()["weights"][0] for block in model.transformer.h])
    labels = [tokenizer.decode([int(t)]) for t in ids]
    return maps, labels


def plot_attention(maps, labels, path, title=""):
    """A grid of heat maps (rows: layers, columns: heads); False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    L, H, T, _ = maps.shape
    fig, axes = plt.subplots(L, H, figsize=(2.4 * H + 1, 2.4 * L + 0.6), squeeze=False)
    shown = [repr(s)[1:-1] for s in labels]
    for i in range(L):
        for j in range(H):
            ax = axes[i][j]
            ax.imshow(maps[i, j], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {i} head {j}", fontsize=8)
            if T <= 40:
                ax.set_xticks(range(T), shown, fontsize=5, rotation=90)
                ax.set_yticks(range(T), shown, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(title or "attention (row: query, column: key)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


# ================================================================================================
# vanishing and exploding gradients, made visible
# ================================================================================================
def gradient_norms_over_time(length=100, hidden_size=128, corpus=None, seed=0,
                             cells=("rnn", "lstm", "gru")) -> dict:
    r"""For each cell type: a freshly initialised one-layer :class:`RNNLM` (PyTorch's default
    init) reads ``length`` characters of the corpus; the loss is the cross-entropy of the **last**
    prediction only, so :math:`\lVert \partial L / \partial h_t \rVert` for :math:`t < T-1`
    is exactly what backprop-through-time carries back from the end. Returns
    ``{cell: (T,) norms}`` -- a plain RNN's shrink geometrically, the gated cells' far less."""
    from .models import RNNLM
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


def plot_gradient_norms(norms, path) -> bool:
    """A log-scale plot of :func:`gradient_norms_over_time`; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for cell, v in norms.items():
        ax.semilogy(np.arange(v.size), np.maximum(v, 1e-300), label=cell.upper())
    ax.set_xlabel("time step t (the loss is at the last step)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title("gradient reaching each step: backprop through time")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ================================================================================================
# the RNN encoder-decoder on a synthetic translation task
# ================================================================================================
def seq2seq_task(kind="reverse", seed=0):
    """The built-in task ``train seq2seq`` uses: ``reverse``/``sort`` over 3-8 letters of
    ``abcdefgh`` (4000 training pairs), or ``dates`` (5000); 500 held-out test pairs."""
    from .data import TranslationTask
    if kind == "dates":
        return TranslationTask("dates", n_train=5000, n_test=500, seed=seed)
    return TranslationTask(kind, n_train=4000, n_test=500, min_len=3, max_len=8,
                           alphabet="abcdefgh", seed=seed)


def train_seq2seq(task="reverse", cell="lstm", attention="dot", embed_dim=64, hidden_size=128,
                  num_layers=1, dropout=0.0, steps=800, batch_size=64, lr=3e-3, seed=0,
                  out="runs/seq2seq.npz", resume=False, callback=None, log=print):
    """Train the RNN :class:`~scratchlm.models.Seq2Seq` on a built-in translation task with
    :func:`~scratchlm.models.fit_translation` (checkpoint every 100 steps; ``resume=True``
    continues bit-identically). Returns ``(model, task, history)``."""
    from .models import CharVocab, Seq2Seq, fit_translation
    if resume:
        _, doc = read_checkpoint(out)
        meta = doc["meta"]
        config, task_args, train_args = meta["config"], meta["task"], meta["train"]
    else:
        task_args = {"kind": task, "seed": seed}
        train_args = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
        config = None
    t = seq2seq_task(**task_args)
    vocab = CharVocab(t.chars)
    if config is None:
        config = dict(src_vocab_size=vocab.size, tgt_vocab_size=vocab.size, embed_dim=embed_dim,
                      hidden_size=hidden_size, cell=cell, num_layers=num_layers,
                      attention=None if attention in (None, "none") else attention,
                      dropout=dropout)
    model = Seq2Seq(**config, rng=train_args["seed"])
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = {"kind": "seq2seq", "config": config, "task": task_args, "train": train_args,
            "chars": t.chars}
    log(f"Seq2Seq ({config['cell']}, attention {config['attention']}): "
        f"{model.num_parameters():,} parameters; task {task_args['kind']!r}, "
        f"{len(t.train)} training pairs")
    hist = fit_translation(model, t, train_args["steps"], train_args["batch_size"], train_args["lr"],
                           seed=train_args["seed"], callback=callback, checkpoint=out,
                           resume=resume, meta=meta)
    return model, t, hist


# ================================================================================================
# the CNN on the built-in digit images; what its filters and feature maps look like
# ================================================================================================
def train_cnn(source="glyphs", n_train=20000, n_test=2000, channels=(16, 32), kernel_size=3,
              steps=1000, batch_size=64, lr=None, optimizer="sgd", seed=0, out="runs/cnn.npz",
              resume=False, callback=None, log=print):
    """Train :class:`~scratchlm.models.CNN` on the built-in digit glyphs (or scikit-learn's
    digits, ``source='sklearn'``) with :func:`~scratchlm.models.fit_classifier` (SGD with
    momentum and cosine decay by default; a checkpoint every 100 steps; ``resume=True`` continues
    bit-identically). Returns ``(model, (train, test), history)``."""
    from .data import load_digits_dataset
    from .models import CNN, fit_classifier
    if resume:
        _, doc = read_checkpoint(out)
        meta = doc["meta"]
        data_args, train_args = meta["data"], meta["train"]
        config = meta["config"]
    else:
        data_args = {"source": source, "n_train": n_train, "n_test": n_test, "seed": seed}
        train_args = {"steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                      "seed": seed}
        config = None
    train, test = load_digits_dataset(**data_args)
    if config is None:
        config = dict(in_channels=train.images.shape[1], num_classes=10, channels=list(channels),
                      kernel_size=kernel_size, image_size=train.images.shape[-1])
    model = CNN.from_config(config, rng=train_args["seed"])
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    log(f"CNN: {model.num_parameters():,} parameters, channels {config['channels']}, "
        f"{config['image_size']}x{config['image_size']} images; {len(train.labels):,} training and "
        f"{len(test.labels):,} test images ({data_args['source']})")
    hist = fit_classifier(model, train, test, steps=train_args["steps"],
                          batch_size=train_args["batch_size"], lr=train_args["lr"],
                          optimizer=train_args["optimizer"], seed=train_args["seed"],
                          callback=callback, checkpoint=out, resume=resume,
                          meta={"kind": "cnn", "data": data_args, "train": train_args})
    return model, (train, test), hist


def plot_filters_and_maps(model, image, path) -> bool:
    """One PNG: the first conv layer's filters (one tile per output channel, per input channel
    0), then the input image and every stage's feature maps for it. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    maps = model.feature_maps(image[None])                      # name -> (1, C, H, W) or (1, K)
    convs = [m for m in model.modules() if type(m).__name__ == "Conv2d"]
    filters = convs[0].weight.data[:, 0]                         # (C_out, kH, kW)
    stages = [(name, a[0]) for name, a in maps.items() if a.ndim == 4]
    cols = max(8, max(a.shape[0] for _, a in stages[1:]) if len(stages) > 1 else 8)
    cols = min(cols, 16)
    rows = 1 + len(stages)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(min(cols, filters.shape[0])):
        axes[0][j].imshow(filters[j], cmap="RdBu_r")
        axes[0][j].set_title(f"w{j}", fontsize=6)
    for i, (name, a) in enumerate(stages, start=1):
        for j in range(min(cols, a.shape[0])):
            axes[i][j].imshow(a[j], cmap="gray" if name == "input" else "viridis")
        axes[i][0].set_title(name, fontsize=7, loc="left")
    fig.suptitle("first-layer filters (row 1), then the feature maps of one image", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ================================================================================================
# variational autoencoders: images and documents
# ================================================================================================
def train_vae(kind="image", latent_dim=20, hidden_dim=400, steps=2000, batch_size=128, lr=1e-3,
              kl_warmup_steps=0, free_bits=0.0, likelihood="bernoulli", image_size=28,
              n_train=20000, n_test=2000, vocab_size=2000, seed=0, out=None, resume=False,
              callback=None, log=print):
    """Train a :class:`~scratchlm.models.VAE` on the built-in digit images, binarized (``kind=
    'image'``), or a :class:`~scratchlm.models.DocumentVAE` on bag-of-words documents of the
    built-in corpus (``kind='document'``), with :func:`~scratchlm.models.fit_vae` (Adam,
    optional KL warm-up and free bits, a checkpoint every 100 steps, bit-identical resume).
    Returns ``(model, (train, test, test_labels), history)`` (labels None for documents)."""
    from .models import VAE, DocumentVAE, fit_vae
    out = out or os.path.join("runs", "vae.npz" if kind == "image" else "docvae.npz")
    if resume:
        _, doc = read_checkpoint(out)
        meta = doc["meta"]
        kind, data_args, train_args, config = meta["vae_kind"], meta["data"], meta["train"], meta["config"]
    else:
        data_args = ({"n_train": n_train, "n_test": n_test, "size": image_size, "seed": seed}
                     if kind == "image" else {"vocab_size": vocab_size, "seed": seed})
        train_args = {"steps": steps, "batch_size": batch_size, "lr": lr,
                      "kl_warmup_steps": kl_warmup_steps, "seed": seed}
        config = None
    train, test, test_labels, extra = vae_data(kind, data_args)
    if config is None:
        if kind == "image":
            config = dict(input_dim=int(np.prod(train.shape[1:])), hidden_dim=hidden_dim,
                          latent_dim=latent_dim, likelihood=likelihood, free_bits=free_bits)
        else:
            config = dict(vocab_size=train.shape[1], hidden_dim=hidden_dim, latent_dim=latent_dim,
                          free_bits=free_bits)
    model = (VAE if kind == "image" else DocumentVAE).from_config(config, rng=train_args["seed"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    log(f"{type(model).__name__}: {model.num_parameters():,} parameters, latent {config['latent_dim']}; "
        f"{train.shape[0]:,} training and {test.shape[0]:,} test "
        f"{'images' if kind == 'image' else 'documents'}")
    hist = fit_vae(model, train, steps=train_args["steps"], batch_size=train_args["batch_size"],
                   lr=train_args["lr"], test=test, kl_warmup_steps=train_args["kl_warmup_steps"],
                   seed=train_args["seed"], callback=callback, checkpoint=out, resume=resume,
                   meta={"vae_kind": kind, "data": data_args, "train": train_args, **extra})
    return model, (train, test, test_labels), hist


def vae_data(kind, data_args):
    """``(train, test, test_labels, extra)`` for :func:`train_vae`: binarized digit images
    flattened to ``(N, size*size)`` (and the test digits' labels), or word-count matrices (labels
    None); ``extra`` is what the checkpoint should remember (the document vocabulary)."""
    if kind == "image":
        from .data import binarize, load_digits_dataset
        tr, te = load_digits_dataset(n_train=data_args["n_train"], n_test=data_args["n_test"],
                                     size=data_args["size"], seed=data_args["seed"])
        flat = lambda s: binarize(s.images).reshape(len(s.labels), -1)        # noqa: E731
        return flat(tr), flat(te), te.labels, {}
    from .data import load_documents_dataset
    split = load_documents_dataset(vocab_size=data_args["vocab_size"], seed=data_args["seed"])
    return split.train, split.test, None, {"vocab": list(split.vocab)}


def plot_vae(model, test, path, labels=None, seed=0) -> bool:
    """A PNG for an image VAE: 8 test images over their reconstructions, 16 samples from the
    prior, and, when ``latent_dim == 2``, the posterior means of the test images (coloured by
    ``labels`` when given). False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    side = int(round(np.sqrt(model.input_dim)))
    n = 8
    recon = model.reconstruct(test[:n])
    samples = model.sample(2 * n, rng=np.random.default_rng(seed))
    two_d = model.latent_dim == 2
    fig, axes = plt.subplots(4 + (2 if two_d else 0), n, figsize=(n * 0.9, (4 + 2 * two_d) * 0.95),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(n):
        axes[0][j].imshow(test[j].reshape(side, side), cmap="gray", vmin=0, vmax=1)
        axes[1][j].imshow(recon[j].reshape(side, side), cmap="gray", vmin=0, vmax=1)
        axes[2][j].imshow(samples[j].reshape(side, side), cmap="gray", vmin=0, vmax=1)
        axes[3][j].imshow(samples[n + j].reshape(side, side), cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title("test images", fontsize=7, loc="left")
    axes[1][0].set_title("reconstructions", fontsize=7, loc="left")
    axes[2][0].set_title("samples from the prior", fontsize=7, loc="left")
    if two_d:
        for ax in axes[4:].ravel():
            ax.remove()
        ax = fig.add_subplot(3, 1, 3)
        mu, _ = model.encode(test[:2000])
        sc = ax.scatter(mu[:, 0], mu[:, 1], s=2, alpha=0.6, cmap="tab10",
                        c=None if labels is None else labels[:2000])
        if labels is not None:
            fig.colorbar(sc, ax=ax, fraction=0.03)
        ax.set_title("posterior means of the test images (latent_dim = 2)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
