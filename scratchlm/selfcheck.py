"""The package checking itself: one gradient-check case per layer and loss.

``python -m scratchlm gradcheck`` runs every case in :data:`CASES` through
:func:`scratchlm.gradcheck.check_module`. Each case builds a float64 module and inputs from a
seeded generator; inputs of non-smooth ops are kept away from their kinks. Every public layer of
``scratchlm.nn`` (and, as they land, every model) has a case here: a test enforces it.
"""

from __future__ import annotations

import numpy as np

from . import nn
from .gradcheck import check_module
from .models.cnn import CNN
from .models.convlm import ConvLM
from .models.gpt import GPT, GPTConfig
from .models.llama import Llama, LlamaConfig
from .models.nvdm import DocumentVAE
from .models.rnnlm import RNNLM
from .models.seq2seq_rnn import Seq2Seq
from .models.seq2seq_transformer import Seq2SeqTransformer
from .models.vae import VAE
from .models.glove import GloVe, GloVeConfig
from .models.word2vec import Word2Vec, Word2VecConfig
from .data.sentences import Vocab

F64 = np.float64


def _normal(rng, *shape, min_abs=0.0):
    z = rng.standard_normal(shape)
    if min_abs:
        z = np.where(z >= 0, np.maximum(z, min_abs), np.minimum(z, -min_abs))
    return z


def _distinct(rng, *shape):
    """Values 0.1 apart in random order: no max-pool window has a tie or a near tie."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape)


def _targets(rng, n, classes, ignore=False):
    t = rng.integers(0, classes, n)
    if ignore:
        t[::3] = -100
    return t


#: nine words with counts: the word-vector cases' vocabulary
_VOCAB = Vocab([f"w{i}" for i in range(9)], [40, 30, 20, 12, 9, 7, 5, 3, 2])

# name -> builder(rng) -> (module, inputs)
CASES = {
    "Linear": lambda r: (nn.Linear(5, 4, dtype=F64, rng=r), (_normal(r, 3, 2, 5),)),
    "Linear(bias=False)": lambda r: (nn.Linear(5, 3, bias=False, dtype=F64, rng=r), (_normal(r, 4, 5),)),
    "Embedding": lambda r: (nn.Embedding(11, 6, padding_idx=0, dtype=F64, rng=r),
                            (r.integers(1, 11, (3, 4)),)),
    "LayerNorm": lambda r: (_perturbed(nn.LayerNorm(6, dtype=F64), r), (_normal(r, 4, 6),)),
    "LayerNorm((2,3), bias=False)": lambda r: (_perturbed(nn.LayerNorm((2, 3), bias=False, dtype=F64), r),
                                               (_normal(r, 4, 2, 3),)),
    "ReLU": lambda r: (nn.ReLU(), (_normal(r, 3, 5, min_abs=1e-2),)),
    "Tanh": lambda r: (nn.Tanh(), (_normal(r, 3, 5),)),
    "Sigmoid": lambda r: (nn.Sigmoid(), (_normal(r, 3, 5) * 3,)),
    "RMSNorm": lambda r: (_perturbed(nn.RMSNorm(6, eps=1e-6, dtype=F64), r), (_normal(r, 4, 6),)),
    "SiLU": lambda r: (nn.SiLU(), (_normal(r, 3, 5) * 2,)),
    "GELU": lambda r: (nn.GELU(), (_normal(r, 3, 5) * 2,)),
    "GELU(tanh)": lambda r: (nn.GELU("tanh"), (_normal(r, 3, 5) * 2,)),
    "Softmax(dim=1)": lambda r: (nn.Softmax(dim=1), (_normal(r, 2, 4, 3),)),
    "LogSoftmax": lambda r: (nn.LogSoftmax(), (_normal(r, 3, 5),)),
    "Dropout": lambda r: (nn.Dropout(0.3, rng=r), (_normal(r, 4, 5),)),
    "Flatten": lambda r: (nn.Flatten(), (_normal(r, 2, 3, 4),)),
    "Sequential(Linear, GELU, LayerNorm)": lambda r: (
        nn.Sequential(nn.Linear(4, 8, dtype=F64, rng=r), nn.GELU("tanh"), nn.LayerNorm(8, dtype=F64)),
        (_normal(r, 3, 4),)),
    "MultiheadAttention(masks, weights)": lambda r: (
        nn.MultiheadAttention(6, 2, dtype=F64, rng=r),
        (_normal(r, 4, 2, 6), _normal(r, 5, 2, 6), _normal(r, 5, 2, 6)),
        dict(key_padding_mask=np.array([[False] * 4 + [True], [False] * 5]),
             attn_mask=np.triu(np.ones((4, 5), bool), 3))),
    "MultiheadAttention(batch_first, causal, dropout)": lambda r: (
        nn.MultiheadAttention(6, 3, dropout=0.2, batch_first=True, dtype=F64, rng=r),
        (_normal(r, 2, 4, 6),) * 3, dict(is_causal=True, need_weights=False)),
    "SinusoidalPositionalEncoding": lambda r: (nn.SinusoidalPositionalEncoding(6, 10, dtype=F64),
                                               (_normal(r, 2, 4, 6),)),
    "Conv1d(stride, padding, dilation, groups)": lambda r: (
        nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, dtype=F64, rng=r),
        (_normal(r, 2, 4, 9),)),
    "Conv1d(same, even kernel, direct)": lambda r: (
        nn.Conv1d(3, 4, 4, padding="same", method="direct", dtype=F64, rng=r), (_normal(r, 2, 3, 7),)),
    "Conv2d(non-square kernel, same)": lambda r: (
        nn.Conv2d(3, 4, (2, 3), padding="same", dtype=F64, rng=r), (_normal(r, 2, 3, 5, 6),)),
    "Conv2d(stride, dilation, groups, no bias, direct)": lambda r: (
        nn.Conv2d(4, 6, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2, bias=False,
                  method="direct", dtype=F64, rng=r), (_normal(r, 2, 4, 7, 8),)),
    "MaxPool1d(stride, padding)": lambda r: (nn.MaxPool1d(3, stride=2, padding=1), (_distinct(r, 2, 3, 9),)),
    "MaxPool2d(overlapping, padding)": lambda r: (nn.MaxPool2d((3, 2), stride=(2, 1), padding=1),
                                                  (_distinct(r, 2, 3, 6, 5),)),
    "AvgPool1d(stride, padding)": lambda r: (nn.AvgPool1d(3, stride=2, padding=1), (_normal(r, 2, 3, 8),)),
    "AvgPool2d": lambda r: (nn.AvgPool2d(2, padding=1), (_normal(r, 2, 3, 5, 4),)),
    "RNN(relu, 2 layers, bidirectional)": lambda r: (
        nn.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True, dtype=F64, rng=r),
        (_normal(r, 5, 2, 3),)),
    "LSTM(2 layers, batch_first)": lambda r: (
        nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=F64, rng=r), (_normal(r, 2, 5, 3),)),
    "GRU(bidirectional, dropout)": lambda r: (
        nn.GRU(3, 4, num_layers=2, bidirectional=True, dropout=0.3, dtype=F64, rng=r),
        (_normal(r, 5, 2, 3),)),
    "RNNCell": lambda r: (nn.RNNCell(3, 4, dtype=F64, rng=r), (_normal(r, 2, 3),)),
    "LSTMCell": lambda r: (nn.LSTMCell(3, 4, dtype=F64, rng=r), (_normal(r, 2, 3),)),
    "GRUCell": lambda r: (nn.GRUCell(3, 4, dtype=F64, rng=r), (_normal(r, 2, 3),)),
    "RNNLM (lstm, tied, dropout)": lambda r: (
        RNNLM(9, 5, 5, "lstm", num_layers=2, dropout=0.2, tie_weights=True, dtype=F64, rng=r),
        (r.integers(0, 9, (2, 5)),)),
    "CNN (tiny)": lambda r: (CNN(channels=(2, 3), image_size=8, num_classes=4, dtype=F64, rng=r),
                             (_distinct(r, 2, 1, 8, 8) / 6.4,)),
    "ConvLM (gated)": lambda r: (ConvLM(7, channels=4, kernel_size=3, dilations=(1, 2), gated=True,
                                        dtype=F64, rng=r), (r.integers(0, 7, (2, 6)),)),
    "VAE (tiny, gaussian, free bits; fixed eps)": lambda r: (
        VAE(6, 5, 2, likelihood="gaussian", free_bits=0.01, dtype=F64, rng=r),
        (_distinct(r, 3, 6) / 3, _normal(r, 3, 2))),
    "VAE (tiny, bernoulli; fixed eps)": lambda r: (
        VAE(6, 5, 2, dtype=F64, rng=r), ((r.random((3, 6)) < 0.5).astype(F64), _normal(r, 3, 2))),
    "DocumentVAE (tiny; fixed eps)": lambda r: (
        DocumentVAE(7, 5, 2, dtype=F64, rng=r), (r.poisson(1.0, (3, 7)).astype(F64), _normal(r, 3, 2))),
    "GPT (tiny, dropout)": lambda r: (
        GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1),
            dtype=F64, rng=r), (r.integers(0, 11, (2, 6)),)),
    "Llama (tiny, GQA, QK-norm, q/k/v biases)": lambda r: (
        _perturbed(Llama(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=8,
                                     attention_bias=True, qk_norm=True), dtype=F64, rng=r), r),
        (r.integers(0, 11, (2, 6)),)),
    "Seq2SeqTransformer (tiny, src padding, dropout)": lambda r: (
        Seq2SeqTransformer(9, 10, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=16, dropout=0.1, max_len=8, activation="gelu", dtype=F64, rng=r),
        (np.array([[3, 4, 5, 0, 0], [6, 7, 8, 3, 4]]), np.array([[1, 5, 6, 7], [1, 9, 4, 3]]),
         np.array([[5, 6, 7, 2], [9, 2, 0, 0]]))),
    "Seq2Seq (lstm, additive attention, src padding, dropout)": lambda r: (
        Seq2Seq(9, 10, embed_dim=6, hidden_size=5, cell="lstm", num_layers=2, attention="additive",
                dropout=0.1, dtype=F64, rng=r),
        (np.array([[3, 4, 5, 0, 0], [6, 7, 8, 3, 4]]), np.array([[1, 5, 6, 7], [1, 9, 4, 3]]),
         np.array([[5, 6, 7, 2], [9, 2, 0, 0]]))),
    "Word2Vec (skip-gram, negative sampling)": lambda r: (
        _perturbed(Word2Vec(Word2VecConfig(vector_size=5, sg=True), _VOCAB, dtype=F64, rng=r), r),
        (r.integers(0, 9, (4, 1)), r.integers(0, 9, (4, 3)), np.array([[1, 0, 0]] * 4))),
    "Word2Vec (CBOW, hierarchical softmax, masks)": lambda r: (
        _perturbed(Word2Vec(Word2VecConfig(vector_size=5, hs=True, negative=0), _VOCAB,
                            dtype=F64, rng=r), r),
        (r.integers(0, 9, (3, 4)), r.integers(0, 8, (3, 3)), r.integers(0, 2, (3, 3))),
        dict(context_mask=np.array([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], bool),
             target_mask=np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool), table="syn1")),
    "GloVe": lambda r: (
        GloVe(GloVeConfig(vector_size=5, x_max=3.0), _VOCAB, dtype=F64, rng=r),
        (np.array([0, 1, 2, 3, 1, 8]), np.array([1, 0, 4, 3, 5, 2]),
         np.array([0.5, 1.0, 2.5, 7.0, 0.25, 3.0]))),
    "CrossEntropyLoss": lambda r: (nn.CrossEntropyLoss(), (_normal(r, 6, 5), _targets(r, 6, 5))),
    "CrossEntropyLoss(ignore, smoothing)": lambda r: (
        nn.CrossEntropyLoss(label_smoothing=0.1), (_normal(r, 6, 5), _targets(r, 6, 5, ignore=True))),
    "CrossEntropyLoss(N,C,d, sum)": lambda r: (
        nn.CrossEntropyLoss(reduction="sum"), (_normal(r, 2, 4, 3), r.integers(0, 4, (2, 3)))),
    "NLLLoss": lambda r: (nn.NLLLoss(), (_normal(r, 6, 5), _targets(r, 6, 5, ignore=True))),
    "BCEWithLogitsLoss": lambda r: (nn.BCEWithLogitsLoss(), (_normal(r, 4, 3) * 3, r.random((4, 3)))),
    "MSELoss": lambda r: (nn.MSELoss(reduction="sum"), (_normal(r, 4, 3), _normal(r, 4, 3))),
    "GaussianKLLoss": lambda r: (nn.GaussianKLLoss(), (_normal(r, 4, 3), _normal(r, 4, 3))),
}


def _perturbed(module, rng):
    """Move parameters off their defaults (ones/zeros) so the check sees general values."""
    for p in module.parameters():
        p.data += 0.5 * rng.standard_normal(p.shape)
    return module


class _WithKwargs(nn.Module):
    """Binds keyword arguments (masks, flags) so the checker sees a module of arrays only."""

    def __init__(self, module, kwargs):
        super().__init__()
        self.inner = module
        self.kwargs = kwargs
        self.differentiable_inputs = module.differentiable_inputs

    def forward(self, *inputs):
        return self.inner(*inputs, **self.kwargs)

    def backward(self, *douts):
        return self.inner.backward(*douts)


def build_case(name, seed=0):
    """-> (module, inputs) of case ``name``; keyword arguments bound into the module."""
    built = CASES[name](np.random.default_rng(seed))
    module, inputs = built[0], built[1]
    if len(built) == 3:
        module = _WithKwargs(module, built[2])
    return module, inputs


#: Cases whose function has kinks inside the model (ReLU, max-pool) that random draws cannot keep
#: away from: a 1e-5 step (round-off ~1e-11 in float64, below the tolerance) makes a
#: difference quotient that straddles a kink 10x rarer than the default 1e-4 does.
SMALL_STEP = {"RNN(relu, 2 layers, bidirectional)": 1e-5, "CNN (tiny)": 1e-5}


def run_case(name, seed=0, **kwargs):
    """Build case ``name`` and check it; returns the report."""
    module, inputs = build_case(name, seed)
    kwargs.setdefault("eps", SMALL_STEP.get(name, 1e-4))
    return check_module(module, *inputs, name=name, **kwargs)


def select(patterns=None) -> list:
    """The case names ``patterns`` pick, in :data:`CASES` order: a pattern that is a case's exact
    name picks that case; otherwise it picks every case whose name contains it (ignoring case).
    ``ValueError`` names a pattern that picks nothing and lists the cases."""
    if not patterns:
        return list(CASES)
    picked = set()
    for pattern in patterns:
        if pattern in CASES:
            picked.add(pattern)
            continue
        hits = [n for n in CASES if pattern.lower() in n.lower()]
        if not hits:
            raise ValueError(f"no gradcheck case matches {pattern!r}; cases: {', '.join(CASES)}")
        picked.update(hits)
    return [n for n in CASES if n in picked]


HEADER = ("op", "dtype", "max rel err", "properties (accumulate, float32, deterministic)", "ok")
_WIDTHS = (max(len(n) for n in CASES), 7, 11, len(HEADER[3]), 4)


def format_row(cells) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()


def run_table(names, emit=print, **check_options):
    """Check each case of ``names``, emitting the table's header, then one row as each case
    finishes; returns the failed reports."""
    emit(format_row(HEADER))
    emit("  ".join("-" * w for w in _WIDTHS))
    failed = []
    for name in names:
        report = run_case(name, **check_options)
        props = "all ok" if all(p.ok for p in report.properties) else \
            "; ".join(p.name for p in report.properties if not p.ok)
        emit(format_row((name, "float64", f"{report.max_rel:.1e}", props,
                         "ok" if report.ok else "FAIL")))
        if not report.ok:
            failed.append(report)
    return failed


def uncovered_models() -> list:
    """The registered models (:mod:`scratchlm.registry`) with no gradient-check case here; the
    count-based n-gram model has no gradient and is exempt."""
    from . import registry
    covered = set()
    for name in CASES:
        module, _ = build_case(name)
        covered.update(type(m).__name__ for m in module.modules())
    return sorted({e.name for e in registry.REGISTRY.values()
                   if e.make_config is not None and e.model_class not in covered})
