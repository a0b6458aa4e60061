"""n-gram language models: fitting, scoring and sampling against NLTK's ``nltk.lm`` and KenLM.

The corpus is synthetic and reproducible: 10M tokens from a random second-order Markov source
over 200 symbols (``scratchlm.data.MarkovSource(200, order=2, concentration=0.05, seed=0)``),
cut into sentences of 100 tokens -- a realistic mix of frequent and rare n-grams with no download.
It is generated once and cached under ``~/.cache/scratchlm-bench`` (the memory probe runs every
implementation in a fresh process).

NLTK counts in Python dictionaries, so it fits a 100k-token slice (50k at order 5) and scores a
few hundred queries; the table compares throughput (tokens per second), which is what the ratio
column uses. KenLM (``pip install kenlm``) scores our own ARPA export of the same model.
"""

from __future__ import annotations

import functools
import os
import tempfile
import warnings

import numpy as np

from .base import SCRATCHLM, SCRATCHLM_NUMBA, SCRATCHLM_NUMPY, Unavailable, Workload

NLTK_MLE, NLTK_KN, KENLM = "nltk-mle", "nltk-kneser-ney", "kenlm"
SENTENCE = 100


@functools.lru_cache(maxsize=None)
def tokens(n: int) -> np.ndarray:
    """``n`` tokens of the benchmark source (cached on disk)."""
    folder = os.path.join(os.path.expanduser("~"), ".cache", "scratchlm-bench")
    path = os.path.join(folder, f"markov-v200-o2-c0.05-s0-{n}.npy")
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    from scratchlm.data import MarkovSource
    x = MarkovSource(200, order=2, concentration=0.05, seed=0).sample(n, rng=1)
    os.makedirs(folder, exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npy"
    np.save(tmp, x)
    os.replace(tmp, path)
    return x


def sentences(x: np.ndarray) -> list:
    return np.split(x, np.arange(SENTENCE, x.size, SENTENCE))


def _nltk():
    try:
        from nltk.lm import MLE, KneserNeyInterpolated
        from nltk.lm.preprocessing import padded_everygram_pipeline
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"nltk not importable: {exc}") from exc
    return MLE, KneserNeyInterpolated, padded_everygram_pipeline


def _fit_scratchlm(order, seqs):
    from scratchlm.models import NGramLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return NGramLM(order).fit(seqs)


class NGramFit(Workload):
    """Count and smooth (modified Kneser-Ney) order-n statistics, against NLTK's fit."""

    name = "ngram_fit_3"
    impls = (SCRATCHLM_NUMBA, SCRATCHLM_NUMPY, NLTK_MLE)
    reference = NLTK_MLE
    unit = "tok"
    max_repeats = 3
    max_warmup = 1
    order = 3
    targets = {SCRATCHLM_NUMBA: 0.01}         # at least 100x NLTK's rate

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n_ours = 20_000 if quick else 200_000
        self.n_nltk = self.n_ours if self.order <= 3 else self.n_ours // 4
        self.params = {"order": self.order, "tokens": self.n_ours, "nltk_tokens": self.n_nltk}
        self.description = (
            f"NGramLM({self.order}, 'kneser_ney').fit on {self.n_ours:,} tokens (sentences of "
            f"{SENTENCE}; counting kernels on the Numba or the NumPy route) vs NLTK's "
            f"MLE(order={self.order}).fit on {self.n_nltk:,} of them (NLTK's KneserNeyInterpolated "
            f"fit is the same counting: it smooths lazily, per query). Throughput in input tokens/s.")

    def items(self, impl):
        return float(self.n_nltk if impl.startswith("nltk") else self.n_ours)

    def setup(self, impl):
        self.check_impl(impl)
        if impl.startswith("nltk"):
            MLE, _, pipeline = _nltk()
            sents = [[str(t) for t in s] for s in sentences(tokens(self.n_ours)[:self.n_nltk])]

            def step():
                train, vocab = pipeline(self.order, sents)
                MLE(self.order).fit(train, vocab)
            return step
        seqs = sentences(tokens(self.n_ours))
        return self.scratchlm_step(impl, lambda: _fit_scratchlm(self.order, seqs))


class NGramFit5(NGramFit):
    name = "ngram_fit_5"
    order = 5
    targets = {}


class NGramScore(Workload):
    """Score held-out text with the same order-5 Kneser-Ney model."""

    name = "ngram_score"
    impls = (SCRATCHLM, KENLM, NLTK_KN)
    reference = KENLM
    unit = "tok"
    max_repeats = 5
    targets = {SCRATCHLM: 1.5}

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n_train = 200_000 if quick else 1_000_000
        self.n_test = 100_000 if quick else 416_000      # 420,160 scored tokens with the </s>
        self.n_nltk_queries = 100 if quick else 300
        self.params = {"order": 5, "train_tokens": self.n_train, "test_tokens": self.n_test}
        self.description = (
            f"log-probability of {self.n_test:,} held-out tokens (plus one </s> per sentence) under "
            f"an order-5 modified Kneser-Ney model fitted on {self.n_train:,} tokens: scratchlm "
            f"NGramLM.perplexity (vectorised); KenLM's Python query module (`Model.score` per "
            f"sentence) on our ARPA export of the same model; NLTK KneserNeyInterpolated.logscore "
            f"on {self.n_nltk_queries} queries (same data, NLTK's own estimate).")

    def _data(self):
        x = tokens(self.n_train + self.n_test)
        return sentences(x[:self.n_train]), sentences(x[self.n_train:])

    def items(self, impl):
        if impl == NLTK_KN:
            return float(self.n_nltk_queries)
        return float(self.n_test + self.n_test // SENTENCE)

    def setup(self, impl):
        self.check_impl(impl)
        train, test = self._data()
        if impl == NLTK_KN:
            _, KN, pipeline = _nltk()
            sents = [[str(t) for t in s] for s in train[:500]]
            lm = KN(5)
            lm.fit(*pipeline(5, sents))
            words = [str(t) for s in test[:(self.n_nltk_queries + 4) // SENTENCE + 1] for t in s]
            queries = [(words[i], words[i - 4:i]) for i in range(4, 4 + self.n_nltk_queries)]
            return lambda: [lm.logscore(w, c) for w, c in queries]
        model = _fit_scratchlm(5, train)
        if impl == KENLM:
            try:
                import kenlm
            except Exception as exc:  # noqa: BLE001
                raise Unavailable(f"kenlm not importable: {exc}") from exc
            folder = tempfile.mkdtemp(prefix="scratchlm-bench-")
            path = os.path.join(folder, "model.arpa")
            model.to_arpa(path)
            km = kenlm.Model(path)
            lines = [" ".join(map(str, s.tolist())) for s in test]
            return lambda: sum(km.score(line, bos=True, eos=True) for line in lines)
        return lambda: model.perplexity(test)


class NGramSample(Workload):
    """Draw tokens one at a time from the order-5 model."""

    name = "ngram_sample"
    impls = (SCRATCHLM, NLTK_MLE)
    reference = NLTK_MLE
    unit = "tok"
    max_repeats = 5

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.n_train = 200_000 if quick else 1_000_000
        self.n_sample = 200 if quick else 2000
        self.params = {"order": 5, "train_tokens": self.n_train, "tokens": self.n_sample}
        self.description = (
            f"generate {self.n_sample} tokens from an order-5 model fitted on {self.n_train:,} tokens: "
            f"scratchlm NGramLM.generate (Kneser-Ney, full next-token distribution each step) vs "
            f"NLTK MLE.generate (NLTK's Kneser-Ney generates ~20 tokens/s, so it is left out).")

    def items(self, impl):
        return float(self.n_sample)

    def setup(self, impl):
        self.check_impl(impl)
        train = sentences(tokens(self.n_train))
        if impl == NLTK_MLE:
            MLE, _, pipeline = _nltk()
            lm = MLE(5)
            lm.fit(*pipeline(5, [[str(t) for t in s] for s in train]))
            return lambda: lm.generate(self.n_sample, random_seed=1)
        model = _fit_scratchlm(5, train)
        return lambda: model.generate(self.n_sample, seed=1)
