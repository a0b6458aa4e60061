"""``python -m scratchlm`` / ``scratchlm``: the command line.

Subcommands:
    train MODEL   train a model on the built-in corpus (or --corpus) and save a checkpoint
                  (models: markov -- an n-gram LM; transformer -- a GPT; rnn, lstm, gru --
                  a recurrent LM trained with truncated BPTT; seq2seq -- an RNN encoder-decoder
                  on a synthetic translation task)
    sample        generate text from a checkpoint
    eval          perplexity of a text file (default: the model's own validation split)
    attention     draw a GPT's attention maps for a prompt as a PNG
    gradnorms     plot |dL/dh_t| over time steps for RNN vs LSTM vs GRU as a PNG
    filters       draw a CNN's learned filters and one image's feature maps as a PNG
    gradcheck     check every layer and loss against finite differences and print a table
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np


def _cmd_gradcheck(args) -> int:
    from tqdm import tqdm

    from .kernels import use_backend
    from .selfcheck import CASES, run_case

    names = list(CASES)
    if args.only:
        unknown = [n for n in args.only if n not in CASES]
        if unknown:
            print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
            return 2
        names = args.only
    rows, failed = [], []
    with use_backend(args.backend):
        for name in tqdm(names, desc="gradcheck", unit="op", file=sys.stderr,
                         disable=args.quiet or None):
            report = run_case(name, seed=args.seed, rtol=args.rtol, max_entries=args.max_entries)
            props = "all ok" if all(p.ok for p in report.properties) else \
                "; ".join(p.name for p in report.properties if not p.ok)
            rows.append((name, "float64", f"{report.max_rel:.1e}", props, "ok" if report.ok else "FAIL"))
            if not report.ok:
                failed.append(report)
    header = ("op", "dtype", "max rel err", "properties (accumulate, float32, deterministic)", "ok")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed "
          f"(backend {args.backend}, rtol {args.rtol:g})")
    for report in failed:
        print("\n" + str(report))
    return 1 if failed else 0


def _progress(desc, total):
    """A tqdm bar advanced once per named stage: returns (update(stage), close())."""
    from tqdm import tqdm
    bar = tqdm(desc=desc, total=total, unit="stage", file=sys.stderr)

    def update(stage):
        bar.set_postfix_str(stage)
        bar.update(1)
    return update, bar.close


def _cmd_train(args) -> int:
    from .train import ngram_sample_text, train_ngram
    if args.model in ("transformer", "rnn", "lstm", "gru", "convlm"):
        return _train_neural(args)
    if args.model == "seq2seq":
        return _train_seq2seq(args)
    if args.model == "cnn":
        return _train_cnn(args)
    if args.model in ("vae", "docvae"):
        return _train_vae(args)
    if args.model == "markov":
        out = args.out or os.path.join("runs", f"markov-{args.order}.npz")
        stages = args.order + 3          # tokenize, count each order, smooth, evaluate
        update, close = _progress(f"train markov (order {args.order}, {args.smoothing})", stages)
        try:
            r = train_ngram(order=args.order, smoothing=args.smoothing, corpus=args.corpus,
                            tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                            val_fraction=args.val_fraction, out=out, progress=update, k=args.k)
        finally:
            close()
        sizes = ", ".join(f"{k}-grams {lv['keys'].size:,}" for k, lv in enumerate(r.model._levels, start=1))
        print(f"trained on {r.train_tokens:,} tokens ({args.tokenizer}) in {r.seconds:.2f} s: {sizes}")
        print(f"validation: perplexity {r.val_perplexity:.3f}, {r.val_bits_per_token:.3f} bits/token, "
              f"{r.val_bits_per_char:.3f} bits/char over {r.val_tokens:,} tokens")
        print(f"saved {out}")
        print("sample:")
        print(ngram_sample_text(r.model, r.tokenizer, length=args.sample_length, seed=args.seed))
        return 0
    raise AssertionError(args.model)


def _given(value, default):
    """The option's value when the user gave one (even 0, which the model then refuses with a
    clear error), else this command's default."""
    return default if value is None else value


def _train_neural(args) -> int:
    from tqdm import tqdm

    from .train import LoopConfig, plot_history, sample_text, train_convlm, train_rnn, train_transformer
    gpt = args.model == "transformer"
    out = args.out or os.path.join("runs", "gpt.npz" if gpt else f"{args.model}.npz")
    block = args.block_size or {"transformer": 128, "convlm": 256}.get(args.model, 64)
    loop = LoopConfig(steps=args.steps, time_limit=args.time, batch_size=_given(args.batch_size, 16),
                      lr=_given(args.lr, 1e-3),
                      eval_interval=args.eval_interval, seed=args.seed, block_size=block)
    bar = tqdm(desc=f"train {args.model}", unit="step", file=sys.stderr)

    def progress(step, total, postfix):
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = step
        bar.set_postfix(postfix, refresh=False)
        bar.update(0)

    def log(msg):
        bar.write(msg, file=sys.stderr)
    common = dict(corpus=args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                  dropout=args.dropout, loop=loop, out=out, resume=args.resume, progress=progress,
                  log=log)
    try:
        if gpt:
            model, tok, hist = train_transformer(n_layer=args.n_layer, n_head=args.n_head,
                                                 n_embd=args.n_embd, block_size=block, **common)
        elif args.model == "convlm":
            model, tok, hist = train_convlm(channels=args.channels, kernel_size=args.kernel_size,
                                            dilations=args.dilations, gated=args.gated, **common)
        else:
            model, tok, hist = train_rnn(args.model, embed_dim=_given(args.embed_dim, 128),
                                         hidden_size=_given(args.hidden_size, 256), num_layers=args.num_layers,
                                         tie_weights=args.tie_weights, **common)
    finally:
        bar.close()
    val = hist["val_loss"][-1]
    print(f"trained {hist['step'][-1]} steps; validation: {val / math.log(2):.3f} bits/token "
          f"(perplexity {math.exp(val):.3f})")
    print(f"saved {out}")
    png = os.path.splitext(out)[0] + "-loss.png"
    name = {"transformer": "GPT", "convlm": "ConvLM"}.get(args.model, args.model.upper())
    if plot_history(hist, png, title=f"{name} on {args.corpus or 'the built-in corpus'}"):
        print(f"loss curve: {png}")
    else:
        print("loss curve: skipped (install the plot extra: pip install -e '.[plot]')")
    print("sample:")
    print(sample_text(model, tok, length=args.sample_length, seed=args.seed, top_k=args.top_k))
    return 0


def _train_seq2seq(args) -> int:
    from tqdm import tqdm

    from .models import exact_match, translate
    from .train import train_seq2seq
    out = args.out or os.path.join("runs", "seq2seq.npz")
    bar = tqdm(desc="train seq2seq", total=_given(args.steps, 800), unit="step", file=sys.stderr)

    def callback(step, loss):
        bar.n = step + 1
        bar.set_postfix({"loss": f"{loss:.3f}"}, refresh=False)
        bar.update(0)
    try:
        model, task, _ = train_seq2seq(
            task=args.task, cell=args.cell, attention=args.attention, embed_dim=_given(args.embed_dim, 64),
            hidden_size=_given(args.hidden_size, 128), num_layers=args.num_layers, dropout=args.dropout,
            steps=_given(args.steps, 800), batch_size=_given(args.batch_size, 64), lr=_given(args.lr, 3e-3), seed=args.seed,
            out=out, resume=args.resume, callback=callback, log=lambda m: bar.write(m, file=sys.stderr))
    finally:
        bar.close()
    greedy, beam = exact_match(model, task.test), exact_match(model, task.test, "beam")
    print(f"held-out exact match on {len(task.test)} pairs: greedy {greedy:.3f}, beam-4 {beam:.3f}")
    print(f"saved {out}")
    examples = [s for s, _ in task.test[:3]]
    for src, hyp in zip(examples, translate(model, examples)):
        print(f"  {src!r} -> {hyp!r}")
    return 0


def _train_cnn(args) -> int:
    from tqdm import tqdm

    from .models import classifier_accuracy
    from .train import train_cnn
    out = args.out or os.path.join("runs", "cnn.npz")
    steps = _given(args.steps, 1000)
    bar = tqdm(desc="train cnn", total=steps, unit="step", file=sys.stderr)

    def callback(step, loss, *rest):
        bar.n = step + 1
        bar.set_postfix({"loss": f"{loss:.3f}"}, refresh=False)
        bar.update(0)
    try:
        model, (train, test), hist = train_cnn(
            source=args.images, channels=tuple(args.conv_channels), steps=steps,
            batch_size=_given(args.batch_size, 64), lr=args.lr, optimizer=args.optimizer, seed=args.seed,
            out=out, resume=args.resume, callback=callback, log=lambda m: bar.write(m, file=sys.stderr))
    finally:
        bar.close()
    print(f"held-out accuracy on {len(test.labels):,} images: "
          f"{classifier_accuracy(model, test.images, test.labels):.4f}")
    print(f"saved {out}")
    return 0


def _train_vae(args) -> int:
    from tqdm import tqdm

    from .train import plot_vae, train_vae
    kind = "image" if args.model == "vae" else "document"
    steps = _given(args.steps, 2000)
    bar = tqdm(desc=f"train {args.model}", total=steps, unit="step", file=sys.stderr)

    def callback(step, loss):
        bar.n = step + 1
        bar.set_postfix({"-elbo": f"{loss:.2f}"}, refresh=False)
        bar.update(0)
    try:
        model, (train, test, labels), hist = train_vae(
            kind, latent_dim=args.latent_dim, hidden_dim=_given(args.hidden_size, (400 if kind == "image" else 256)),
            steps=steps, batch_size=_given(args.batch_size, 128), lr=_given(args.lr, 1e-3),
            kl_warmup_steps=args.kl_warmup, free_bits=args.free_bits, seed=args.seed, out=args.out,
            resume=args.resume, callback=callback, log=lambda m: bar.write(m, file=sys.stderr))
    finally:
        bar.close()
    out = args.out or os.path.join("runs", "vae.npz" if kind == "image" else "docvae.npz")
    print(f"held-out ELBO per example: {hist['test_elbo'][-1]:.3f} nats")
    if kind == "image":
        k = 50
        print(f"held-out importance-weighted bound (k={k}, 500 images): "
              f"{model.iwae_bound(test[:500], k, rng=np.random.default_rng(0)):.3f} nats")
        png = os.path.splitext(out)[0] + ".png"
        if plot_vae(model, test, png, labels=labels):
            print(f"samples and reconstructions{' and the latent scatter' if model.latent_dim == 2 else ''}: {png}")
    else:
        print(f"held-out perplexity (ELBO bound): {hist['test_perplexity'][-1]:.1f}")
    print(f"saved {out}")
    return 0


def _cmd_filters(args) -> int:
    from .data import load_digits_dataset
    from .models import CNN
    from .train import load_model, plot_filters_and_maps
    model, _, meta = load_model(args.checkpoint)
    if not isinstance(model, CNN):
        raise ValueError(f"{args.checkpoint} is not a CNN checkpoint")
    _, test = load_digits_dataset(**meta["data"])
    if not 0 <= args.index < len(test.labels):
        raise ValueError(f"--index must be in [0, {len(test.labels)}), got {args.index}")
    image = test.images[args.index]
    if not plot_filters_and_maps(model, image, args.out):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    pred = int(model.predict(image[None])[0])
    print(f"wrote {args.out}: test image {args.index} (label {int(test.labels[args.index])}, "
          f"predicted {pred})")
    return 0


def _cmd_gradnorms(args) -> int:
    from .train import gradient_norms_over_time, plot_gradient_norms
    norms = gradient_norms_over_time(length=args.length, hidden_size=args.hidden_size,
                                     corpus=args.corpus, seed=args.seed)
    for cell, v in norms.items():
        print(f"{cell:>4}: |dL/dh_t| at t = T-1: {v[-1]:.3g}, at t = 0: {v[0]:.3g} "
              f"(ratio {v[0] / v[-1]:.2e})")
    if not plot_gradient_norms(norms, args.out):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    print(f"wrote {args.out}")
    return 0


def _cmd_sample(args) -> int:
    from .models import GPT, RNNLM, ConvLM, NGramLM, Seq2Seq, translate
    from .train import load_model, ngram_sample_text, sample_text
    model, tok, _ = load_model(args.checkpoint)
    if isinstance(model, Seq2Seq):                 # a translation model: decode the prompt
        if not args.prompt:
            raise ValueError("a seq2seq checkpoint translates --prompt TEXT; none was given")
        print(translate(model, [args.prompt], decode="beam" if args.beam else "greedy",
                        beam_size=args.beam or 4)[0])
        return 0
    if not isinstance(model, (GPT, RNNLM, ConvLM, NGramLM)):
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, which does not "
                         f"generate text (try eval, or filters for a CNN)")
    if isinstance(model, (GPT, RNNLM, ConvLM)):
        print(sample_text(model, tok, prompt=args.prompt, length=args.length,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              greedy=args.greedy, seed=args.seed))
        return 0
    if args.top_p is not None or args.greedy:
        raise ValueError("--top-p and --greedy apply to neural (GPT, RNN) checkpoints")
    print(ngram_sample_text(model, tok, length=args.length, temperature=args.temperature,
                            top_k=args.top_k, seed=args.seed, prompt=args.prompt))
    return 0


def _cmd_attention(args) -> int:
    from .models import GPT
    from .train import attention_maps, load_model, plot_attention
    model, tok, _ = load_model(args.checkpoint)
    if not isinstance(model, GPT):
        raise ValueError(f"{args.checkpoint} is not a transformer checkpoint")
    maps, labels = attention_maps(model, tok, args.prompt)
    if not plot_attention(maps, labels, args.out, title=f"attention for {args.prompt!r}"):
        raise ValueError("drawing needs matplotlib: pip install -e '.[plot]'")
    print(f"wrote {args.out}: {maps.shape[0]} layers x {maps.shape[1]} heads over {maps.shape[2]} tokens")
    return 0


def _cmd_eval(args) -> int:
    from .data import split_corpus
    from .models import GPT, RNNLM, ConvLM, Seq2Seq, exact_match
    from .train import evaluate_ngram, evaluate_text, load_model, read_corpus, seq2seq_task
    model, tok, meta = load_model(args.checkpoint)
    from .models import CNN, classifier_accuracy
    if isinstance(model, CNN):                     # accuracy on the held-out images
        from .data import load_digits_dataset
        _, test = load_digits_dataset(**meta["data"])
        print(f"{meta['data']['source']} digits, {len(test.labels):,} held-out images: accuracy "
              f"{classifier_accuracy(model, test.images, test.labels):.4f}")
        return 0
    if isinstance(model, Seq2Seq):                 # exact match on the task's held-out pairs
        task = seq2seq_task(**meta["task"])
        print(f"{meta['task']['kind']} task, {len(task.test)} held-out pairs: exact match greedy "
              f"{exact_match(model, task.test):.3f}, beam-4 {exact_match(model, task.test, 'beam'):.3f}")
        return 0
    if args.corpus is None:                      # the validation split of the training corpus
        source = meta.get("corpus_path")
        if tok is None or "val_fraction" not in meta:
            raise ValueError("this checkpoint records no training corpus: pass --corpus FILE")
        text = split_corpus(read_corpus(source)[0], meta["val_fraction"])[1]
        name = f"validation split of {meta.get('corpus', source)}"
    else:
        text, name = read_corpus(args.corpus)
    neural = isinstance(model, (GPT, RNNLM, ConvLM))
    r = evaluate_text(model, tok, text) if neural else evaluate_ngram(model, tok, text)
    per_char = "" if r["bits_per_char"] is None else f", {r['bits_per_char']:.3f} bits/char"
    print(f"{name}: perplexity {r['perplexity']:.3f}, {r['bits_per_token']:.3f} bits/token"
          f"{per_char} over {r['tokens']:,} tokens")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and save a checkpoint")
    t.add_argument("model", choices=("markov", "transformer", "rnn", "lstm", "gru", "seq2seq",
                                     "convlm", "cnn", "vae", "docvae"),
                   help="markov: an n-gram language model; transformer: a GPT; rnn, lstm, gru: "
                        "a recurrent language model; seq2seq: an RNN encoder-decoder; convlm: a "
                        "causal dilated convolutional language model; cnn: an image classifier "
                        "on the built-in digits; vae: a VAE on the binarized digits; docvae: a "
                        "bag-of-words document VAE on the corpus")
    t.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    t.add_argument("--smoothing", default="kneser_ney",
                   choices=("kneser_ney", "witten_bell", "add_k", "mle"))
    t.add_argument("--k", type=float, default=1.0, help="pseudo-count for add_k (default 1)")
    t.add_argument("--corpus", help="a UTF-8 text file (default: the built-in corpus)")
    t.add_argument("--tokenizer", default="char", choices=("char", "byte", "word", "bpe"))
    t.add_argument("--vocab-size", type=int, default=1000, help="BPE vocabulary size (default 1000)")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--out", help="checkpoint path (default runs/markov-ORDER.npz, runs/gpt.npz, "
                   "runs/lstm.npz, ...)")
    t.add_argument("--sample-length", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    g = t.add_argument_group("neural models (transformer, rnn, lstm, gru)")
    g.add_argument("--steps", type=int, default=None, help="training steps (reproducible)")
    g.add_argument("--time", type=float, default=120.0,
                   help="seconds to train when --steps is not given (default 120)")
    g.add_argument("--batch-size", type=int, default=None, help="default 16 (seq2seq: 64)")
    g.add_argument("--block-size", type=int, default=None,
                   help="tokens per sequence: the GPT's context (default 128), the truncated-BPTT "
                        "length of a recurrent model (default 64), the ConvLM's window (default 256)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--lr", type=float, default=None, help="peak learning rate, default 1e-3 (seq2seq: 3e-3)")
    g.add_argument("--eval-interval", type=int, default=100)
    g.add_argument("--top-k", type=int, default=None, help="top-k for the printed sample")
    g.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    g = t.add_argument_group("transformer")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g = t.add_argument_group("rnn, lstm, gru")
    g.add_argument("--embed-dim", type=int, default=None, help="default 128 (seq2seq: 64)")
    g.add_argument("--hidden-size", type=int, default=None, help="default 256 (seq2seq: 128)")
    g.add_argument("--num-layers", type=int, default=1)
    g.add_argument("--tie-weights", action="store_true",
                   help="decoder weight = embedding (needs --hidden-size == --embed-dim)")
    g = t.add_argument_group("convlm")
    g.add_argument("--channels", type=int, default=128)
    g.add_argument("--kernel-size", type=int, default=5)
    g.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4, 8])
    g.add_argument("--gated", action="store_true", help="WaveNet's tanh x sigmoid gated blocks")
    g = t.add_argument_group("cnn (also --steps (default 1000), --batch-size, --lr, --resume)")
    g.add_argument("--images", default="glyphs", choices=("glyphs", "sklearn"),
                   help="built-in rendered digits (default) or scikit-learn's 8x8 digits")
    g.add_argument("--conv-channels", type=int, nargs="+", default=[16, 32])
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    g = t.add_argument_group("vae, docvae (also --hidden-size (400; docvae 256), --steps (2000), "
                             "--batch-size (128), --lr (1e-3), --resume)")
    g.add_argument("--latent-dim", type=int, default=20)
    g.add_argument("--kl-warmup", type=int, default=0, help="steps of linear KL annealing")
    g.add_argument("--free-bits", type=float, default=0.0, help="KL floor per latent dimension (nats)")
    g = t.add_argument_group("seq2seq (also --embed-dim, --hidden-size, --num-layers, --dropout, "
                             "--steps (default 800), --batch-size, --lr)")
    g.add_argument("--task", default="reverse", choices=("reverse", "sort", "dates"))
    g.add_argument("--cell", default="lstm", choices=("lstm", "gru", "rnn"))
    g.add_argument("--attention", default="dot", choices=("dot", "additive", "none"))
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="generate from a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--length", type=int, default=300, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling (transformer)")
    s.add_argument("--greedy", action="store_true", help="argmax decoding (transformer)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--prompt", default="", help="text the sample continues (seq2seq: the source)")
    s.add_argument("--beam", type=int, default=None, help="seq2seq: beam search with this beam size")
    s.set_defaults(func=_cmd_sample)

    a = sub.add_parser("attention", help="draw a transformer's attention maps for a prompt")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--prompt", required=True)
    a.add_argument("--out", default="attention.png")
    a.set_defaults(func=_cmd_attention)

    n = sub.add_parser("gradnorms", help="plot |dL/dh_t| over time for RNN vs LSTM vs GRU (PNG)")
    n.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    n.add_argument("--hidden-size", type=int, default=128)
    n.add_argument("--corpus", help="a UTF-8 text file (default: the built-in corpus)")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", default="grad-norms.png")
    n.set_defaults(func=_cmd_gradnorms)

    f = sub.add_parser("filters", help="draw a CNN's first-layer filters and the feature maps of "
                       "one test image (PNG)")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--index", type=int, default=0, help="which test image (default 0)")
    f.add_argument("--out", default="filters.png")
    f.set_defaults(func=_cmd_filters)

    e = sub.add_parser("eval", help="perplexity of a text file under a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--corpus", help="a UTF-8 text file (default: the validation split of the "
                   "corpus the model was trained on)")
    e.set_defaults(func=_cmd_eval)
    g = sub.add_parser("gradcheck", help="gradient-check every layer and loss (float64)")
    g.add_argument("--only", nargs="+", metavar="OP", help="check only these cases")
    g.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="kernel route to check (default numba)")
    g.add_argument("--rtol", type=float, default=1e-6, help="max relative error allowed (default 1e-6)")
    g.add_argument("--max-entries", type=int, default=256,
                   help="entries checked per tensor; larger tensors are sampled (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_gradcheck)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"scratchlm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
