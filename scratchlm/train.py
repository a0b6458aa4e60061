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
