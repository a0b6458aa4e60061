"""The command line as the registry drives it: every model trains, samples (or says why not) and
evaluates from the command line; every option is validated before any work, with one line; a
misspelt option shows the subcommand's usage and the closest option."""

import os
import re

import pytest

from scratchlm import registry
from scratchlm.cli import build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore:NGramLM.*discounts:RuntimeWarning")

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
                  "abcabcabc defdefdef ghighighi"] * 40) + "\n"


def _flags(entry, corpus):
    args = []
    opts = dict(entry.tiny)
    if any(o.name == "corpus" for o in entry.options):
        opts["corpus"] = str(corpus)
    if "sample_length" in entry.defaults():
        opts["sample_length"] = 5
    for k, v in opts.items():
        o = entry.option(k)
        if o.kind is bool:
            args += [o.flag] if v else []
        elif isinstance(v, list):
            args += [o.flag, *map(str, v)]
        else:
            args += [o.flag, str(v)]
    return args


@pytest.mark.parametrize("name", registry.names())
def test_every_model_trains_samples_and_evaluates_from_the_command_line(tmp_path, capsys, name):
    entry = registry.get(name)
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    ck = tmp_path / f"{name}.npz"
    assert main(["train", name, *_flags(entry, corpus), "--out", str(ck)]) == 0
    out = capsys.readouterr().out
    summary = out.splitlines()[0]
    assert summary.startswith(f"trained {name}: ") and f"wrote {ck}" in summary
    assert re.search(r" in \d+\.\d s; ", summary)                     # the elapsed time
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert capsys.readouterr().out.strip()
    argv = ["sample", "--checkpoint", str(ck), "--seed", "1", "--length", "10",
            "--out", str(tmp_path / "s.png")]
    if name == "seq2seq":
        argv += ["--prompt", "abc"]
    code = main(argv)
    captured = capsys.readouterr()
    if entry.samples is None:
        assert code == 2 and entry.no_sample in captured.err
        assert len(captured.err.strip().splitlines()) == 1
    else:
        assert code == 0 and captured.out.strip()


@pytest.mark.parametrize("argv,message", [
    (["train", "transformer", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["train", "lstm", "--eval-interval", "0"], "argument --eval-interval: must be an integer >= 1"),
    (["train", "transformer", "--block-size", "0"], "argument --block-size: must be an integer >= 1"),
    (["train", "transformer", "--val-fraction", "1.5"],
     "argument --val-fraction: must be a number in (0, 1), got 1.5"),
    (["train", "transformer", "--time", "-5"], "argument --time: must be a number > 0, got -5"),
    (["train", "transformer", "--lr", "nan"], "argument --lr: must be a number > 0, got nan"),
    (["train", "transformer", "--steps", "two"], "argument --steps: must be an integer >= 1, got 'two'"),
    (["train", "cnn", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["sample", "--checkpoint", "x.npz", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["sample", "--checkpoint", "x.npz", "--top-p", "0"], "argument --top-p: must be a number in (0, 1]"),
    (["gradcheck", "--max-entries", "0"], "argument --max-entries: must be an integer >= 1, got 0"),
    (["filters", "--checkpoint", "x.npz", "--index", "-2"], "argument --index: must be an integer >= 0"),
    (["train", "transformer", "--n-embd", "10", "--n-head", "3"],
     "--n-embd (10) must be divisible by --n-head (3)"),
    (["train", "lstm", "--tie-weights", "--hidden-size", "8", "--embed-dim", "4"],
     "--tie-weights needs --hidden-size == --embed-dim"),
])
def test_bad_values_exit_2_with_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv,
                                                          message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line]
    assert len(lines) == 1 and message in lines[0], err
    assert not os.path.exists("runs")                  # nothing was written


def test_a_misspelt_option_shows_the_usage_and_the_closest_option(capsys):
    assert main(["train", "transformer", "--n-layr", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: scratchlm train transformer")
    assert "unrecognized option --n-layr; did you mean --n-layer?" in err
    assert main(["sample", "--checkpoint", "x", "--temprature", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: scratchlm sample") and "did you mean --temperature?" in err


def test_every_registry_option_is_on_the_command_line():
    _, parsers = build_parser()
    for name, entry in registry.REGISTRY.items():
        flags = {s for a in parsers[("train", name)]._actions for s in a.option_strings}
        assert {o.flag for o in entry.options} <= flags
        if entry.batch_source:
            assert "--resume" in flags


def test_file_errors_exit_2_with_one_line(tmp_path, capsys):
    not_ck = tmp_path / "x.npz"
    not_ck.write_bytes(b"hello")
    for argv in (["sample", "--checkpoint", str(tmp_path / "missing.npz")],
                 ["eval", "--checkpoint", str(not_ck)],
                 ["train", "transformer", "--resume", "--out", str(tmp_path / "missing.npz")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scratchlm ")


def test_gradcheck_only_accepts_part_of_a_name(capsys):
    assert main(["gradcheck", "--only", "lstm", "--max-entries", "16"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "float64" in line]
    assert len(rows) >= 2 and all("lstm" in r.lower() for r in rows)
    assert main(["gradcheck", "--only", "no such layer"]) == 2
    assert "no gradcheck case matches 'no such layer'" in capsys.readouterr().err


def test_pngs_go_under_runs_by_default(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["gradnorms", "--length", "10", "--hidden-size", "8"]) == 0
    assert (tmp_path / "runs" / "grad-norms.png").exists()
    assert "wrote runs/grad-norms.png" in capsys.readouterr().out
