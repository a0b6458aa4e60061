"""word2vec training against gensim's optimised Cython core, on the same sentences with the same
settings and threads.

The corpus is the built-in ``stdlib`` corpus (``--quick``: ``pydoc``), split by
:func:`scratchlm.data.word_sentences`; both implementations get the same lists of words. One step
is one epoch over it (learning rate decaying as in a one-epoch run), with gensim's defaults:
100 dimensions, window 5, 5 noise words, ``sample=1e-3``, ``min_count=5``, no loss computed,
``workers`` = the implementation's thread count. Throughput in corpus words per second (all
words read, before subsampling: gensim's own measure).
"""

from __future__ import annotations

import functools

from .base import SCRATCHLM_NUMBA, Unavailable, Workload

GENSIM = "gensim"


@functools.lru_cache(maxsize=None)
def sentences(quick: bool) -> list:
    from scratchlm.data import builtin_corpus, word_sentences
    return word_sentences(builtin_corpus("pydoc" if quick else "stdlib"))


class Word2VecSkipGram(Workload):
    name = "word2vec_sg"
    label = "skip-gram"
    impls = (SCRATCHLM_NUMBA, GENSIM)
    reference = GENSIM
    unit = "word"
    targets = {SCRATCHLM_NUMBA: 1.0}          # at least gensim's words per second
    max_repeats = 5
    max_warmup = 1
    sg = True

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.words = sum(len(s) for s in sentences(quick))
        what = "skip-gram" if self.sg else "CBOW"
        self.params = {"corpus": "pydoc" if quick else "stdlib", "words": self.words,
                       "vector_size": 100, "window": 5, "negative": 5, "sample": 1e-3,
                       "min_count": 5, "sg": self.sg}
        self.description = (
            f"one epoch of word2vec {what} (100 dims, window 5, 5 noise words, sample 1e-3, "
            f"min_count 5) over the built-in {self.params['corpus']} corpus ({self.words:,} "
            f"words): scratchlm's Numba kernel (Hogwild threads) vs gensim's Cython core, "
            f"workers = threads. Throughput in corpus words/s.")

    def items(self, impl):
        return float(self.words)

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm.kernels import get_num_threads
        sents, workers = sentences(self.quick), get_num_threads()
        if impl == GENSIM:
            try:
                from gensim.models import Word2Vec as GensimWord2Vec
            except Exception as exc:  # noqa: BLE001 -- ImportError or a broken install
                raise Unavailable(f"gensim not importable: {exc}") from exc
            model = GensimWord2Vec(vector_size=100, window=5, min_count=5, sg=int(self.sg),
                                   negative=5, sample=1e-3, workers=workers, epochs=1, seed=1)
            model.build_vocab(sents)

            def step():
                model.train(sents, total_examples=model.corpus_count, epochs=1)
            return step
        from scratchlm.models import Word2Vec
        model = Word2Vec.build(sents, vector_size=100, window=5, min_count=5, sg=self.sg,
                               negative=5, sample=1e-3, epochs=1, seed=1)
        return self.scratchlm_step(impl, lambda: model.train(sents, workers=workers,
                                                             compute_loss=False))


class Word2VecCBOW(Word2VecSkipGram):
    name = "word2vec_cbow"
    label = "CBOW"
    sg = False
