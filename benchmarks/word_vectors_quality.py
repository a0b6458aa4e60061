"""word2vec's vectors against gensim's: the same sentences, the same settings, several seeds,
scored on the standard similarity and analogy files.

    python -m benchmarks.word_vectors_quality [--seeds 3] [--epochs 5] [--corpus stdlib]

Both implementations train on the built-in corpus split by ``word_sentences`` with gensim's
defaults (100 dimensions, window 5, 5 noise words, ``sample=1e-3``, ``min_count=5``), on the
machine's threads, for skip-gram and CBOW; each is run with ``--seeds`` seeds, so the table shows
the spread one implementation has from seed to seed -- the noise the two are compared within.
(Speed is the benchmark runner's: workloads ``word2vec_sg`` and ``word2vec_cbow``.)
The vectors of both are scored by the same code (:class:`scratchlm.models.KeyedVectors`, which
gives gensim's own numbers on gensim's vectors: the tests check it) on the copies of
WordSim-353, SimLex-999 and Google's analogy questions that gensim ships in its
``test/test_data`` folder; the corpus covers only part of them, and the table says how much.
Needs gensim. Prints a Markdown table (``benchmarks/results/word_vectors.md`` keeps the last
one with the machine).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _files():
    import gensim
    folder = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")
    return {name: os.path.join(folder, name)
            for name in ("wordsim353.tsv", "simlex999.txt", "questions-words.txt")}


def _score(kv, files):
    ws = kv.evaluate_word_pairs(files["wordsim353.tsv"])
    sl = kv.evaluate_word_pairs(files["simlex999.txt"])
    acc, sections = kv.evaluate_word_analogies(files["questions-words.txt"])
    total = sections[-1]
    return {"wordsim353": ws.spearman, "simlex999": sl.spearman, "analogy": acc,
            "ws_pairs": ws.pairs, "sl_pairs": sl.pairs,
            "questions": len(total["correct"]) + len(total["incorrect"])}


def _ours(sentences, sg, seed, epochs, workers):
    from scratchlm.models import Word2Vec
    model = Word2Vec.build(sentences, vector_size=100, window=5, min_count=5, sg=sg, negative=5,
                           sample=1e-3, epochs=epochs, seed=seed)
    model.train(sentences, workers=workers, compute_loss=False)
    return model.wv


def _gensim(sentences, sg, seed, epochs, workers):
    from gensim.models import Word2Vec as GensimWord2Vec
    from scratchlm.models import KeyedVectors
    model = GensimWord2Vec(vector_size=100, window=5, min_count=5, sg=int(sg), negative=5,
                           sample=1e-3, workers=workers, epochs=epochs, seed=seed)
    model.build_vocab(sentences)
    model.train(sentences, total_examples=model.corpus_count, epochs=epochs)
    return KeyedVectors(list(model.wv.index_to_key), model.wv.vectors)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.word_vectors_quality")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--corpus", default="stdlib", choices=("stdlib", "pydoc"))
    args = p.parse_args(argv)
    from scratchlm.data import builtin_corpus, word_sentences
    from scratchlm.kernels import get_num_threads
    files = _files()
    sentences = word_sentences(builtin_corpus(args.corpus))
    workers = get_num_threads()
    words = sum(map(len, sentences))
    print(f"corpus: built-in {args.corpus}, {words:,} words in {len(sentences):,} sentences; "
          f"{args.epochs} epochs, {workers} workers, seeds 1..{args.seeds}; mean ± standard "
          f"deviation over the seeds\n")
    print("| model | implementation | WordSim-353 ρ | SimLex-999 ρ | analogy accuracy |")
    print("|---|---|---:|---:|---:|")
    coverage = None
    for sg in (True, False):
        for name, fit in (("scratchlm", _ours), ("gensim", _gensim)):
            scores = []
            for seed in range(1, args.seeds + 1):
                scores.append(_score(fit(sentences, sg, seed, args.epochs, workers), files))
            coverage = coverage or scores[0]

            def cell(key):
                v = np.array([x[key] for x in scores])
                return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0:.3f}"
            print(f"| {'skip-gram' if sg else 'CBOW'} | {name} | {cell('wordsim353')} | "
                  f"{cell('simlex999')} | {cell('analogy')} |")
    print(f"\nscored: {coverage['ws_pairs']} of WordSim-353's 353 pairs, {coverage['sl_pairs']} of "
          f"SimLex-999's 999, {coverage['questions']} of the 19,544 analogy questions (the rest "
          f"have a word outside the vocabulary)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
