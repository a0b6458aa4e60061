"""The pipelines from text or images to a trained model, and back to what ``eval`` and ``sample``
report. One class per family of models in the registry (:mod:`scratchlm.registry`):

* :class:`LMPipeline` -- transformer, rnn, lstm, gru, convlm: corpus -> train/validation split
  at a line boundary -> a tokenizer trained on the training part -> ids -> :func:`fit_lm`;
* :class:`NGramPipeline` -- markov: the same text path, counted instead of trained;
* :class:`Seq2SeqPipeline` -- seq2seq: a built-in translation task -> :func:`fit_translation`;
* :class:`ImagePipeline` -- cnn: the built-in digit images -> :func:`fit_classifier`;
* :class:`VAEPipeline` -- vae, docvae: binarized digits or bag-of-words paragraphs ->
  :func:`fit_vae`;
* :class:`WordVectorPipeline` -- word2vec, glove: corpus -> sentences of words -> the model's
  own trainer (SGD or AdaGrad, one example at a time, in Numba kernels).

Each has ``check(entry, options)`` (everything that can be validated before any work: the
entry's ``make_config`` run on stand-in data sizes), ``run(...)`` (train; returns a :class:`Run`),
``load(...)``, ``evaluate(...)`` (the one line ``eval`` prints) and ``sample(...)`` (what
``sample`` prints, or a ``ValueError`` saying why the model does not generate). The model itself
is built by the registry entry (``entry.make_config``, ``entry.build``), so a new model of an
existing family needs no change here. :func:`train_model` is the entry point
(``scratchlm train`` calls it), :func:`load_model` reads any checkpoint back.

Every checkpoint written here has one layout: the training loop's ``train`` and ``loop`` keys,
then ``model`` (the registry name), ``config`` (the model's), ``options`` (every option of the
run, so the data can be rebuilt for ``eval`` and ``--resume``) and, for text models,
``tokenizer``, ``corpus`` and ``corpus_path``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .. import registry
from ..data import Tokenizer, build_tokenizer, encode_lines, read_corpus, split_corpus
from ..io import read_checkpoint
from .loop import TrainConfig

__all__ = ["Run", "train_model", "prepare_run", "load_model", "LMPipeline", "NGramPipeline", "Seq2SeqPipeline",
           "ImagePipeline", "VAEPipeline", "WordVectorPipeline", "bits"]

LN2 = math.log(2)


def bits(nats: float) -> float:
    """Nats -> bits."""
    return nats / LN2


@dataclass
class Run:
    """What a training run produced: the model, its tokenizer (text models), the history, the
    summary numbers (``metrics``: name -> value, for the one summary line) and the files it
    wrote."""
    model: object
    tokenizer: object
    history: dict
    metrics: dict
    seconds: float
    steps: int
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)      # extra lines for the summary (baseline, ...)
    extra: dict = field(default_factory=dict)      # what the CLI may print or plot afterwards


def _resume_doc(path):
    _, doc = read_checkpoint(path)
    meta = doc.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        raise ValueError(f"{path} was not written by 'scratchlm train' (no options in its "
                         f"metadata), so it cannot be resumed from the command line")
    return doc


class _Timed:
    """Wraps a progress callback to keep the training loop's own account of the run's seconds
    (from the first step: compiling and warming the kernels are not training); ``extra`` is added
    to what the callback is told (e.g. ``tokens_per_char``, to show bits per character)."""

    def __init__(self, progress, **extra):
        self.progress, self.seconds, self.extra = progress, None, extra

    def __call__(self, step, total, info):
        self.seconds = info["elapsed"]
        if self.progress is not None:
            self.progress(step, total, info | self.extra)


def train_model(name, options=None, *, out=None, resume=False, progress=None, log=print,
                clock=None) -> Run:
    """Train the registered model ``name`` with ``options`` (a dict of its registry options;
    the rest take their defaults) and write its checkpoint to ``out`` (default the entry's).

    Every option and the model's config are validated before any data is read or anything is
    written. ``resume=True`` continues the run saved at ``out`` with the options it was started
    with. ``progress(step, total, info)`` is the training loop's callback.
    """
    entry, opts, out = prepare_run(name, options, out, resume)
    return entry.pipeline_class.run(entry, opts, out, resume, progress, log,
                                     clock or time.perf_counter)


def prepare_run(name, options=None, out=None, resume=False):
    """Everything :func:`train_model` checks before any work: ``(entry, options, out)`` with
    every option resolved and validated and the model's config built once; a rule the config
    enforces is reported with the options' names (``--n-embd``). With ``resume``, the options
    are the checkpoint's, updated with ``options`` (a longer ``steps`` or ``time``)."""
    import re
    entry = registry.get(name)
    if resume:
        path = out or entry.out
        doc = _resume_doc(path)
        if doc["meta"].get("model") not in (None, entry.name):
            raise ValueError(f"{path} holds a {doc['meta']['model']} run, not {entry.name}")
        saved = {k: v for k, v in doc["meta"]["options"].items()
                 if k not in registry.RUNTIME_OPTIONS}       # how the run ran is not kept
        opts = entry.resolve(saved | dict(options or {}))    # e.g. a new --time
    else:
        opts = entry.resolve(options)
    try:
        _check_parallel(opts, entry)
        entry.pipeline_class.check(entry, opts)
    except ValueError as exc:
        message = str(exc)
        for o in entry.options:
            message = re.sub(rf"\b{o.name}\b", o.flag, message)
        raise ValueError(message) from None
    out = out or entry.out.format(**opts)
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder; give the checkpoint's file name")
    return entry, opts, out


def load_model(path):
    """Any checkpoint -> ``(model, tokenizer or None, meta, entry)``: the registry entry is
    found from the checkpoint, the model built from its config and loaded strictly."""
    from ..io import load_checkpoint
    _, doc = read_checkpoint(path)
    entry = registry.entry_for_checkpoint(doc, path)
    pipe = entry.pipeline_class
    return pipe.load(entry, path, doc, load_checkpoint)


def _float_dtype(path):
    arrays, _ = read_checkpoint(path)
    for k, v in arrays.items():
        if k.startswith("model/") and v.dtype in (np.float32, np.float64):
            return v.dtype
    return np.float32


def _config(meta, path):
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} carries no model config in its metadata (saved with "
                         f"save_checkpoint and no config=...): build the model yourself and use "
                         f"scratchlm.io.load_checkpoint")
    return cfg


def run_options(meta, what) -> dict:
    """The options a checkpoint was trained with (``scratchlm train`` records them), which
    ``what`` needs to rebuild the run's data; a clear error for a model saved by hand."""
    opts = meta.get("options") if isinstance(meta, dict) else None
    if not isinstance(opts, dict):
        raise ValueError(f"this checkpoint records no training options (it was saved by hand, "
                         f"not by 'scratchlm train'), so {what} cannot rebuild the data it was "
                         f"trained on; use the Python API (docs/training.md)")
    return opts


def need_tokenizer(tok, what):
    """``tok``, or a clear error when a text model was saved without its tokenizer."""
    if tok is None:
        raise ValueError(f"this checkpoint carries no tokenizer (saved by hand without "
                         f"tokenizer=tok.to_dict()), so {what} cannot turn text into ids")
    return tok


class Pipeline:
    """What the families share: loading a checkpoint, and a sample that says why not."""

    @classmethod
    def check(cls, entry, opts):
        """Build the config once with stand-in data sizes: every rule it enforces is checked
        before any data is read."""
        entry.make_config(opts, cls.STAND_IN)

    @classmethod
    def load(cls, entry, path, doc, load_checkpoint):
        meta = doc["meta"]
        config = _config(meta, path)
        if "num_labels" in config:    # a sequence classifier (finetune --task classify --full)
            from .. import models
            cls = getattr(models, f"{entry.model_class}ForSequenceClassification", None)
            if cls is None:
                raise ValueError(f"{path}: a {entry.name} model has no sequence classifier")
            model = cls.from_config(config, _float_dtype(path))
        else:
            model = entry.build(config, _float_dtype(path))
        structure = meta.get("structure")
        if structure is not None:               # written by `prune --method heads|neurons`
            from ..compress.prune import shrink
            if not isinstance(structure, dict) or not all(
                    isinstance(v, dict) and all(isinstance(n, int) and not isinstance(n, bool)
                                                and n >= 1 for n in v.values())
                    for v in structure.values()):
                raise ValueError(f"{path}: meta['structure'] must map blocks to head and "
                                 f"neuron counts, got {structure!r:.80}")
            try:                                # the shapes; the values come with the weights
                shrink(model, {b: {k: range(n) for k, n in v.items()}
                               for b, v in structure.items()})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: meta['structure'] does not fit the model: {exc}") \
                    from None
        pruned = meta.get("pruned")
        if pruned is not None:                  # written by `prune`: the masked layers first
            from ..compress.prune import MaskedLinear, _candidates
            from ..finetune.lora import _parent
            layers = _candidates(model, ())
            if not isinstance(pruned, list) or not all(n in layers for n in pruned):
                raise ValueError(f"{path}: meta['pruned'] must list Linear layers of the "
                                 f"model, got {pruned!r:.80}")
            for name in pruned:
                parent, child = _parent(model, name)
                setattr(parent, child, MaskedLinear(layers[name], np.ones(
                    layers[name].weight.shape)))
        quantized = meta.get("quantized")
        if quantized is not None:               # written by `quantize`: the same layers first
            from ..compress import quantize
            if not isinstance(quantized, dict):
                raise ValueError(f"{path}: meta['quantized'] must be a dict, got "
                                 f"{type(quantized).__name__}")
            try:
                quantize(model, quantized.get("format"), layers=quantized.get("layers"))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: meta['quantized'] does not fit the model: {exc}") \
                    from None
        meta = load_checkpoint(path, model)
        tok = Tokenizer.from_dict(meta["tokenizer"]) if isinstance(meta.get("tokenizer"), dict) else None
        return model, tok, meta, entry

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        raise ValueError(f"sample does not apply to a {entry.name} checkpoint: {entry.no_sample}")

    @staticmethod
    def loop_meta(entry, opts, model, extra=None):
        return {"model": entry.name, "config": model.config_dict(), "options": opts,
                **(extra or {})}


# ------------------------------------------------------------------------------------------------
# language models: transformer, rnn, lstm, gru, convlm
# ------------------------------------------------------------------------------------------------
def _check_parallel(opts, entry=None):
    """--distributed / --zero / --federated / --dp-*, before any work: the combinations, and
    MPI being there."""
    if opts.get("dp_clip") is not None and entry is not None and \
            entry.model_class not in ("GPT", "Llama"):
        raise ValueError(f"dp_clip: DP-SGD needs per-example gradients, which the transformer "
                         f"and llama layers compute; {entry.name} has others (recurrent cells "
                         f"or convolutions)")
    if opts.get("zero") and not opts.get("distributed"):
        raise ValueError("zero 1 splits the training state over MPI ranks: add distributed (and "
                         "start the run with mpiexec -n N)")         # (names become --flags)
    if opts.get("zero") and opts.get("precision") == "fp16":
        raise ValueError("zero 1 with precision fp16 is not supported: use bf16, or plain "
                         "distributed")
    if opts.get("dp_noise") and opts.get("dp_clip") is None:
        raise ValueError("dp_noise needs dp_clip: the noise is scaled to the per-example "
                         "clipping norm (noise without clipping bounds nothing)")
    if opts.get("dp_clip") is not None and (opts.get("zero") or opts.get("federated")
                                            or opts.get("precision", "fp32") != "fp32"):
        raise ValueError("dp_clip (DP-SGD) runs in one process or with distributed, in fp32: "
                         "not with zero 1, federated or precision fp16/bf16")
    if opts.get("federated") and opts.get("eval_interval", 0) % opts.get("local_steps", 1):
        raise ValueError("eval_interval must be a multiple of local_steps: FedAvg evaluates and "
                         "saves the averaged model, at the end of a round")
    if opts.get("local_steps", 1) > 1 and not opts.get("federated"):
        raise ValueError("local_steps counts FedAvg's local updates between averagings: add "
                         "federated fedavg")
    if opts.get("federated") and opts.get("distributed"):
        raise ValueError("federated runs its clients on the MPI ranks by itself: give "
                         "federated fedavg or distributed, not both")
    if opts.get("distributed") or opts.get("federated"):
        from ..distributed import MPIUnavailable, world
        try:
            size = world().size
        except MPIUnavailable as exc:
            raise ValueError(str(exc)) from None
        if opts.get("distributed") and opts.get("batch_size", size) < size:
            raise ValueError(f"batch_size {opts['batch_size']} is smaller than the {size} "
                             f"ranks: each rank computes its share of every batch's rows (or "
                             f"streams), so give at least one per rank")


def _parallel(opts) -> dict:
    """The loop's distributed settings from a run's options (every family with a loop)."""
    return {"distributed": bool(opts.get("distributed", False)), "zero": opts.get("zero", 0)}


def _text_split(opts):
    text, name = read_corpus(opts["corpus"])
    train_text, val_text = split_corpus(text, opts["val_fraction"])
    return train_text, val_text, name


class LMPipeline(Pipeline):
    STAND_IN = {"vocab_size": 257}

    @staticmethod
    def loop_config(opts) -> TrainConfig:
        sgd = opts.get("optimizer", "adamw") == "sgd"
        clip = opts.get("grad_clip", 1.0)
        return TrainConfig(steps=opts["steps"], time_limit=None if opts["steps"] else opts["time"],
                           optimizer=opts.get("optimizer", "adamw"), lr=opts["lr"],
                           min_lr=min(1e-4, opts["lr"]), warmup=50,
                           weight_decay=0.0 if sgd else 0.1, betas=(0.9, 0.99),
                           grad_clip=clip if clip and opts.get("dp_clip") is None else None,
                           eval_interval=opts["eval_interval"],
                           precision=opts.get("precision", "fp32"), **_parallel(opts),
                           federated=opts.get("federated"),
                           local_steps=opts.get("local_steps", 1),
                           dp_clip=opts.get("dp_clip"), dp_noise=opts.get("dp_noise", 0.0),
                           dp_delta=opts.get("dp_delta", 1e-5),
                           dp_seed=opts.get("dp_seed"))

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from .evaluate import sample_text
        from .fit import fit_lm
        train_text, val_text, corpus_name = _text_split(opts)
        if resume:
            meta = read_checkpoint(out)[1]["meta"]
            tok = Tokenizer.from_dict(meta["tokenizer"])
            config = meta["config"]
        else:
            tok = build_tokenizer(opts["tokenizer"], train_text, opts["vocab_size"])
            config = entry.make_config(opts, {"vocab_size": tok.vocab_size})
        train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
        model = entry.build(config, rng=opts["seed"], options=opts)
        log(f"{type(model).__name__} ({entry.name}): {model.num_parameters():,} parameters, vocab "
            f"{tok.vocab_size} ({opts['tokenizer']}); {train_ids.size:,} training tokens")
        meta = cls.loop_meta(entry, opts, model, {
            "tokenizer": tok.to_dict(), "corpus": corpus_name,
            "corpus_path": None if opts["corpus"] is None else os.path.abspath(opts["corpus"])})
        tokens_per_char = val_ids.size / max(len(val_text), 1)
        timed = _Timed(progress, tokens_per_char=tokens_per_char)
        history = fit_lm(model, train_ids, val_ids, cls.loop_config(opts),
                         batch_size=opts["batch_size"], block_size=opts["block_size"],
                         seed=opts["seed"], checkpoint=out, meta=meta, resume=resume,
                         progress=timed, log=log, clock=clock, source=entry.batch_source,
                         split=opts.get("split", "iid"))
        seconds = timed.seconds
        val = history["val_loss"][-1]
        metrics = {"bits/token": bits(val), "bits/char": bits(val) * tokens_per_char,
                   "perplexity": math.exp(val)}
        run = Run(model, tok, history, metrics, seconds, history["step"][-1] if history["step"] else 0,
                  files=[out], extra={"tokens_per_char": tokens_per_char,
                                      "tokens_per_step": opts["batch_size"] * opts["block_size"]})
        if history.get("epsilon"):                 # DP-SGD: what the privacy cost
            run.notes.append(f"privacy: epsilon {history['epsilon'][-1]:.3g} at delta "
                             f"{opts['dp_delta']:g} (DP-SGD: clip {opts['dp_clip']:g}, noise "
                             f"multiplier {opts['dp_noise']:g}, Poisson batches of "
                             f"{opts['batch_size']} on average, {run.steps} steps; RDP "
                             f"accountant)")
        if entry.name == "transformer":            # the main job: the baseline to beat
            import warnings
            with warnings.catch_warnings():        # char unigrams: KN's documented fallback
                warnings.simplefilter("ignore", RuntimeWarning)
                ngram = NGramPipeline.fit_on(train_text, val_text, order=5)
            run.notes.append(f"baseline: an order-5 Kneser-Ney n-gram on the same split reaches "
                             f"{ngram['bits_per_char']:.3f} bits/char (python -m scratchlm train "
                             f"markov)")
            run.extra["baseline_bits_per_char"] = ngram["bits_per_char"]
        run.extra["sample"] = sample_text(model, tok, length=opts["sample_length"],
                                          seed=opts["seed"], top_k=opts["top_k"])
        return run

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None):
        from .evaluate import evaluate_text
        text, name = _eval_text(meta, corpus, tok)
        r = evaluate_text(model, need_tokenizer(tok, "eval"), text)
        return _lm_report(name, r)

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        from .evaluate import sample_text
        return sample_text(model, need_tokenizer(tok, "sample"), prompt=args.prompt, length=args.length,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           greedy=args.greedy, seed=args.seed)


def _eval_text(meta, corpus, tok):
    """The text ``eval`` scores: ``corpus`` if given, else the validation split the model was
    trained against (rebuilt from the checkpoint's options)."""
    if corpus is not None:
        return read_corpus(corpus)
    opts = meta.get("options") if isinstance(meta.get("options"), dict) else None
    if opts is None and "val_fraction" in meta:                  # a model saved by NGramLM.save
        opts = {"corpus": meta.get("corpus_path"), "val_fraction": meta["val_fraction"]}
    if tok is None or opts is None:
        raise ValueError("this checkpoint records no training corpus: pass --corpus FILE")
    text = split_corpus(read_corpus(opts["corpus"])[0], opts["val_fraction"])[1]
    return text, f"validation split of {meta.get('corpus', opts['corpus'])}"


def _lm_report(name, r):
    per_char = "" if r["bits_per_char"] is None else f", {r['bits_per_char']:.3f} bits/char"
    return (f"{name}: perplexity {r['perplexity']:.3f}, {r['bits_per_token']:.3f} bits/token"
            f"{per_char} over {r['tokens']:,} tokens")


# ------------------------------------------------------------------------------------------------
# n-grams
# ------------------------------------------------------------------------------------------------
class NGramPipeline(Pipeline):
    @classmethod
    def check(cls, entry, opts):
        pass

    @staticmethod
    def fit_on(train_text, val_text, order=5, smoothing="kneser_ney", tokenizer="char",
               vocab_size=1000, k=1.0, progress=None):
        """Fit an n-gram on ``train_text`` and score ``val_text``: a dict with the model, the
        tokenizer, perplexity, bits per token and per character, token counts and seconds."""
        from ..data import corpus_lines
        from ..models import NGramLM
        tell = progress or (lambda stage: None)
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
        return {"model": model, "tokenizer": tok, "perplexity": ppl, "bits_per_token": math.log2(ppl),
                "bits_per_char": math.log2(ppl) * n_val / chars, "val_tokens": n_val,
                "train_tokens": sum(len(s) + 1 for s in train_seqs), "seconds": seconds}

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from .evaluate import ngram_sample_text
        if resume:
            raise ValueError("an n-gram model is counted in one pass: there is nothing to resume")
        train_text, val_text, corpus_name = _text_split(opts)
        t0 = clock()
        r = cls.fit_on(train_text, val_text, opts["order"], opts["smoothing"], opts["tokenizer"],
                       opts["vocab_size"], opts["k"], progress)
        model, tok = r["model"], r["tokenizer"]
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        model.save(out, model="markov", options=opts, tokenizer=tok.to_dict(), corpus=corpus_name,
                   corpus_path=None if opts["corpus"] is None else os.path.abspath(opts["corpus"]),
                   val_fraction=opts["val_fraction"], val_perplexity=r["perplexity"])
        sizes = ", ".join(f"{k}-grams {lv['keys'].size:,}" for k, lv in enumerate(model._levels, start=1))
        metrics = {"bits/token": r["bits_per_token"], "bits/char": r["bits_per_char"],
                   "perplexity": r["perplexity"]}
        run = Run(model, tok, {}, metrics, clock() - t0, 0, files=[out],
                  notes=[f"counted {r['train_tokens']:,} tokens ({opts['tokenizer']}): {sizes}"])
        run.extra["sample"] = ngram_sample_text(model, tok, length=opts["sample_length"],
                                                seed=opts["seed"])
        return run

    @classmethod
    def load(cls, entry, path, doc, load_checkpoint):
        from ..models import NGramLM
        if not isinstance(doc["meta"].get("config"), dict):      # saved by hand: one clear line
            raise ValueError(f"{path} carries no n-gram config in its metadata (saved with "
                             f"save_checkpoint, not NGramLM.save): save n-gram models with "
                             f"model.save(path)")
        model, meta = NGramLM.load(path)
        tok = Tokenizer.from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
        return model, tok, meta, entry

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None):
        from .evaluate import evaluate_ngram
        text, name = _eval_text(meta, corpus, tok) if tok is not None or corpus is None else \
            read_corpus(corpus)
        return _lm_report(name, evaluate_ngram(model, tok, text))

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        from .evaluate import ngram_sample_text
        if args.top_p is not None or args.greedy:
            raise ValueError("--top-p and --greedy apply to neural checkpoints, not n-grams")
        return ngram_sample_text(model, tok, length=args.length, temperature=args.temperature,
                                 top_k=args.top_k, seed=args.seed, prompt=args.prompt)


# ------------------------------------------------------------------------------------------------
# the RNN encoder-decoder on a translation task
# ------------------------------------------------------------------------------------------------
def seq2seq_task(kind="reverse", seed=0):
    """The built-in task ``train seq2seq`` uses: ``reverse``/``sort`` over 3-8 letters of
    ``abcdefgh`` (4000 training pairs), or ``dates`` (5000); 500 held-out test pairs."""
    from ..data import TranslationTask
    if kind == "dates":
        return TranslationTask("dates", n_train=5000, n_test=500, seed=seed)
    return TranslationTask(kind, n_train=4000, n_test=500, min_len=3, max_len=8,
                           alphabet="abcdefgh", seed=seed)


class Seq2SeqPipeline(Pipeline):
    STAND_IN = {"vocab_size": 8}

    @classmethod
    def check(cls, entry, opts):
        entry.build(entry.make_config(opts, cls.STAND_IN))      # Seq2Seq checks in __init__
        pairs = 5000 if opts["task"] == "dates" else 4000
        if opts["batch_size"] > pairs:
            raise ValueError(f"--batch-size must be <= the task's {pairs} training pairs, got "
                             f"{opts['batch_size']}")

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from ..models import CharVocab, exact_match, translate
        from .fit import fit_translation
        task = seq2seq_task(opts["task"], opts["seed"])
        vocab = CharVocab(task.chars)
        model = entry.build(entry.make_config(opts, {"vocab_size": vocab.size}), rng=opts["seed"],
                            options=opts)
        log(f"Seq2Seq ({opts['cell']}, attention {opts['attention']}): "
            f"{model.num_parameters():,} parameters; task {opts['task']!r}, "
            f"{len(task.train)} training pairs")
        timed = _Timed(progress)
        history = fit_translation(model, task, opts["steps"], opts["batch_size"], opts["lr"],
                                  seed=opts["seed"], progress=timed, checkpoint=out,
                                  save_every=opts["save_interval"], resume=resume, log=log,
                                  **_parallel(opts), meta=cls.loop_meta(entry, opts, model,
                                                                    {"chars": task.chars}))
        seconds = timed.seconds
        greedy, beam = exact_match(model, task.test), exact_match(model, task.test, "beam")
        run = Run(model, None, history, {"exact match (greedy)": greedy, "exact match (beam-4)": beam},
                  seconds, history["step"][-1], files=[out])
        examples = [s for s, _ in task.test[:3]]
        run.notes += [f"  {s!r} -> {h!r}" for s, h in zip(examples, translate(model, examples))]
        return run

    @classmethod
    def load(cls, entry, path, doc, load_checkpoint):
        from ..models import CharVocab
        model, tok, meta, entry = super().load(entry, path, doc, load_checkpoint)
        chars = meta.get("chars")
        if not isinstance(chars, str):
            raise ValueError("this seq2seq checkpoint records no character vocabulary ('chars', "
                             "which 'scratchlm train seq2seq' writes), so its ids cannot be read")
        model.vocab = CharVocab(chars)
        return model, tok, meta, entry

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None):
        from ..models import exact_match
        if corpus is not None:
            raise ValueError("--corpus applies to language models; a seq2seq checkpoint is "
                             "scored on its task's held-out pairs")
        opts = run_options(meta, "eval")
        task = seq2seq_task(opts["task"], opts["seed"])
        return (f"{opts['task']} task, {len(task.test)} held-out pairs: exact match greedy "
                f"{exact_match(model, task.test):.3f}, beam-4 "
                f"{exact_match(model, task.test, 'beam'):.3f}")

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        from ..models import translate
        if not args.prompt:
            raise ValueError("a seq2seq checkpoint translates --prompt TEXT; none was given")
        return translate(model, [args.prompt], decode="beam" if args.beam else "greedy",
                         beam_size=args.beam or 4)[0]


# ------------------------------------------------------------------------------------------------
# the CNN on digit images
# ------------------------------------------------------------------------------------------------
def _check_digits(opts):
    """What :func:`digits` would refuse, checked before any image is made, with the options'
    names: the source's availability and size, and a batch that fits the training images."""
    import importlib.util
    sklearn = opts.get("images") == "sklearn"
    if sklearn and importlib.util.find_spec("sklearn") is None:
        raise ValueError("--images sklearn needs scikit-learn (pip install scikit-learn); the "
                         "default --images glyphs needs nothing")
    n_train = opts["n_train"] or (1497 if sklearn else 20000)
    n_test = opts["n_test"] or (300 if sklearn else 2000)
    if sklearn and n_train + n_test > 1797:
        raise ValueError(f"scikit-learn's digits are 1797 images: --n-train + --n-test must be "
                         f"<= 1797, got {n_train} + {n_test}")
    if opts["batch_size"] > n_train:
        raise ValueError(f"--batch-size must be <= the training images (--n-train {n_train}), "
                         f"got {opts['batch_size']}")


def digits(opts):
    """The digit images a cnn or vae run was trained on, rebuilt from its options."""
    from ..data import load_digits_dataset
    return load_digits_dataset(**({"source": opts["images"]} if "images" in opts else {}),
                               n_train=opts["n_train"], n_test=opts["n_test"], seed=opts["seed"])


class ImagePipeline(Pipeline):
    @classmethod
    def check(cls, entry, opts):
        size = 8 if opts["images"] == "sklearn" else 28
        entry.make_config(opts, {"in_channels": 1, "image_size": size})
        _check_digits(opts)

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from .fit import fit_classifier
        train, test = digits(opts)
        config = entry.make_config(opts, {"in_channels": train.images.shape[1],
                                          "image_size": train.images.shape[-1]})
        model = entry.build(config, rng=opts["seed"], options=opts)
        log(f"CNN: {model.num_parameters():,} parameters, channels {list(config.channels)}, "
            f"{config.image_size}x{config.image_size} images; {len(train.labels):,} training "
            f"and {len(test.labels):,} test images ({opts['images']})")
        timed = _Timed(progress)
        history = fit_classifier(model, train, test, steps=opts["steps"],
                                 batch_size=opts["batch_size"], lr=opts["lr"],
                                 optimizer=opts["optimizer"], seed=opts["seed"], progress=timed,
                                 checkpoint=out, save_every=opts["save_interval"], resume=resume,
                                 log=log, **_parallel(opts),
                                 meta=cls.loop_meta(entry, opts, model))
        seconds = timed.seconds
        acc = history["test_acc"][-1]             # the loop's final evaluation
        return Run(model, None, history, {"held-out accuracy": acc}, seconds,
                   history["step"][-1], files=[out], extra={"test": test})

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None):
        from ..models import classifier_accuracy
        if corpus is not None:
            raise ValueError("--corpus applies to language models; a cnn checkpoint is scored "
                             "on its held-out images")
        _, test = digits(run_options(meta, "eval"))
        return (f"{meta['options']['images']} digits, {len(test.labels):,} held-out images: "
                f"accuracy {classifier_accuracy(model, test.images, test.labels):.4f}")


# ------------------------------------------------------------------------------------------------
# variational autoencoders: images and documents
# ------------------------------------------------------------------------------------------------
class VAEPipeline(Pipeline):
    @staticmethod
    def data(entry, opts):
        """``(train, test, test_labels, extra)``: binarized digits flattened to ``(N, 784)`` and
        the test labels, or bag-of-words counts (labels None) and the vocabulary."""
        if entry.model_class == "VAE":
            from ..data import binarize
            tr, te = digits(opts)
            flat = lambda s: binarize(s.images).reshape(len(s.labels), -1)        # noqa: E731
            return flat(tr), flat(te), te.labels, {}
        from ..data import load_documents_dataset
        split = load_documents_dataset(vocab_size=opts["vocab_size"], seed=opts["seed"])
        return split.train, split.test, None, {"vocab": list(split.vocab)}

    STAND_IN = {"input_dim": 16}

    @classmethod
    def check(cls, entry, opts):
        entry.make_config(opts, cls.STAND_IN)
        if entry.model_class == "VAE":
            _check_digits(opts)

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from .fit import fit_vae
        train, test, labels, extra = cls.data(entry, opts)
        model = entry.build(entry.make_config(opts, {"input_dim": train.shape[1]}),
                            rng=opts["seed"], options=opts)
        log(f"{type(model).__name__}: {model.num_parameters():,} parameters, latent "
            f"{opts['latent_dim']}; {train.shape[0]:,} training and {test.shape[0]:,} test "
            f"{'images' if entry.model_class == 'VAE' else 'documents'}")
        timed = _Timed(progress)
        history = fit_vae(model, train, steps=opts["steps"], batch_size=opts["batch_size"],
                          lr=opts["lr"], test=test, kl_warmup_steps=opts["kl_warmup"],
                          seed=opts["seed"], progress=timed, checkpoint=out, resume=resume,
                          save_every=opts["save_interval"], log=log, **_parallel(opts),
                          meta=cls.loop_meta(entry, opts, model, extra))
        seconds = timed.seconds
        metrics = {"held-out ELBO (nats)": history["test_elbo"][-1]}
        if entry.model_class == "VAE":
            metrics["IWAE bound k=50, 500 images (nats)"] = model.iwae_bound(
                test[:500], 50, rng=np.random.default_rng(0))
        else:
            metrics["held-out perplexity"] = history["test_perplexity"][-1]
        return Run(model, None, history, metrics, seconds, history["step"][-1], files=[out],
                   extra={"test": test, "labels": labels})

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None):
        if corpus is not None:
            raise ValueError(f"--corpus applies to language models; a {entry.name} checkpoint "
                             f"is scored on its held-out data")
        opts = run_options(meta, "eval")
        _, test, _, _ = cls.data(entry, opts)
        rng = np.random.default_rng(opts["seed"])
        if entry.model_class == "VAE":
            x = test[:500]
            return (f"{len(x)} held-out images: ELBO {model.elbo(x, rng=rng):.3f} nats, "
                    f"importance-weighted bound (k=50) "
                    f"{model.iwae_bound(x, 50, rng=np.random.default_rng(0)):.3f} nats")
        from .fit import VAEData
        x = VAEData(test, "test", model).all()
        per = model.elbo(x, rng=rng, reduction="none")
        return (f"{x.shape[0]} held-out documents: ELBO {float(per.mean()):.3f} nats, perplexity "
                f"{float(np.exp(-per.sum() / x.sum(dtype=np.float64))):.1f}")

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        rng = np.random.default_rng(args.seed)
        if entry.model_class == "VAE":
            from .plots import plot_samples
            path = args.out or os.path.join("runs", "vae-samples.png")
            if not plot_samples(model.sample(16, rng=rng), path):
                raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
            return f"wrote {path}: 16 images drawn from the prior"
        vocab = meta.get("vocab")
        if not isinstance(vocab, list):
            raise ValueError("this checkpoint carries no vocabulary to print words with")
        probs = model.sample(4, rng=rng)
        lines = []
        for i, p in enumerate(probs):
            top = np.argsort(-p, kind="stable")[:12]
            lines.append(f"document {i + 1}: " + " ".join(vocab[j] for j in top))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# word vectors: word2vec, glove
# ------------------------------------------------------------------------------------------------
#: the words whose neighbours ``train word2vec`` / ``glove`` print when --neighbours is not given
#: (those of them the vocabulary has)
DEFAULT_NEIGHBOURS = ("file", "list", "error", "number", "string", "thread")


class WordVectorPipeline(Pipeline):
    """corpus -> sentences of lower-cased words (:func:`~scratchlm.data.word_sentences`) -> a
    vocabulary -> :meth:`Word2Vec.train <scratchlm.models.Word2Vec.train>` or
    :meth:`GloVe.train <scratchlm.models.GloVe.train>`. Writes the checkpoint (the config with
    the vocabulary, the tables, the run's options), the vectors in word2vec's text format beside
    it (``.txt``: gensim reads it) and a PCA picture of a few words' neighbourhoods (``.png``)."""

    STAND_IN = {}

    @classmethod
    def check(cls, entry, opts):
        if opts.get("sg") and opts.get("cbow"):
            raise ValueError("give --sg (skip-gram) or --cbow, not both")
        entry.make_config(opts, cls.STAND_IN)

    @staticmethod
    def sentences(opts):
        """The run's sentences and the corpus's name, from its options."""
        from ..data import word_sentences
        text, name = read_corpus(opts["corpus"], builtin=opts["builtin"])
        return word_sentences(text), name

    @classmethod
    def run(cls, entry, opts, out, resume, progress, log, clock):
        from .. import models
        from .plots import plot_word_vectors
        if resume:
            raise ValueError(f"a {entry.name} run cannot be resumed: train it again (it takes "
                             f"minutes), or continue in Python with model.train(...)")
        sentences, corpus_name = cls.sentences(opts)
        config = entry.make_config(opts, cls.STAND_IN)
        model = getattr(models, entry.model_class).build(sentences, config)
        words = sum(len(s) for s in sentences)
        log(f"{entry.model_class} ({entry.name}): {len(model.vocab):,} words seen >= "
            f"{opts['min_count']} times ({model.vocab.total:,} of the corpus's {words:,} words, "
            f"{len(sentences):,} sentences), {opts['dim']} dimensions, "
            f"{model.num_parameters():,} parameters")
        chosen = cls._chosen(model.vocab.index, opts["neighbours"])     # before the work
        t0 = clock()
        if entry.model_class == "GloVe":
            X = model.cooccurrence(sentences)
            log(f"{len(X):,} non-zero co-occurrences (window {opts['window']}) in "
                f"{clock() - t0:.1f} s")
            history = model.train(cooccurrence=X, workers=opts["workers"], progress=progress,
                                  clock=clock)
            metrics = {"cost": history["cost"][-1]}
        else:
            history = model.train(sentences, workers=opts["workers"], progress=progress,
                                  clock=clock)
            metrics = {"loss": history["loss"][-1],      # the first epoch compiles the kernel
                       "words/s": int(np.mean(history["words_per_sec"][1:] or
                                              history["words_per_sec"]))}
        seconds = clock() - t0
        from ..io import save_checkpoint
        save_checkpoint(out, model, config=model.config_dict(), model=entry.name, options=opts,
                        corpus=corpus_name, history=history)
        kv = model.wv
        base = os.path.splitext(out)[0]
        files = [out, base + ".txt"]
        kv.save_word2vec_format(files[1])
        png = base + ".png"
        if chosen and plot_word_vectors(kv, chosen, png, topn=5, title=f"{entry.name}: nearest "
                                        f"neighbours (PCA)"):
            files.append(png)
        run = Run(model, None, history, metrics, seconds, 0, files=files)
        run.extra["length"] = f"{opts['epochs']} epochs"
        run.notes.extend(_neighbour_lines(kv, chosen, 8))
        return run

    @staticmethod
    def _chosen(kv, neighbours):
        if neighbours is None:
            return [w for w in DEFAULT_NEIGHBOURS if w in kv][:4]
        words = neighbours.split()
        missing = [w for w in words if w not in kv]
        if missing:
            raise ValueError(f"--neighbours: {', '.join(map(repr, missing[:5]))} not in the "
                             f"vocabulary (words seen at least --min-count times, lower-cased)")
        return words

    @classmethod
    def evaluate(cls, entry, model, tok, meta, corpus=None, word_pairs=None, analogies=None):
        if corpus is not None:
            raise ValueError(f"--corpus applies to language models; score {entry.name} vectors "
                             f"with --word-pairs FILE and/or --analogies FILE")
        kv = model.wv
        lines = []
        if word_pairs is None and analogies is None:     # what the checkpoint itself tells
            history = meta.get("history") if isinstance(meta.get("history"), dict) else {}
            key = "cost" if "cost" in history else "loss"
            last = history.get(key) or [float("nan")]
            what = "cost (1/2 f(X) diff^2 per co-occurrence)" if key == "cost" else \
                "loss (nats per prediction)"
            return (f"{entry.name}: {len(kv):,} words x {kv.vector_size} dimensions, trained on "
                    f"{meta.get('corpus', 'an unnamed corpus')} to a {what} of "
                    f"{float(last[-1]):.4f}; score the vectors with --word-pairs FILE "
                    f"(WordSim-353 or SimLex-999 format) and --analogies FILE (word2vec's "
                    f"questions-words.txt format)")
        if word_pairs is not None:
            r = kv.evaluate_word_pairs(word_pairs)
            lines.append(f"{word_pairs}: Spearman {r.spearman:.4f}, Pearson {r.pearson:.4f} over "
                         f"{r.pairs} pairs ({r.oov} with an out-of-vocabulary word, "
                         f"{r.oov_ratio:.1f}%)")
        if analogies is not None:
            score, sections = kv.evaluate_word_analogies(analogies)
            total = sections[-1]
            n = len(total["correct"]) + len(total["incorrect"])
            lines.append(f"{analogies}: accuracy {score:.4f} over {n} questions (3CosAdd)")
            lines.extend(f"  {s['section']}: {len(s['correct'])}/{len(s['correct']) + len(s['incorrect'])}"
                         for s in sections[:-1])
        return "\n".join(lines)

    @classmethod
    def sample(cls, entry, model, tok, meta, args):
        kv = model.wv
        words = args.prompt.lower().split() or cls._chosen(kv, None) or kv.index_to_key[:4]
        missing = [w for w in words if w not in kv]
        if missing:
            raise ValueError(f"--prompt: {', '.join(map(repr, missing[:5]))} not in the "
                             f"vocabulary of {len(kv):,} words")
        return "\n".join(_neighbour_lines(kv, words, args.top_k or 10))


def _neighbour_lines(kv, words, topn):
    return [f"{w}: " + ", ".join(f"{n} {s:.3f}" for n, s in kv.most_similar(w, topn=topn))
            for w in words]
