"""The model registry: one table, read by the command line (``scratchlm train <name>``, its
options and their defaults), :func:`scratchlm.training.load_model`, ``sample``, ``eval``, the
self-check and the tests.

An entry names the model's class and config, its command-line options with their defaults and
allowed ranges, the pipeline that turns data into a trained model (:mod:`scratchlm.training.
pipelines`: the batch source it draws from and what its ``eval`` reports and its ``sample``
does), the checkpoint path it writes by default, and a tiny set of options for tests.

Adding a model: one model file in ``scratchlm/models/``, one entry below, and its tests (see
``docs/adding-a-model.md``).
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass, field

__all__ = ["Option", "ModelEntry", "REGISTRY", "get", "names", "entry_for_checkpoint"]


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One command-line option ``--name`` (``name`` with ``_`` as ``-``).

    ``kind``: ``int``, ``float``, ``str``, ``bool`` (a flag) or ``"ints"`` (one or more ints).
    ``low``/``high`` bound a number (``open_low``/``open_high``: the bound itself is excluded);
    ``choices`` lists a string's values; ``default`` None means "not given" (the pipeline then
    decides, e.g. ``--steps`` vs ``--time``).
    """
    name: str
    kind: object
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        what = "an integer" if self.kind in (int, "ints") else "a number"
        if self.low is not None and self.high is not None:
            lo, hi = ("(" if self.open_low else "["), (")" if self.open_high else "]")
            return f"{what} in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {_num(self.high)}"
        return what

    def check(self, value):
        """``value`` if it is allowed, else ``ValueError`` naming the option, the allowed range
        and the value."""
        if self.kind is bool and value is not None and not isinstance(value, bool):
            raise ValueError(f"{self.flag} is a flag: True or False, got {value!r}")
        if value is None or self.kind in (bool, str) and not self.choices:
            return value
        values = value if self.kind == "ints" else [value]
        for v in values:
            bad = (self.choices is not None and v not in self.choices) or \
                (isinstance(v, float) and not math.isfinite(v)) or \
                (self.low is not None and (v <= self.low if self.open_low else v < self.low)) or \
                (self.high is not None and (v >= self.high if self.open_high else v > self.high))
            if bad:
                raise ValueError(f"{self.flag} must be {self.describe_range()}, got {_num(v)}")
        return value


def _num(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def opt(name, kind, default, help, **kw) -> Option:
    return Option(name, kind, default, help, **kw)


def positive(name, default, help, kind=int):
    return opt(name, kind, default, help, low=1 if kind is int else 0, open_low=kind is not int)


# the options every text model shares
CORPUS = (
    opt("corpus", str, None, "a UTF-8 text file (default: the built-in corpus)"),
    opt("tokenizer", str, "char", "how text becomes tokens", choices=("char", "byte", "word", "bpe")),
    opt("vocab_size", int, 1000, "BPE vocabulary size", low=257),
    opt("val_fraction", float, 0.1, "the corpus's tail held out for validation", low=0, high=1,
        open_low=True, open_high=True),
    opt("seed", int, 0, "seeds the initialisation and the batches", low=0),
)


def loop_options(*, steps=None, time=120.0, batch_size=16, lr=1e-3, eval_interval=100):
    """The training-loop options with one model family's defaults."""
    return (
        positive("steps", steps, "training steps (a reproducible run; default: train for --time)"
                 if steps is None else "training steps"),
        *((positive("time", time, "seconds to train when --steps is not given (a deadline "
                    "the learning-rate schedule ends at)", kind=float),) if time else ()),
        positive("batch_size", batch_size, "examples per batch"),
        positive("lr", lr, "peak learning rate", kind=float),
        positive("eval_interval", eval_interval, "evaluate and checkpoint every N steps"),
        *DISTRIBUTED,
    )


#: how to run, not what to train: taken from the command line on --resume (a run continues on
#: any number of ranks), never from the checkpoint
DISTRIBUTED = (
    opt("distributed", bool, False, "data parallel over the MPI job: start with 'mpiexec -n N "
        "python -m scratchlm train ...' (needs pip install -e '.[distributed]')"),
    opt("zero", int, 0, "1: ZeRO stage 1, the optimizer's state sharded over the ranks (with "
        "--distributed)", choices=(0, 1)),
)
RUNTIME_OPTIONS = tuple(o.name for o in DISTRIBUTED)


SAVE = positive("save_interval", 100, "checkpoint every N steps")

#: the language models' loop: the optimizer, clipping, and federated averaging over MPI ranks
LM_LOOP = (
    opt("optimizer", str, "adamw", "adamw (weight decay 0.1 on matrices) or sgd (plain)",
        choices=("adamw", "sgd")),
    opt("grad_clip", float, 1.0, "clip the gradients' joint norm at this (0: no clipping)",
        low=0),
    opt("federated", str, None, "fedavg: every MPI rank is a client training on its own shard "
        "of the corpus; the weights are averaged every --local-steps steps (start with mpiexec "
        "-n N)", choices=("fedavg",)),
    positive("local_steps", 1, "FedAvg: each client's steps between averagings"),
    opt("split", str, "iid", "FedAvg: how the corpus is dealt to the clients (contiguous: each "
        "a stretch of it, non-IID)", choices=("iid", "contiguous")),
    opt("dp_clip", float, None, "DP-SGD: clip each example's gradient to this norm (Poisson "
        "batches of --batch-size on average; replaces --grad-clip)", low=0, open_low=True),
    opt("dp_noise", float, 0.0, "DP-SGD: the noise multiplier sigma (noise N(0, (sigma "
        "dp_clip)^2) on the clipped sum)", low=0),
    opt("dp_delta", float, 1e-5, "DP-SGD: the delta epsilon is reported for", low=0, high=1,
        open_low=True, open_high=True),
    opt("dp_seed", int, None, "DP-SGD: seed the noise (a reproducible run, whose noise anyone "
        "with the seed can subtract: experiments only); default: fresh entropy", low=0),
)

LM_SAMPLE = (
    opt("sample_length", int, 300, "tokens in the sample printed at the end", low=0),
    positive("top_k", None, "top-k for the printed sample"),
    opt("dropout", float, 0.0, "dropout probability", low=0, high=1, open_high=True),
)


def _models():
    return importlib.import_module("scratchlm.models")


# ------------------------------------------------------------------------------------------------
# entries
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """One trainable model.

    ``model_class`` names a class in :mod:`scratchlm.models` with ``from_config(config, dtype,
    rng)`` and ``config_dict()``; ``make_config(options, data)`` builds its config from the
    run's options and what the data decides (``data``: ``vocab_size`` for text, ``in_channels``
    and ``image_size`` for images, ``input_dim`` for a VAE); ``fixed`` are config fields the entry
    pins (an LSTM's ``cell``); ``attributes`` are options set on the built model for training
    (``model.recompute = options["recompute"]``): run-time choices that are not architecture, so
    they stay out of the config a checkpoint stores and live in the run's options, which
    ``--resume`` reuses. ``pipeline`` names the class in
    :mod:`scratchlm.training.pipelines` that trains, evaluates and samples the model's family;
    ``batch_source`` names what the one loop draws from; ``evaluates`` and ``samples`` say what
    ``eval`` and ``sample`` do (``samples`` None: the reason is ``no_sample``)."""
    name: str
    help: str
    model_class: str
    make_config: object
    pipeline: str
    batch_source: str | None
    options: tuple
    out: str
    evaluates: str
    samples: str | None
    no_sample: str = ""
    fixed: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)
    attributes: tuple = ()

    def option(self, name) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def resolve(self, given=None) -> dict:
        """All options: the defaults updated with ``given``, each checked (``ValueError`` names
        the option); an unknown name is an error that suggests the closest."""
        given = dict(given or {})
        known = {o.name for o in self.options}
        for k in given:
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{self.name} has no option {k!r}{hint}; its options: "
                                 f"{', '.join(sorted(known))}")
        values = self.defaults() | given
        for o in self.options:
            o.check(values[o.name])
        return values

    @property
    def cls(self):
        return getattr(importlib.import_module("scratchlm.models"), self.model_class)

    @property
    def pipeline_class(self):
        return getattr(importlib.import_module("scratchlm.training.pipelines"), self.pipeline)

    def build(self, config, dtype=None, rng=0, options=None):
        """The model from its config (a config object, or the dict a checkpoint stores); with a
        run's ``options``, its :attr:`attributes` set from them (as ``train`` does)."""
        import numpy as np
        model = self.cls.from_config(config, dtype=np.float32 if dtype is None else dtype, rng=rng)
        for name in self.attributes if options is not None else ():
            setattr(model, name, options[name])
        return model


#: mixed-precision training for the decoders (their products are Linear and attention)
PRECISION = opt("precision", str, "fp32", "fp16 (with loss scaling) or bf16: Linear and attention "
                "products in 16 bits, float32 master weights and optimizer",
                choices=("fp32", "fp16", "bf16"))


_TRANSFORMER = ModelEntry(
    name="transformer", help="a GPT (the GPT-2 architecture): the main job",
    model_class="GPT", pipeline="LMPipeline",
    make_config=lambda o, data: _models().GPTConfig(
        vocab_size=data["vocab_size"], block_size=o["block_size"], n_layer=o["n_layer"],
        n_head=o["n_head"], n_embd=o["n_embd"], dropout=o["dropout"]),
    batch_source="RandomWindows", out="runs/gpt.npz",
    evaluates="perplexity, bits per token and per character of the validation split",
    samples="continues --prompt",
    options=CORPUS + loop_options() + LM_LOOP + LM_SAMPLE + (
        positive("block_size", 128, "the context: tokens per sequence"),
        positive("n_layer", 4, "transformer blocks"),
        positive("n_head", 4, "attention heads (must divide --n-embd)"),
        positive("n_embd", 128, "embedding width"),
        opt("recompute", bool, False, "activation recomputation: keep only each block's input "
            "and run its forward again in the backward (less memory, about one extra forward "
            "per step; the same gradients bit for bit)"),
        PRECISION,
    ),
    attributes=("recompute",),
    tiny=dict(steps=6, batch_size=4, block_size=16, n_layer=1, n_head=2, n_embd=16,
              eval_interval=3),
)


_LLAMA = ModelEntry(
    name="llama", help="a Llama-family decoder (RMSNorm, rotary embeddings, SwiGLU, grouped-query "
                       "attention)",
    model_class="Llama", pipeline="LMPipeline",
    make_config=lambda o, data: _models().LlamaConfig(
        vocab_size=data["vocab_size"], hidden_size=o["hidden_size"],
        intermediate_size=o["intermediate_size"], num_hidden_layers=o["num_hidden_layers"],
        num_attention_heads=o["num_attention_heads"],
        num_key_value_heads=o["num_key_value_heads"], max_position_embeddings=o["block_size"],
        rope_theta=o["rope_theta"], tie_word_embeddings=o["tie_word_embeddings"],
        qk_norm=o["qk_norm"]),
    batch_source="RandomWindows", out="runs/llama.npz",
    evaluates="perplexity, bits per token and per character of the validation split",
    samples="continues --prompt",
    options=CORPUS + loop_options() + LM_LOOP + LM_SAMPLE[:2] + (
        positive("block_size", 128, "the context: tokens per sequence (max_position_embeddings)"),
        positive("hidden_size", 128, "embedding width"),
        positive("intermediate_size", 344, "the SwiGLU MLP's width"),
        positive("num_hidden_layers", 4, "decoder layers"),
        positive("num_attention_heads", 4, "query heads (must divide --hidden-size)"),
        positive("num_key_value_heads", 2, "key/value heads (must divide --num-attention-heads; "
                 "1: multi-query)"),
        positive("rope_theta", 10000.0, "the rotary embeddings' base", kind=float),
        opt("tie_word_embeddings", bool, False, "lm_head shares the token embedding"),
        opt("qk_norm", bool, False, "RMSNorm on each head's q and k (Qwen3)"),
        PRECISION,
    ),
    tiny=dict(steps=6, batch_size=4, block_size=16, hidden_size=16, intermediate_size=24,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, eval_interval=3),
)


def _recurrent(cell, what):
    return ModelEntry(
        name=cell, help=f"a {what} language model trained with truncated BPTT",
        model_class="RNNLM", pipeline="LMPipeline",
        make_config=lambda o, data: _models().RNNLMConfig(
            data["vocab_size"], o["embed_dim"], o["hidden_size"], cell, o["num_layers"],
            o["dropout"], o["tie_weights"]),
        batch_source="StreamChunks", out=f"runs/{cell}.npz", fixed={"cell": cell},
        evaluates="perplexity, bits per token and per character of the validation split, the "
                  "state carried through the whole text",
        samples="continues --prompt",
        options=CORPUS + loop_options() + LM_LOOP + LM_SAMPLE + (
            positive("block_size", 64, "the truncated-BPTT length: steps per chunk"),
            positive("embed_dim", 128, "embedding width"),
            positive("hidden_size", 256, "hidden state size"),
            positive("num_layers", 1, "stacked recurrent layers"),
            opt("tie_weights", bool, False, "decoder weight = embedding (needs --hidden-size "
                "== --embed-dim)"),
        ),
        tiny=dict(steps=6, batch_size=4, block_size=8, embed_dim=8, hidden_size=8, eval_interval=3),
    )


_CONVLM = ModelEntry(
    name="convlm", help="a causal dilated convolutional language model",
    model_class="ConvLM", pipeline="LMPipeline",
    make_config=lambda o, data: _models().ConvLMConfig(
        data["vocab_size"], o["channels"], o["kernel_size"], list(o["dilations"]), o["gated"]),
    batch_source="RandomWindows", out="runs/convlm.npz",
    evaluates="perplexity, bits per token and per character of the validation split",
    samples="continues --prompt",
    options=CORPUS + loop_options() + LM_LOOP + LM_SAMPLE[:2] + (
        positive("block_size", 256, "tokens per window"),
        positive("channels", 128, "channels of every block"),
        positive("kernel_size", 5, "taps of every causal convolution"),
        opt("dilations", "ints", [1, 2, 4, 8], "one dilation per block", low=1),
        opt("gated", bool, False, "WaveNet's tanh x sigmoid gated blocks"),
    ),
    tiny=dict(steps=6, batch_size=4, block_size=16, channels=8, kernel_size=3, dilations=[1, 2],
              eval_interval=3),
)

_MARKOV = ModelEntry(
    name="markov", help="an n-gram language model (Kneser-Ney by default): the baseline",
    model_class="NGramLM", make_config=None, pipeline="NGramPipeline", batch_source=None,
    out="runs/markov-{order}.npz",
    evaluates="perplexity, bits per token and per character of the validation split",
    samples="continues --prompt",
    options=CORPUS + (
        opt("order", int, 5, "n-gram order", low=1, high=10),
        opt("smoothing", str, "kneser_ney", "smoothing",
            choices=("kneser_ney", "witten_bell", "add_k", "mle")),
        opt("k", float, 1.0, "pseudo-count for add_k", low=0, open_low=True),
        opt("sample_length", int, 300, "tokens in the sample printed at the end", low=0),
    ),
    tiny=dict(order=2),
)

_SEQ2SEQ = ModelEntry(
    name="seq2seq", help="an RNN encoder-decoder on a built-in translation task",
    model_class="Seq2Seq", pipeline="Seq2SeqPipeline",
    make_config=lambda o, data: dict(
        src_vocab_size=data["vocab_size"], tgt_vocab_size=data["vocab_size"],
        embed_dim=o["embed_dim"], hidden_size=o["hidden_size"], cell=o["cell"],
        num_layers=o["num_layers"], attention=None if o["attention"] == "none" else o["attention"],
        dropout=o["dropout"]),
    batch_source="ShuffledEpochs", out="runs/seq2seq.npz",
    evaluates="held-out exact match, greedy and beam-4",
    samples="translates --prompt",
    options=(
        opt("task", str, "reverse", "the built-in task", choices=("reverse", "sort", "dates")),
        opt("cell", str, "lstm", "recurrent cell", choices=("lstm", "gru", "rnn")),
        opt("attention", str, "dot", "attention", choices=("dot", "additive", "none")),
        positive("embed_dim", 64, "embedding width"),
        positive("hidden_size", 128, "hidden state size"),
        positive("num_layers", 1, "stacked recurrent layers"),
        opt("dropout", float, 0.0, "dropout probability", low=0, high=1, open_high=True),
        positive("steps", 800, "training steps"),
        positive("batch_size", 64, "pairs per batch"),
        positive("lr", 3e-3, "peak learning rate", kind=float),
        SAVE,
        *DISTRIBUTED,
        opt("seed", int, 0, "seeds the task, the initialisation and the batches", low=0),
    ),
    tiny=dict(steps=6, batch_size=8, embed_dim=8, hidden_size=8, save_interval=3),
)

_CNN = ModelEntry(
    name="cnn", help="an image classifier on the built-in digits",
    model_class="CNN", pipeline="ImagePipeline",
    make_config=lambda o, data: _models().CNNConfig(
        in_channels=data["in_channels"], num_classes=10, channels=tuple(o["conv_channels"]),
        kernel_size=3, image_size=data["image_size"]),
    batch_source="ShuffledEpochs", out="runs/cnn.npz",
    evaluates="held-out accuracy",
    samples=None, no_sample="a CNN classifies images; it does not generate: try eval, or filters",
    options=(
        opt("images", str, "glyphs", "built-in rendered digits, or scikit-learn's 8x8 digits",
            choices=("glyphs", "sklearn")),
        opt("conv_channels", "ints", [16, 32], "channels of each conv stage", low=1),
        opt("optimizer", str, "sgd", "optimizer", choices=("sgd", "adam")),
        positive("steps", 1000, "training steps"),
        positive("batch_size", 64, "images per batch"),
        positive("lr", None, "learning rate (default 0.05 for sgd, 1e-3 for adam)", kind=float),
        positive("n_train", None, "training images (default 20000 glyphs, or 1497 of "
                 "scikit-learn's 1797)"),
        positive("n_test", None, "held-out images (default 2000 glyphs, or 300 of scikit-learn's)"),
        SAVE,
        *DISTRIBUTED,
        opt("seed", int, 0, "seeds the images, the initialisation and the batches", low=0),
    ),
    tiny=dict(steps=6, batch_size=8, conv_channels=[4], n_train=64, n_test=16, save_interval=3),
)

def _vae_options(hidden, examples):
    """The options both VAEs share, with their hidden width and what an example is."""
    return (
        positive("latent_dim", 20, "latent dimensions"),
        positive("hidden_size", hidden, "hidden layer width"),
        opt("kl_warmup", int, 0, "steps of linear KL annealing", low=0),
        opt("free_bits", float, 0.0, "KL floor per latent dimension (nats)", low=0),
        positive("steps", 2000, "training steps"),
        positive("batch_size", 128, f"{examples} per batch"),
        positive("lr", 1e-3, "learning rate", kind=float),
    )


_VAE = ModelEntry(
    name="vae", help="a VAE on the binarized digit images",
    model_class="VAE", pipeline="VAEPipeline",
    make_config=lambda o, data: _models().VAEConfig(
        input_dim=data["input_dim"], hidden_dim=o["hidden_size"], latent_dim=o["latent_dim"],
        free_bits=o["free_bits"]),
    batch_source="ShuffledEpochs", out="runs/vae.npz",
    evaluates="the held-out ELBO and the importance-weighted bound (k = 50)",
    samples="writes a PNG of images drawn from the prior",
    options=_vae_options(400, "images") + (
        positive("n_train", 20000, "training images"),
        positive("n_test", 2000, "held-out images"),
        SAVE,
        *DISTRIBUTED,
        opt("seed", int, 0, "seeds the images, the initialisation and the batches", low=0),
    ),
    tiny=dict(steps=6, batch_size=8, latent_dim=2, hidden_size=8, n_train=64, n_test=16,
              save_interval=3),
)

_DOCVAE = ModelEntry(
    name="docvae", help="a bag-of-words document VAE (NVDM) on the corpus's paragraphs",
    model_class="DocumentVAE", pipeline="VAEPipeline",
    make_config=lambda o, data: _models().DocumentVAEConfig(
        vocab_size=data["input_dim"], hidden_dim=o["hidden_size"], latent_dim=o["latent_dim"],
        free_bits=o["free_bits"]),
    batch_source="ShuffledEpochs", out="runs/docvae.npz",
    evaluates="the held-out ELBO and perplexity",
    samples="prints the top words of documents drawn from the prior",
    options=_vae_options(256, "documents") + (
        opt("vocab_size", int, 2000, "words kept (the most frequent)", low=2),
        SAVE,
        *DISTRIBUTED,
        opt("seed", int, 0, "seeds the split, the initialisation and the batches", low=0),
    ),
    tiny=dict(steps=6, batch_size=8, latent_dim=2, hidden_size=8, vocab_size=50, save_interval=3),
)

#: what word vectors train on: a file, or a built-in corpus (stdlib: the larger one)
WORD_CORPUS = (
    opt("corpus", str, None, "a UTF-8 text file (default: the built-in corpus --builtin names)"),
    opt("builtin", str, "stdlib", "the built-in corpus: stdlib (the standard library's "
        "docstrings and comments) or pydoc (its help topics)", choices=("stdlib", "pydoc")),
)


def _vector_options(dim, window, min_count, epochs, lr, seed_help):
    """The options word2vec and GloVe share."""
    return WORD_CORPUS + (
        positive("dim", dim, "vector dimensions"),
        positive("window", window, "context words on each side (the largest reach)"),
        positive("min_count", min_count, "words seen fewer times are dropped"),
        positive("epochs", epochs, "passes over the corpus"),
        positive("lr", lr, "the initial learning rate", kind=float),
        positive("workers", None, "threads (default: the kernels' thread count, "
                 "SCRATCHLM_NUM_THREADS); 1 makes a run exactly reproducible"),
        opt("neighbours", str, None, "words (space-separated) whose nearest neighbours are "
            "printed and drawn at the end (default: a few frequent words)"),
        opt("seed", int, 1, seed_help, low=0),
    )


_WORD2VEC = ModelEntry(
    name="word2vec", help="word vectors: skip-gram or CBOW with negative sampling (word2vec)",
    model_class="Word2Vec", pipeline="WordVectorPipeline",
    make_config=lambda o, data: _models().Word2VecConfig(
        vector_size=o["dim"], window=o["window"], min_count=o["min_count"], sg=o["sg"],
        hs=o["hs"], negative=o["negative"], sample=o["sample"], alpha=o["lr"],
        min_alpha=min(o["min_lr"], o["lr"]), epochs=o["epochs"], seed=o["seed"]),
    batch_source=None, out="runs/word2vec.npz",
    evaluates="Spearman's rho on --word-pairs and analogy accuracy on --analogies",
    samples="lists the nearest neighbours of each word of --prompt",
    options=_vector_options(100, 5, 5, 5, 0.025, "seeds the vectors, the subsampling, the "
                            "windows and the noise words") + (
        opt("sg", bool, False, "skip-gram: each context word predicts the centre word"),
        opt("cbow", bool, False, "CBOW, the default: the context's mean predicts the centre "
            "word"),
        opt("negative", int, 5, "noise words per prediction (0: none; needs --hs)", low=0),
        opt("hs", bool, False, "hierarchical softmax (a Huffman tree over the counts)"),
        opt("sample", float, 1e-3, "subsampling threshold for frequent words (0: off)", low=0),
        opt("min_lr", float, 1e-4, "the learning rate falls linearly to this", low=0),
    ),
    tiny=dict(builtin="pydoc", dim=8, epochs=1, min_count=20, workers=1),
)

_GLOVE = ModelEntry(
    name="glove", help="word vectors fitted to log co-occurrence counts (GloVe)",
    model_class="GloVe", pipeline="WordVectorPipeline",
    make_config=lambda o, data: _models().GloVeConfig(
        vector_size=o["dim"], window=o["window"], min_count=o["min_count"],
        symmetric=not o["asymmetric"], x_max=o["x_max"], alpha=o["alpha"], eta=o["lr"],
        epochs=o["epochs"], seed=o["seed"]),
    batch_source=None, out="runs/glove.npz",
    evaluates="Spearman's rho on --word-pairs and analogy accuracy on --analogies",
    samples="lists the nearest neighbours of each word of --prompt",
    options=_vector_options(100, 10, 5, 25, 0.05, "seeds the vectors and the order of the "
                            "co-occurrences") + (
        positive("x_max", 100.0, "f(x) = min(1, (x / x_max)^alpha) caps the weight of frequent "
                 "pairs", kind=float),
        positive("alpha", 0.75, "the exponent of f", kind=float),
        opt("asymmetric", bool, False, "count only the words before each word (glove.c's "
            "-symmetric 0)"),
    ),
    tiny=dict(builtin="pydoc", dim=8, epochs=1, min_count=20, workers=1),
)

REGISTRY = {e.name: e for e in (
    _MARKOV, _TRANSFORMER, _LLAMA, _recurrent("rnn", "tanh-RNN"), _recurrent("lstm", "LSTM"),
    _recurrent("gru", "GRU"), _CONVLM, _SEQ2SEQ, _CNN, _VAE, _DOCVAE, _WORD2VEC, _GLOVE)}


def names() -> list:
    return list(REGISTRY)


def get(name) -> ModelEntry:
    """The entry called ``name``; ``ValueError`` (with the closest name) if there is none."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"no model called {name!r}{hint}; models: {', '.join(REGISTRY)}")


def entry_for_checkpoint(doc, path="checkpoint") -> ModelEntry:
    """The entry a checkpoint's JSON document belongs to: its ``meta["model"]`` (written by the
    training loop), else the first entry of its module class (a model saved by hand)."""
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    name = meta.get("model")
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    module = doc.get("module")
    for entry in REGISTRY.values():
        if entry.model_class == module:
            if entry.fixed and isinstance(meta.get("config"), dict):
                if any(meta["config"].get(k) != v for k, v in entry.fixed.items()):
                    continue
            return entry
    supported = sorted({e.model_class for e in REGISTRY.values()})
    raise ValueError(f"{path} holds a {module!r}, which no registered model is (supported: "
                     f"{', '.join(supported)})")
