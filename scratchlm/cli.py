"""``python -m scratchlm`` / ``scratchlm``: the command line. It parses and dispatches; the work
is in :mod:`scratchlm.training` and the models it names come from :mod:`scratchlm.registry`.

Subcommands:
    train MODEL   train a registered model and save a checkpoint (``train MODEL --help`` lists
                  that model's options and defaults)
    sample        generate from a checkpoint (or say why that model does not); --adapter adds a
                  LoRA adapter
    finetune      fine-tune a GPT or Llama checkpoint on a built-in instruction task, or as a
                  classifier (--task classify, --data file.csv), with LoRA or in full,
                  reporting held-out exact match or accuracy before and after
    quantize      quantize a GPT or Llama checkpoint (int8, q8_0, q4_0): perplexity, KL,
                  top-1 agreement, size and generation speed against float32
    prune         prune a GPT or Llama checkpoint (magnitude, Wanda, 2:4), fine-tune it
                  pruned, and report the perplexity it costs (--sweep: a PNG over sparsity)
    precision     where a GPT's or Llama's activation gradients fall against float16 and
                  bfloat16 (flushed, subnormal, overflow; with and without loss scaling; PNG)
    eval          what a checkpoint scores on held-out data
    attention     draw a GPT's or a Llama's attention maps for a prompt (PNG)
    inspect       serve a page on 127.0.0.1 that shows inside a GPT, Llama or RNN for any
                  prompt (attention, logit lens, saliency, gates...); --export writes one
                  prompt's page as a self-contained HTML file
    gradnorms     plot |dL/dh_t| over time steps for RNN vs LSTM vs GRU (PNG)
    filters       draw a CNN's learned filters and one image's feature maps (PNG)
    gradcheck     check every layer and loss against finite differences and print a table

Every option is checked before anything is computed or written: a bad value exits with code 2
and one line naming the option, what it allows and what was given; a misspelt option prints the
subcommand's usage and the closest valid option. Errors in files (missing, foreign, corrupt)
exit 2 with one line too. PNGs go under ``runs/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys

from . import registry
from .registry import Option, opt, positive

NATS_TO_BITS = 1 / math.log(2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump for a bad value)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _converter(o: Option):
    base = {int: int, float: float, str: str, "ints": int}[o.kind]

    def convert(text):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {o.describe_range()}, got {text!r}") from None
        try:
            (o if o.kind != "ints" else Option(o.name, int, None, "", o.low, o.high, o.open_low,
                                               o.open_high, o.choices)).check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {o.describe_range()}, got {text}") from None
        return value
    convert.__name__ = o.describe_range()
    return convert


def _add(parser, o: Option):
    if o.kind is bool:
        parser.add_argument(o.flag, action="store_true", help=o.help)
        return
    default = o.default
    shown = "" if default is None else \
        f" (default {' '.join(map(str, default)) if isinstance(default, list) else default})"
    kw = dict(default=default, help=o.help + shown)
    if o.choices:
        kw["choices"] = o.choices
        if o.kind in (int, float):                 # the words on the command line are text
            kw["type"] = o.kind
    else:
        kw["type"] = _converter(o)
    if o.kind == "ints":
        kw["nargs"] = "+"
    parser.add_argument(o.flag, **kw)


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
class _Bar:
    """The progress bar of ``train``, made at the first step (so an error before training is one
    line, with no bar fragment): ``progress(step, total, info)`` for the training loop,
    ``stage(name)`` for a run in stages (the n-gram's counting), ``log(msg)`` above it."""

    def __init__(self, desc, entry, opts, total=None):
        self.desc, self.entry, self.total, self.bar = desc, entry, total, None
        self.tokens = opts.get("batch_size", 0) * (opts.get("block_size") or 0)

    def _open(self):
        if self.bar is None:
            from tqdm import tqdm
            unit = {"Word2Vec": "word", "GloVe": "pair"}.get(self.entry.model_class, "step")
            self.bar = tqdm(desc=self.desc, total=self.total, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, unit_scale=unit != "step")
        return self.bar

    def log(self, msg):
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)

    def stage(self, name):
        bar = self._open()
        bar.set_postfix_str(name)
        bar.update(1)

    def progress(self, step, total, info):
        bar = self._open()
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = step
        post = {}
        if self.entry.pipeline == "WordVectorPipeline":       # words (word2vec), pairs (GloVe)
            post["epoch"] = info["epoch"]
            if "cost" in info:                                # (tqdm shows the rate)
                post["cost"] = f"{info['cost']:.4f}"
            elif info.get("loss") == info.get("loss"):        # not NaN
                post["loss"] = f"{info['loss']:.3f} nats"
            bar.set_postfix(post, refresh=False)
            bar.update(0)
            return
        per_char = info.get("tokens_per_char", 1.0)
        per_char = None if abs(per_char - 1.0) < 1e-9 else per_char   # not characters: say both
        if self.entry.pipeline == "VAEPipeline":   # the training objective (KL warm-up applied)
            post["loss"] = f"{info['loss']:.2f} nats"
        else:
            post["loss"] = f"{info['loss'] * NATS_TO_BITS:.3f} bits"
        if "val_loss" in info:
            val = info["val_loss"] * NATS_TO_BITS
            post["val"] = f"{val:.3f} bits/token" + (f", {val * per_char:.3f} bits/char"
                                                      if per_char else "")
        if self.tokens and info["elapsed"] > 0:
            post["tok/s"] = f"{step * self.tokens / info['elapsed']:,.0f}"
        bar.set_postfix(post, refresh=False)
        bar.update(0)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _join_job(opts) -> int:
    """``--distributed``: this process's rank in the MPI job (MPI starts here); our kernels'
    threads share the machine's cores among the ranks on it (unless SCRATCHLM_NUM_THREADS
    says otherwise), and so does NumPy's BLAS when threadpoolctl is installed."""
    from .distributed import world
    from .kernels import set_num_threads
    comm = world()
    per = max(1, (os.cpu_count() or 1) // comm.local_size())
    if "SCRATCHLM_NUM_THREADS" not in os.environ:
        set_num_threads(per)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(per, user_api="blas")
    except ImportError:
        pass
    return comm.rank


def _cmd_train(args) -> int:
    from .training.pipelines import prepare_run, train_model
    from .training.plots import plot_history, plot_vae
    entry = registry.get(args.model)
    given = {o.name for o in entry.options
             if any(w == o.flag or w.startswith(o.flag + "=") for w in args.argv)}
    if {"steps", "time"} <= given:
        raise ValueError("give --steps (a reproducible run) or --time (a deadline), not both")
    if args.resume:                     # the run's own options; only its length may change
        others = sorted(given - {"steps", "time"} - set(registry.RUNTIME_OPTIONS))
        if others:
            raise ValueError(f"--resume continues the run with the options it started with "
                             f"(how it runs, --distributed and --zero, may change); only "
                             f"--steps or --time may change, got "
                             f"{', '.join(entry.option(n).flag for n in others)}")
        opts = {n: getattr(args, n) for n in given}
        if "time" in opts:
            opts["steps"] = None
    else:
        opts = {o.name: getattr(args, o.name) for o in entry.options}
    entry, opts, out = prepare_run(args.model, opts, args.out, args.resume)   # all checks first
    if opts.get("distributed") or opts.get("federated"):
        rank = _join_job(opts)
        if rank != 0:                   # rank 0 reports and writes; the others only train
            train_model(entry.name, opts, out=out, resume=args.resume, progress=None,
                        log=lambda *a: None)
            return 0
    stages = entry.pipeline == "NGramPipeline"      # tokenize, count each order, smooth, evaluate
    bar = _Bar(f"train {entry.name}", entry, opts, total=opts["order"] + 3 if stages else None)
    try:
        run = train_model(entry.name, opts, out=out, resume=args.resume,
                          progress=bar.stage if stages else bar.progress, log=bar.log)
    finally:
        bar.close()
    files = list(run.files)
    base = os.path.splitext(run.files[0])[0]
    if run.history.get("val_loss"):
        png = base + "-loss.png"
        title = f"{type(run.model).__name__} ({entry.name})"
        per_char = run.extra.get("tokens_per_char") or 1.0
        baseline = run.extra.get("baseline_bits_per_char")
        if plot_history(run.history, png, title=title, tokens_per_char=per_char,
                        baseline=None if baseline is None else baseline / per_char,
                        sample=run.extra.get("sample")):
            files.append(png)
    if entry.model_class == "VAE":
        png = base + ".png"
        if plot_vae(run.model, run.extra["test"], png, labels=run.extra["labels"]):
            files.append(png)
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in run.metrics.items())
    steps = run.extra.get("length") or (f"{run.steps} steps" if run.steps else
                                         "one counting pass")
    print(f"trained {entry.name}: {steps} in {run.seconds:.1f} s; {metrics}; wrote "
          f"{', '.join(files)}")
    for line in run.notes:
        print(line)
    if "sample" in run.extra:
        print("sample:")
        print(run.extra["sample"])
    return 0


# ------------------------------------------------------------------------------------------------
# the other commands
# ------------------------------------------------------------------------------------------------
def _load(path, what):
    from .training import load_model
    model, tok, meta, entry = load_model(path)
    if hasattr(model, "num_labels"):
        raise ValueError(f"{path} holds a sequence classifier (finetune --task classify --full); "
                         f"{what} takes a language model: load the classifier in Python with "
                         f"scratchlm.training.load_model")
    return model, tok, meta, entry


def _load_decoder(path, what):
    """:func:`_load` for the commands that take only the decoders (GPT, Llama)."""
    model, tok, meta, entry = _load(path, what)
    if entry.model_class not in ("GPT", "Llama"):
        raise ValueError(f"{path} holds a {entry.name} model; {what} takes transformer and "
                         f"llama checkpoints")
    return model, tok, meta, entry


def _with_adapter(model, entry, adapter):
    """Apply the LoRA adapter folder ``adapter`` (None: nothing) to a GPT or Llama."""
    if adapter is not None:
        from .finetune import load_adapter
        if entry.model_class not in ("GPT", "Llama"):
            raise ValueError(f"--adapter applies to transformer and llama checkpoints, not "
                             f"{entry.name}")
        load_adapter(model, adapter)


def _cmd_sample(args) -> int:
    model, tok, meta, entry = _load(args.checkpoint, "sample")
    _with_adapter(model, entry, args.adapter)
    print(entry.pipeline_class.sample(entry, model, tok, meta, args))
    return 0


def _classification_data(args) -> dict:
    """``finetune --task classify``'s examples: the user's CSV (``--data``; up to a fifth, at
    most ``--n-test`` rows, held out for accuracy) or the built-in sorted-letters task; 50
    training examples (or a tenth) kept aside for ``--eval-every``."""
    import numpy as np
    from .finetune import classification_examples, read_labelled_csv
    if args.data is None:
        d = classification_examples(n_train=args.n_train + 50, n_test=args.n_test, seed=args.seed)
        train, test, labels = d["train"], d["test"], d["labels"]
    else:
        examples, labels = read_labelled_csv(args.data)
        n_test = min(args.n_test, len(examples) // 5)
        if n_test < 1:
            raise ValueError(f"{args.data} has {len(examples)} rows; finetune holds out a fifth "
                             f"of them for accuracy and needs at least 5")
        order = np.random.default_rng(args.seed).permutation(len(examples))
        test = [examples[i] for i in order[:n_test]]
        train = [examples[i] for i in order[n_test:]]
    n_val = min(50, len(train) // 10)
    return {"train": train[n_val:], "val": train[:n_val], "test": test, "labels": labels}


def _cmd_finetune(args) -> int:
    import resource
    import time
    from .finetune import apply_lora, eos_id_of, save_adapter
    from .training import TrainConfig
    model, tok, meta, entry = _load_decoder(args.checkpoint, "finetune")
    if tok is None:
        raise ValueError(f"{args.checkpoint} carries no tokenizer")
    if args.lora_rank is not None and args.full:
        raise ValueError("--lora-rank and --full exclude each other: choose one")
    classify = args.task == "classify"
    if meta.get("quantized"):
        raise ValueError(f"{args.checkpoint} is quantized: finetune trains float weights (or "
                         f"LoRA on float Linear layers); use its float checkpoint")
    if meta.get("pruned") and (classify or not args.full):
        raise ValueError(f"{args.checkpoint} is pruned: LoRA would fill its pruned entries and "
                         f"the classifier heads start from dense models; use --full on an "
                         f"instruction task, or the dense checkpoint")
    if args.data is not None and not classify:
        raise ValueError(f"--data is the CSV file of --task classify; --task {args.task} is "
                         f"built in")
    if args.from_scratch:                 # the same architecture, untrained: what pretraining buys
        model = entry.build(model.config_dict(), rng=args.seed)
    if classify:                          # the LM's body under a fresh score head
        from . import models
        from .finetune import accuracy as score, fit_text_classifier as fit
        data = _classification_data(args)
        cls = getattr(models, f"{entry.model_class}ForSequenceClassification")
        model = cls.from_causal_lm(model, len(data["labels"]), pad_token_id=eos_id_of(tok),
                                   rng=args.seed)
        metric, fit_extra = "accuracy", {}
    else:
        from .finetune import exact_match as score, fit_sft as fit, instruction_examples
        data = instruction_examples(args.task, n_train=args.n_train, n_val=50,
                                    n_test=args.n_test, seed=args.seed)
        metric, fit_extra = "exact match", {"val_examples": data["val"]}
    before = score(model, tok, data["test"])
    lora = not args.full
    if lora:
        targets = ("q_proj", "v_proj") if entry.model_class == "Llama" else ("c_attn",)
        rank = args.lora_rank or 8
        apply_lora(model, targets, r=rank, alpha=2 * rank, rng=args.seed)
        if classify:                      # the new head is trained in full (PEFT:
            model.score.weight.requires_grad = True                    # modules_to_save)
    out = args.out or os.path.join("runs", f"{entry.name}-{args.task}" + ("" if lora else ".npz"))
    trainable = model.num_parameters(trainable_only=True)
    config = TrainConfig(steps=args.steps, lr=args.lr or (5e-3 if lora else 3e-4), warmup=20,
                         weight_decay=0.0, grad_clip=1.0, eval_interval=max(args.steps // 4, 1),
                         save_interval=args.steps)
    curve = []

    def progress(step, total, info):                  # the metric on the validation examples
        if args.eval_every and data["val"] and (
                step % args.eval_every == 0 or step == total) and not (
                curve and curve[-1][0] == step):
            curve.append((step, score(model, tok, data["val"])))
            print(f"step {step}: validation {metric} {curve[-1][1]:.1%}", flush=True)
    finetuned = {"task": args.task, "full": True} | ({"labels": data["labels"]} if classify
                                                     else {})
    start = time.perf_counter()
    fit(model, data["train"], tok, config, batch_size=args.batch_size, seed=args.seed,
        checkpoint=None if lora else out,
        meta=None if lora else {**{k: v for k, v in meta.items() if k not in ("train", "loop")},
                                "config": model.config_dict(), "finetune": finetuned},
        log=lambda m: None, progress=progress, **fit_extra)
    seconds = time.perf_counter() - start
    after = score(model, tok, data["test"])
    if lora:
        save_adapter(model, out)
        if classify:                  # what PEFT's files do not say: which output is which label
            import json
            from .io import atomic_write
            text = json.dumps({"labels": data["labels"], "num_labels": len(data["labels"]),
                               "pad_token_id": model.pad_token_id}, indent=2).encode("utf-8")
            atomic_write(os.path.join(out, "classifier.json"), lambda f: f.write(text))
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        wrote = f"wrote the adapter {out} ({size / 1024:.1f} KiB)"
    else:
        wrote = f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    what = ("LoRA r=" + str(model_rank(model)) if lora else "full") + (
        ", from scratch" if args.from_scratch else "")
    task = f"classify ({', '.join(data['labels'])})" if classify else args.task
    print(f"finetune {entry.name} on {task} ({what}): "
          f"{trainable:,} of {model.num_parameters():,} parameters trained, {args.steps} steps "
          f"in {seconds:.1f} s, peak memory {peak:.0f} MiB")
    print(f"held-out {metric} ({len(data['test'])} examples): {before:.1%} before, "
          f"{after:.1%} after; {wrote}")
    return 0


def _cmd_quantize(args) -> int:
    import copy
    from .compress import FORMATS, bits_per_weight, quantize
    from .compress.measure import compare_lms, generation_speed, state_bytes
    from .io import save_checkpoint
    from .training.pipelines import _eval_text, need_tokenizer
    model, tok, meta, entry = _load_decoder(args.checkpoint, "quantize")
    if meta.get("quantized"):
        raise ValueError(f"{args.checkpoint} is quantized already "
                         f"({meta['quantized'].get('format')}); quantize its float checkpoint")
    if args.gguf is not None:            # what GGUF cannot hold is refused before any work
        from .compress.gguf import _arch
        _arch(model)
    text, source = _eval_text(meta, args.corpus, tok)
    ids = need_tokenizer(tok, "quantize").encode(text)
    block = model.config.block_size
    tokens = min(ids.size - 1, args.max_tokens)
    print(f"quantize {entry.name} ({model.num_parameters():,} parameters): {source}, "
          f"{tokens:,} tokens in windows of {block}; generation: batch 1, greedy, "
          f"{args.new_tokens} new tokens with the KV cache")
    head = (f"{'format':<7} {'bits/w':>6} {'size':>9} {'perplexity':>10} {'change':>8} "
            f"{'mean KL':>8} {'top-1':>6} {'tok/s':>7} {'speed':>6}")
    print(head)
    base_speed = generation_speed(model, args.new_tokens)
    base_ppl = None
    chosen = None
    for fmt in (FORMATS if args.all else (args.format,)):
        q = copy.deepcopy(model)
        names = quantize(q, fmt, fallback="int8")
        r = compare_lms(model, q, ids, block, max_tokens=args.max_tokens)
        if base_ppl is None:
            base_ppl = r["perplexity_reference"]
            print(f"{'float32':<7} {32:>6} {state_bytes(model) / 2**20:>7.2f}MiB "
                  f"{base_ppl:>10.4f} {'':>8} {'':>8} {'':>6} {base_speed:>7.1f} {1:>5.2f}x")
        speed = generation_speed(q, args.new_tokens)
        print(f"{fmt:<7} {bits_per_weight(fmt):>6} {state_bytes(q) / 2**20:>7.2f}MiB "
              f"{r['perplexity']:>10.4f} {r['change']:>+8.2%} {r['kl']:>8.5f} "
              f"{r['top1']:>6.1%} {speed:>7.1f} {speed / base_speed:>5.2f}x", flush=True)
        if fmt == args.format:
            chosen = (q, names)
    q, names = chosen
    out = args.out or os.path.join("runs", f"{entry.name}-{args.format}.npz")
    save_checkpoint(out, q, **{k: v for k, v in meta.items() if k not in ("train", "loop")},
                    quantized={"format": args.format, "layers": names})
    if args.gguf is not None:
        from .compress.gguf import export_gguf
        export_gguf(q, args.gguf, tokenizer=tok)
        note = " (int8 has no llama.cpp type: its layers are written dequantized, as F32)" \
            if "int8" in names.values() else ""
        print(f"wrote {args.gguf} ({os.path.getsize(args.gguf) / 2**20:.2f} MiB, GGUF v3){note}")
    fell = sum(f != args.format for f in names.values())
    print(f"wrote {out} ({os.path.getsize(out) / 2**20:.2f} MiB; {len(names) - fell} Linear "
          f"layers in {args.format}" + (f", {fell} in int8 (input size not a multiple of 32)"
                                        if fell else "") +
          ", the embedding and norms in float); sample and eval read it")
    return 0


def _cmd_prune(args) -> int:
    import copy
    import numpy as np
    from .compress import prune
    from .compress.measure import perplexity
    from .compress.prune import prune_structured, structure_of
    from .io import save_checkpoint
    from .training import TrainConfig
    from .training.fit import fit_lm
    from .training.pipelines import _text_split, need_tokenizer, run_options
    model, tok, meta, entry = _load_decoder(args.checkpoint, "prune")
    if meta.get("quantized") or meta.get("pruned") or meta.get("structure"):
        raise ValueError(f"{args.checkpoint} is {'quantized' if meta.get('quantized') else 'pruned'}"
                         f" already; prune its dense checkpoint")
    if args.method == "2:4" and args.sparsity != 0.5:
        raise ValueError(f"--method 2:4 prunes exactly half: --sparsity must be 0.5, got "
                         f"{args.sparsity}")
    opts = run_options(meta, "prune")
    train_text, val_text, _ = _text_split(opts)
    tok = need_tokenizer(tok, "prune")
    train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
    block = model.config.block_size
    if min(train_ids.size, val_ids.size) <= block:
        raise ValueError(f"prune needs training and validation splits longer than the model's "
                         f"block_size {block}; they have {train_ids.size} and {val_ids.size} "
                         f"tokens")
    rng = np.random.default_rng(args.seed)                   # Wanda's calibration windows
    starts = rng.integers(0, train_ids.size - block, args.calibration)
    calibration = [np.stack([train_ids[s:s + block] for s in starts[i:i + 8]])
                   for i in range(0, len(starts), 8)]

    def pruned(method, sparsity):
        m = copy.deepcopy(model)
        if sparsity > 0 and method in ("heads", "neurons"):     # structured: matrices shrink
            prune_structured(m, **{method: sparsity}, calibration=calibration)
        elif sparsity > 0:
            prune(m, sparsity, criterion="magnitude" if method == "magnitude" else "wanda",
                  pattern="2:4" if method == "2:4" else "unstructured", calibration=calibration)
        return m

    def ppl(m):
        return perplexity(m, val_ids, block, max_tokens=args.max_tokens)
    dense = ppl(model)
    print(f"prune {entry.name} ({model.num_parameters():,} parameters), every untied Linear but "
          f"lm_head; validation perplexity over {min(val_ids.size - 1, args.max_tokens):,} "
          f"tokens; Wanda calibrated on {args.calibration} windows of {block} training tokens")
    print(f"dense: {dense:.4f}")
    if args.sweep:
        curves = {}
        for method in ("magnitude", "wanda", "neurons", "heads"):
            label = method if method in ("magnitude", "wanda") else f"{method} (structured)"
            curves[label] = [(s, dense if s == 0 else ppl(pruned(method, s)))
                             for s in np.round(np.arange(0, 0.91, 0.1), 2)]
            print(f"{method:>9}: " + "  ".join(f"{s:.0%} {p:.3f}" for s, p in curves[label]),
                  flush=True)
        curves["2:4 (wanda)"] = [(0.5, ppl(pruned("2:4", 0.5)))]
        print(f"{'2:4':>9}: 50% {curves['2:4 (wanda)'][0][1]:.3f}")
        from .training.plots import plot_pruning_sweep
        png = args.png or os.path.join("runs", f"{entry.name}-prune-sweep.png")
        if not plot_pruning_sweep(curves, dense, png, f"{entry.name}: perplexity against "
                                                     f"sparsity, before fine-tuning"):
            raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
        print(f"wrote {png}")
        return 0
    m = pruned(args.method, args.sparsity)
    before = ppl(m)
    what = (f"{args.sparsity:.0%} of the {args.method}" + (" (key/value groups)"
                                                          if entry.model_class == "Llama" and
                                                          args.method == "heads" else "")
            if args.method in ("heads", "neurons") else f"{args.method} at {args.sparsity:.0%}")
    print(f"{what}: {before:.4f} ({before / dense - 1:+.2%}); {m.num_parameters():,} of "
          f"{model.num_parameters():,} parameters left")
    out = args.out or os.path.join("runs", f"{entry.name}-{args.method.replace(':', '')}-"
                                           f"{round(args.sparsity * 100)}.npz")
    names = sorted(n for n, _ in m.named_modules() if type(_).__name__ == "MaskedLinear")
    extra = {k: v for k, v in meta.items() if k not in ("train", "loop")} | {
        "prune": {"method": args.method, "sparsity": args.sparsity}} | (
        {"structure": structure_of(m)} if args.method in ("heads", "neurons")
        else {"pruned": names})
    if args.finetune_steps:
        config = TrainConfig(steps=args.finetune_steps, optimizer="adamw", lr=args.lr,
                             warmup=min(20, args.finetune_steps // 4), weight_decay=0.0,
                             grad_clip=1.0, eval_interval=args.finetune_steps)
        fit_lm(m, train_ids, val_ids, config, batch_size=opts["batch_size"], block_size=block,
               seed=args.seed, checkpoint=out, meta=extra, log=lambda message: None)
        after = ppl(m)
        base = copy.deepcopy(model)          # the fair baseline: the dense model trained as long
        fit_lm(base, train_ids, val_ids, config, batch_size=opts["batch_size"],
               block_size=block, seed=args.seed, log=lambda message: None)
        dense_after = ppl(base)
        print(f"after {args.finetune_steps} fine-tuning steps (AdamW, lr {args.lr:g}): "
              f"{after:.4f} ({after / dense - 1:+.2%} against the dense checkpoint); the dense "
              f"model trained the same steps: {dense_after:.4f}, so pruning costs "
              f"{after / dense_after - 1:+.2%}")
    else:
        save_checkpoint(out, m, **extra)
    print(f"wrote {out}; sample and eval read it")
    return 0


def _cmd_precision(args) -> int:
    import numpy as np
    from .compress.precision import RANGES, activation_gradients, gradient_ranges
    from .training.pipelines import _text_split, need_tokenizer, run_options
    from .training.plots import plot_gradient_ranges
    model, tok, meta, entry = _load_decoder(args.checkpoint, "precision")
    if meta.get("quantized"):
        raise ValueError(f"{args.checkpoint} is quantized; precision studies a float model")
    if model.dtype != np.float32:
        model.float()
    train_text, _, _ = _text_split(run_options(meta, "precision"))
    ids = need_tokenizer(tok, "precision").encode(train_text)
    T = model.config.block_size
    if ids.size <= T + 1:
        raise ValueError(f"the training split has {ids.size} tokens, too few for windows of {T}")
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.batches):
        s = rng.integers(0, ids.size - T - 1, args.batch_size)
        batches.append((np.stack([ids[i:i + T] for i in s]),
                        np.stack([ids[i + 1:i + T + 1] for i in s])))
    grads = activation_gradients(model, batches)
    r = gradient_ranges(grads, args.scale)
    print(f"precision {entry.name}: {r['entries']:,} nonzero activation-gradient entries (the "
          f"gradients reaching every Linear from above), {args.batches} batches of "
          f"{args.batch_size} x {T}, float32; log2 |g| from {np.log2(np.abs(grads[grads != 0])).min():.1f} "
          f"to {np.log2(np.abs(grads).max()):.1f}")
    print(f"{'':<24}{'flushed to 0':>14}{'subnormal':>12}{'overflow':>10}")
    for key, label in (("fp16", "fp16, no scaling"),
                       ("fp16_scaled", f"fp16, loss scale 2^{np.log2(args.scale):g}"),
                       ("bf16", "bf16")):
        print(f"{label:<24}{r[key]['flushed']:>14.4%}{r[key]['subnormal']:>12.4%}"
              f"{r[key]['overflow']:>10.4%}")
    out = args.out or os.path.join("runs", f"{entry.name}-precision.png")
    if not plot_gradient_ranges(grads, args.scale, RANGES, out,
                                f"{entry.name}: activation gradients against float16's range"):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    print(f"wrote {out}")
    return 0


def model_rank(model) -> int:
    from .finetune import lora_layers
    return next(iter(lora_layers(model).values())).r


def _cmd_eval(args) -> int:
    model, tok, meta, entry = _load(args.checkpoint, "eval")
    files = {k: getattr(args, k) for k in ("word_pairs", "analogies")
             if getattr(args, k) is not None}
    if files and entry.pipeline != "WordVectorPipeline":
        raise ValueError(f"--word-pairs and --analogies score word vectors (word2vec, glove); "
                         f"{args.checkpoint} holds a {entry.name} model")
    print(entry.pipeline_class.evaluate(entry, model, tok, meta, corpus=args.corpus, **files))
    return 0


def _cmd_attention(args) -> int:
    from .training.evaluate import attention_maps
    from .training.pipelines import need_tokenizer
    from .training.plots import plot_attention
    model, tok, _, entry = _load_decoder(args.checkpoint, "attention")
    maps, labels = attention_maps(model, need_tokenizer(tok, "attention"), args.prompt)
    if not plot_attention(maps, labels, args.out, title=f"attention for {args.prompt!r}"):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    print(f"wrote {args.out}: {maps.shape[0]} layers x {maps.shape[1]} heads over "
          f"{maps.shape[2]} tokens")
    return 0


def _cmd_inspect(args) -> int:
    import errno
    from .inspector import inspect_prompt, model_kind
    from .inspector.server import InspectorServer, export_page
    from .training.pipelines import need_tokenizer
    model, tok, _, entry = _load(args.checkpoint, "inspect")
    model_kind(model)                        # the supported kinds, named, for any other model
    tok = need_tokenizer(tok, "inspect")
    _with_adapter(model, entry, args.adapter)   # (the views then use W + (alpha/r) B A)
    if args.export is not None:
        if args.prompt is None:
            raise ValueError("--export needs --prompt: the text the exported page shows")
        result = inspect_prompt(model, tok, args.prompt)
        export_page(result, args.export)
        print(f"wrote {args.export}: {entry.name} on {len(result['tokens'])} tokens of "
              f"{args.prompt!r} (open it in any browser; it loads nothing from anywhere)")
        return 0
    if args.prompt is not None:
        raise ValueError("--prompt goes with --export; the served page has its own prompt box")
    try:
        server = InspectorServer(model, tok, args.checkpoint, args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"port {args.port} on {args.host} is in use (another inspector, "
                             f"or another program): choose another with --port") from None
        raise ValueError(f"cannot serve on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    if args.host in ("127.0.0.1", "localhost", "::1"):
        where = "only this machine can open it"
    elif args.host in ("0.0.0.0", "::"):
        where = "bound to every interface: any machine that reaches this one can open it"
    else:
        where = f"bound to {args.host}: machines that reach that address can open it"
    print(f"scratchlm inspect: serving {args.checkpoint} ({entry.name}) at {server.url} "
          f"({where}); Ctrl+C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("scratchlm inspect: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def _cmd_filters(args) -> int:
    from .training.pipelines import digits, run_options
    from .training.plots import plot_filters_and_maps
    model, _, meta, entry = _load(args.checkpoint, "filters")
    if entry.model_class != "CNN":
        raise ValueError(f"{args.checkpoint} holds a {entry.name} model, not a cnn")
    _, test = digits(run_options(meta, "filters"))
    if not args.index < len(test.labels):
        raise ValueError(f"--index must be an integer in [0, {len(test.labels) - 1}], got "
                         f"{args.index}")
    image = test.images[args.index]
    if not plot_filters_and_maps(model, image, args.out):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    pred = int(model.predict(image[None])[0])
    print(f"wrote {args.out}: test image {args.index} (label {int(test.labels[args.index])}, "
          f"predicted {pred})")
    return 0


def _cmd_gradnorms(args) -> int:
    from .training.evaluate import gradient_norms_over_time
    from .training.plots import plot_gradient_norms
    norms = gradient_norms_over_time(length=args.length, hidden_size=args.hidden_size,
                                     corpus=args.corpus, seed=args.seed)
    for cell, v in norms.items():
        print(f"{cell:>4}: |dL/dh_t| at t = T-1: {v[-1]:.3g}, at t = 0: {v[0]:.3g} "
              f"(ratio {v[0] / v[-1]:.2e})")
    if not plot_gradient_norms(norms, args.out):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    print(f"wrote {args.out}")
    return 0


def _cmd_gradcheck(args) -> int:
    from .kernels import use_backend
    from .selfcheck import run_table, select
    names = select(args.only)
    with use_backend(args.backend):
        failed = run_table(names, emit=lambda line: print(line, flush=True), seed=args.seed,
                           rtol=args.rtol, max_entries=args.max_entries)
    print(f"\n{len(names) - len(failed)} passed, {len(failed)} failed "
          f"(backend {args.backend}, rtol {args.rtol:g})")
    for report in failed:
        print("\n" + str(report))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------
CHECKPOINT = opt("checkpoint", str, None, "a checkpoint written by train (or save_checkpoint)")
SEED = opt("seed", int, None, "seeds the sampling", low=0)


def build_parser():
    """-> ``(parser, subparsers)``: the parser, and every (sub)command's parser by its words
    (``("train", "lstm")``, ``("sample",)``), so usage can be shown for the one a user typed."""
    parser = _Parser(prog="scratchlm", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}

    t = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="train a registered model; 'train MODEL --help' lists its "
                                   "options and defaults")
    parsers[("train",)] = t
    models = t.add_subparsers(dest="model", required=True, metavar="MODEL")
    for entry in registry.REGISTRY.values():
        m = models.add_parser(entry.name, help=entry.help, allow_abbrev=False, description=(
            f"{entry.help}. Batches: {entry.batch_source or 'one counting pass'}. "
            f"eval reports {entry.evaluates}; sample {entry.samples or 'does not apply'}."))
        for o in entry.options:
            _add(m, o)
        m.add_argument("--out", help=f"checkpoint path (default {entry.out})")
        if entry.batch_source:
            m.add_argument("--resume", action="store_true",
                           help="continue the run saved at --out with the options it started "
                                "with (--steps or --time may extend it)")
        else:
            m.set_defaults(resume=False)
        m.set_defaults(func=_cmd_train)
        parsers[("train", entry.name)] = m

    s = sub.add_parser("sample", help="generate from a checkpoint")
    for o in (CHECKPOINT, opt("length", int, 300, "tokens to generate", low=0),
              opt("temperature", float, 1.0, "sampling temperature", low=0, open_low=True),
              positive("top_k", None, "sample among the k most likely tokens"),
              opt("top_p", float, None, "nucleus sampling (neural models)", low=0, high=1,
                  open_low=True),
              SEED, opt("prompt", str, "", "text the sample continues (seq2seq: the source)"),
              positive("beam", None, "seq2seq: beam search with this beam size"),
              opt("out", str, None, "vae: where the PNG of samples goes (default "
                  "runs/vae-samples.png)"),
              opt("adapter", str, None, "a LoRA adapter folder (finetune's, or PEFT's) to apply "
                  "first")):
        _add(s, o)
    s.add_argument("--greedy", action="store_true", help="argmax decoding (neural models)")
    s.set_defaults(func=_cmd_sample)

    ft = sub.add_parser("finetune", help="fine-tune a transformer or llama checkpoint on an "
                        "instruction task or as a text classifier (LoRA by default, or --full)")
    for o in (CHECKPOINT,
              opt("task", str, "reverse", "a built-in instruction task, or classify (a "
                  "classification head: --data, or the built-in sorted-letters task)",
                  choices=("reverse", "sort", "dates", "classify")),
              opt("data", str, None, "classify: a UTF-8 CSV file with a header naming 'text' "
                  "and 'label' columns"),
              positive("lora_rank", None, "LoRA rank (default 8; on q_proj and v_proj, or GPT's "
                       "c_attn)"),
              positive("steps", 300, "training steps"),
              positive("batch_size", 16, "examples per step"),
              positive("lr", None, "learning rate (default 5e-3 with LoRA, 3e-4 full)",
                       kind=float),
              positive("n_train", 2000, "training examples (built-in tasks)"),
              positive("n_test", 200, "held-out examples for exact match or accuracy (--data: "
                       "at most a fifth of the rows)"),
              opt("seed", int, 0, "seeds the task, the adapters and the batches", low=0),
              opt("out", str, None, "the adapter folder (LoRA; default runs/NAME-TASK) or the "
                  "checkpoint (--full; default runs/NAME-TASK.npz)")):
        _add(ft, o)
    ft.add_argument("--full", action="store_true", help="train every parameter instead of LoRA")
    ft.add_argument("--from-scratch", action="store_true", help="re-initialise the model first "
                    "(the same architecture, untrained): the baseline that shows what "
                    "pretraining buys")
    _add(ft, opt("eval_every", int, 0, "print the validation exact match (classify: accuracy) "
                 "every N steps (0: never; its time is in the reported seconds)", low=0))
    ft.set_defaults(func=_cmd_finetune)

    qz = sub.add_parser("quantize", help="quantize a transformer or llama checkpoint's Linear "
                        "weights (int8, q8_0, q4_0) and report what it costs")
    for o in (CHECKPOINT,
              opt("format", str, "q8_0", "the format written", choices=("int8", "q8_0", "q4_0")),
              opt("out", str, None, "the quantized checkpoint (default runs/NAME-FORMAT.npz)"),
              opt("gguf", str, None, "also write the quantized model as a GGUF v3 file "
                  "(llama.cpp's format) here"),
              opt("corpus", str, None, "score this text file instead of the checkpoint's "
                  "validation split"),
              positive("max_tokens", 50000, "score at most this many tokens"),
              positive("new_tokens", 128, "tokens generated for the speed column")):
        _add(qz, o)
    qz.add_argument("--all", action="store_true", help="report every format (the checkpoint "
                    "written is still --format's)")
    qz.set_defaults(func=_cmd_quantize)

    pr = sub.add_parser("prune", help="prune a transformer or llama checkpoint's Linear weights "
                        "(magnitude, Wanda, 2:4) and report the perplexity it costs")
    for o in (CHECKPOINT,
              opt("method", str, "wanda", "which weights go: single weights (magnitude, wanda, "
                  "2:4), or whole attention heads or MLP neurons (heads, neurons: the matrices "
                  "shrink)", choices=("magnitude", "wanda", "2:4", "heads", "neurons")),
              opt("sparsity", float, 0.5, "the fraction of each Linear's weights (or of each "
                  "block's heads or neurons) pruned", low=0, high=1, open_high=True),
              opt("finetune_steps", int, 0, "then fine-tune this many steps on the training "
                  "split (the masks keep it pruned)", low=0),
              positive("lr", 3e-4, "fine-tuning learning rate", kind=float),
              positive("calibration", 32, "training windows Wanda measures input norms on"),
              positive("max_tokens", 50000, "validation tokens scored"),
              opt("seed", int, 0, "seeds the calibration windows and fine-tuning", low=0),
              opt("out", str, None, "the pruned checkpoint (default runs/NAME-METHOD-PCT.npz)"),
              opt("png", str, None, "--sweep: the chart (default runs/NAME-prune-sweep.png)")):
        _add(pr, o)
    pr.add_argument("--sweep", action="store_true", help="perplexity at 0-90%% sparsity for "
                    "magnitude, Wanda, neurons and heads (and 2:4), before fine-tuning, as a PNG")
    pr.set_defaults(func=_cmd_prune)

    pc = sub.add_parser("precision", help="where a transformer's or llama's activation "
                        "gradients fall against float16's and bfloat16's ranges (PNG)")
    for o in (CHECKPOINT,
              positive("batches", 4, "training batches to take the gradients of"),
              positive("batch_size", 8, "windows per batch"),
              positive("scale", 2.0 ** 16, "the loss scale to show (GradScaler starts at 2^16)",
                       kind=float),
              opt("seed", int, 0, "seeds the windows", low=0),
              opt("out", str, None, "the PNG (default runs/NAME-precision.png)")):
        _add(pc, o)
    pc.set_defaults(func=_cmd_precision)

    e = sub.add_parser("eval", help="what a checkpoint scores on held-out data")
    _add(e, CHECKPOINT)
    _add(e, opt("corpus", str, None, "a UTF-8 text file to score (language models; default: "
                "the validation split of the corpus the model was trained on)"))
    _add(e, opt("word_pairs", str, None, "word vectors: a file of word pairs with human "
                "similarity scores (WordSim-353 or SimLex-999 format): Spearman's rho"))
    _add(e, opt("analogies", str, None, "word vectors: an analogy file (word2vec's "
                "questions-words.txt format): accuracy per section"))
    e.set_defaults(func=_cmd_eval)

    a = sub.add_parser("attention", help="draw a transformer's attention maps for a prompt")
    _add(a, CHECKPOINT)
    _add(a, opt("prompt", str, None, "the text whose attention is drawn"))
    _add(a, opt("out", str, os.path.join("runs", "attention.png"), "the PNG"))
    a.set_defaults(func=_cmd_attention)

    ins = sub.add_parser("inspect", help="serve a page that shows inside a GPT, Llama or RNN "
                         "checkpoint for any prompt (or --export one prompt's page)")
    _add(ins, CHECKPOINT)
    _add(ins, opt("port", int, 8000, "the port to serve on (0: any free port)", low=0,
                  high=65535))
    _add(ins, opt("host", str, "127.0.0.1", "the address to bind (127.0.0.1: this machine "
                  "only)"))
    _add(ins, opt("export", str, None, "write a self-contained HTML page for --prompt instead "
                  "of serving"))
    _add(ins, opt("prompt", str, None, "the prompt of the exported page"))
    _add(ins, opt("adapter", str, None, "a LoRA adapter folder (finetune's, or PEFT's) to "
                  "apply first"))
    ins.set_defaults(func=_cmd_inspect)

    n = sub.add_parser("gradnorms", help="plot |dL/dh_t| over time for RNN vs LSTM vs GRU (PNG)")
    for o in (positive("length", 100, "sequence length T"),
              positive("hidden_size", 128, "hidden state size"),
              opt("corpus", str, None, "a UTF-8 text file (default: the built-in corpus)"),
              opt("seed", int, 0, "seeds the initialisation", low=0),
              opt("out", str, os.path.join("runs", "grad-norms.png"), "the PNG")):
        _add(n, o)
    n.set_defaults(func=_cmd_gradnorms)

    f = sub.add_parser("filters", help="draw a CNN's first-layer filters and the feature maps "
                       "of one test image (PNG)")
    for o in (CHECKPOINT, opt("index", int, 0, "which test image", low=0),
              opt("out", str, os.path.join("runs", "filters.png"), "the PNG")):
        _add(f, o)
    f.set_defaults(func=_cmd_filters)

    g = sub.add_parser("gradcheck", help="gradient-check every layer and loss (float64)")
    g.add_argument("--only", nargs="+", metavar="NAME",
                   help="check only the cases with this exact name, or whose name contains it")
    for o in (opt("backend", str, "numba", "kernel route to check", choices=("numba", "numpy")),
              opt("rtol", float, 1e-6, "max relative error allowed", low=0, open_low=True),
              positive("max_entries", 256, "entries checked per tensor; larger tensors are "
                       "sampled"),
              opt("seed", int, 0, "seeds the inputs", low=0)):
        _add(g, o)
    g.add_argument("--quiet", action="store_true", help="(kept for compatibility; rows print "
                   "as each case finishes)")
    g.set_defaults(func=_cmd_gradcheck)

    parsers.update({("sample",): s, ("finetune",): ft, ("quantize",): qz, ("prune",): pr,
                    ("precision",): pc, ("eval",): e,
                    ("attention",): a, ("gradnorms",): n, ("filters",): f, ("gradcheck",): g})
    for p in (s, e, a, f, ft, qz, pr, pc):
        for action in p._actions:
            if action.dest == "checkpoint" or (p is a and action.dest == "prompt"):
                action.required = True
    return parser, parsers


def _unknown(parsers, argv, extras) -> int:
    """Print the usage of the (sub)command the user typed and the closest valid option for each
    unknown one; exit code 2."""
    words = [w for w in argv if not w.startswith("-")]
    key = max((k for k in parsers if tuple(words[:len(k)]) == k), key=len, default=None)
    p = parsers.get(key)
    prog = p.prog if p is not None else "scratchlm"
    if p is not None:
        p.print_usage(sys.stderr)
        valid = [s for a in p._actions for s in a.option_strings]
    else:
        valid = []
    for word in (x for x in extras if x.startswith("-")):
        close = difflib.get_close_matches(word.split("=")[0], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"{prog}: error: unrecognized option {word}{hint}", file=sys.stderr)
    if not any(x.startswith("-") for x in extras):
        print(f"{prog}: error: unrecognized arguments: {' '.join(extras)}", file=sys.stderr)
    return 2


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, parsers = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit as exc:                      # --help (0) or a bad value (2, one line)
        return exc.code
    if extras:
        return _unknown(parsers, argv, extras)
    args.argv = argv
    warnings.showwarning = _show_warning
    where = " ".join(w for w in (args.command, getattr(args, "model", None)) if w)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"scratchlm {where}: error{_rank_of()}: {exc}", file=sys.stderr)
        return _stop_job(2)
    except FloatingPointError as exc:
        print(f"scratchlm {where}: error{_rank_of()}: {exc}", file=sys.stderr)
        return _stop_job(1)
    except KeyboardInterrupt:
        print(f"scratchlm {where}: interrupted (a run resumes from its last checkpoint with "
              f"--resume)", file=sys.stderr)
        return _stop_job(130)


def _rank_of() -> str:
    """' (rank r of N)' inside a distributed run, else ''."""
    from .distributed import mpi
    w = mpi._WORLD
    return f" (rank {w.rank} of {w.size})" if w is not None and w.size > 1 else ""


def _stop_job(code: int) -> int:
    """An error on one rank of a distributed run stops every rank (MPI_Abort): the others would
    otherwise wait for it forever inside a collective. The last checkpoint, written whole by
    rank 0 with an atomic rename, stays intact."""
    from .distributed import mpi
    w = mpi._WORLD
    if w is not None and w.size > 1:
        sys.stderr.flush()
        w.Abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
