"""`python -m scratchlm train markov | sample | eval`: the n-gram pipeline end to end."""

import re

import pytest

from scratchlm.cli import main
from scratchlm.models import NGramLM
from scratchlm.training import load_model, train_model
from scratchlm.training.evaluate import evaluate_ngram

# char-level unigrams rarely allow estimated discounts: the documented fallback warning is expected
pytestmark = pytest.mark.filterwarnings("ignore:NGramLM.*discounts:RuntimeWarning")

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
                  "the mat and the log"] * 30) + "\n"


@pytest.fixture()
def corpus_file(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_train_sample_eval_roundtrip(tmp_path, corpus_file, capsys):
    ck = tmp_path / "m.npz"
    assert main(["train", "markov", "--order", "3", "--corpus", str(corpus_file), "--out", str(ck),
                 "--sample-length", "40", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    ppl = float(re.search(r"perplexity ([\d.]+)", out).group(1))
    assert 1 < ppl < 5 and "bits/char" in out and f"wrote {ck}" in out and ck.exists()

    assert main(["sample", "--checkpoint", str(ck), "--length", "60", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(ck), "--length", "60", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first                         # seeded: reproducible
    assert set(first) <= set(TEXT) | {"\n"}

    assert main(["eval", "--checkpoint", str(ck), "--corpus", str(corpus_file)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits/token" in out


@pytest.mark.parametrize("tokenizer", ["char", "byte", "word", "bpe"])
def test_every_tokenizer_trains_and_reloads(tmp_path, corpus_file, tokenizer):
    ck = tmp_path / f"{tokenizer}.npz"
    r = train_model("markov", dict(order=2, corpus=str(corpus_file), tokenizer=tokenizer,
                                   vocab_size=280), out=ck, log=lambda m: None)
    model, tok, meta, entry = load_model(ck)
    assert isinstance(model, NGramLM) and entry.name == "markov"
    assert meta["val_perplexity"] == pytest.approx(r.metrics["perplexity"])
    assert tok.encode("the cat").tolist() == r.tokenizer.encode("the cat").tolist()
    again = evaluate_ngram(model, tok, TEXT)
    assert again["perplexity"] < 10


def test_builtin_corpus_is_the_default(tmp_path):
    r = train_model("markov", dict(order=2), out=tmp_path / "b.npz", log=lambda m: None)
    assert 5 < r.metrics["perplexity"] < 30 and "counted" in r.notes[0]
    assert int(r.notes[0].split()[1].replace(",", "")) > 300_000


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "markov", "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\x00def")
    assert main(["train", "markov", "--corpus", str(binary)]) == 2
    assert "binary" in capsys.readouterr().err
    ok = tmp_path / "ok.txt"
    ok.write_text(TEXT)
    assert main(["train", "markov", "--order", "0", "--corpus", str(ok)]) == 2
    assert "argument --order: must be an integer in [1, 10], got 0" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["train", "markov", "--corpus", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    assert main(["train", "markov", "--corpus", str(latin)]) == 2
    assert "UTF-8" in capsys.readouterr().err
    not_ck = tmp_path / "x.npz"
    not_ck.write_bytes(b"hello")
    assert main(["sample", "--checkpoint", str(not_ck)]) == 2
    assert "safetensors file" in capsys.readouterr().err


def test_models_saved_with_ngramlm_save_work_in_the_cli(tmp_path, capsys):
    lm = NGramLM(2).fit([[1, 2, 3], [3, 2, 1], [1, 1, 2]] * 10)
    bare = tmp_path / "bare.npz"
    lm.save(bare)                                            # no tokenizer: the CLI speaks ids
    assert main(["sample", "--checkpoint", str(bare), "--length", "20", "--seed", "0"]) == 0
    assert set(capsys.readouterr().out.split()) <= {"1", "2", "3", "</s>"}
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("1 2 3\n3 2 1\n")
    assert main(["eval", "--checkpoint", str(bare), "--corpus", str(ids_file)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(bare)]) == 2
    assert "pass --corpus" in capsys.readouterr().err


def test_eval_defaults_to_the_training_corpus(tmp_path, corpus_file, capsys):
    ck = tmp_path / "m.npz"
    assert main(["train", "markov", "--order", "2", "--corpus", str(corpus_file), "--out", str(ck)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert f"validation split of {corpus_file}" in capsys.readouterr().out
