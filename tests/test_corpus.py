"""Corpora: the built-in pydoc corpus, file loading errors, the line-boundary split."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.data.corpus import builtin_corpus, lines, load_corpus, split_corpus


def test_builtin_corpus_is_pydoc_topics_joined():
    from pydoc_data.topics import topics

    text = builtin_corpus()
    assert isinstance(text, str) and len(text) > 100_000
    assert "\r" not in text and text.endswith("\n") and not text.startswith("\n")
    assert builtin_corpus() is text                       # cached
    # the topics appear in sorted-key order, separated by blank lines
    keys = sorted(topics)
    first = topics[keys[0]].replace("\r\n", "\n").strip("\n")
    second = topics[keys[1]].replace("\r\n", "\n").strip("\n")
    assert text.startswith(first + "\n\n" + second)
    assert topics["if"].replace("\r\n", "\n").strip("\n") in text
    assert len(lines(text)) > 1000


def test_load_corpus_roundtrip(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("héllo wörld\r\nsecond line\rthird\n".encode("utf-8"))
    assert load_corpus(p) == "héllo wörld\nsecond line\nthird\n"
    assert load_corpus(str(p)) == load_corpus(p)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfabc\n")
    assert load_corpus(bom) == "abc\n"


def test_load_corpus_missing(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(missing)


def test_load_corpus_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory, not a regular corpus file"):
        load_corpus(tmp_path)


def test_load_corpus_refuses_non_regular_files_before_reading(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        load_corpus(fifo)                                  # no open(): a FIFO would block forever
    with pytest.raises(ValueError, match="is a device"):
        load_corpus("/dev/zero")                           # would read forever
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is a device"):
        load_corpus(link)


def test_load_corpus_size_limit(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello world\n" * 10)
    assert load_corpus(p, max_bytes=120) == "hello world\n" * 10
    with pytest.raises(ValueError, match="has 120 bytes, more than the 119 a corpus file may have"):
        load_corpus(p, max_bytes=119)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "])
def test_load_corpus_empty(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="empty"):
        load_corpus(p)


def test_load_corpus_binary(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc\x00\x01\x02" + bytes(range(256)))
    with pytest.raises(ValueError, match="looks binary.*offset 3"):
        load_corpus(p)


def test_load_corpus_latin1(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait\n".encode("latin-1"))       # 'é' = 0xe9 at byte 3
    with pytest.raises(ValueError, match=r"not valid UTF-8.*0xe9.*byte offset 3"):
        load_corpus(p)
    p.write_bytes("ok line\nnaïve\n".encode("latin-1"))      # 'ï' = 0xef at byte 10
    with pytest.raises(ValueError, match="byte offset 10"):
        load_corpus(p)


def test_load_corpus_bad_path_type():
    with pytest.raises(TypeError, match="path"):
        load_corpus(123)
    with pytest.raises(TypeError, match="path"):
        load_corpus(b"file.txt")


def test_split_corpus_basic():
    text = "".join(f"line {i:02d}\n" for i in range(20))      # 20 lines of 8 chars
    train, val = split_corpus(text, 0.25)
    assert train + val == text
    assert train.endswith("\n")
    assert len(lines(train)) == 15 and len(lines(val)) == 5
    assert val.startswith("line 15")
    assert split_corpus(text, 0.25) == (train, val)           # deterministic


def test_split_corpus_picks_nearest_line_boundary():
    text = "a" * 50 + "\n" + "b" * 10 + "\n" + "c" * 40 + "\n"   # 103 chars; cuts at 51, 62
    assert split_corpus(text, 0.46)[0] == "a" * 50 + "\n"       # target 55.62 -> 51
    assert split_corpus(text, 0.44)[0] == "a" * 50 + "\n" + "b" * 10 + "\n"  # 57.68 -> 62
    # tiny fractions still leave a non-blank validation line, huge ones a training line
    assert lines(split_corpus(text, 1e-9)[1]) == ["c" * 40]
    assert lines(split_corpus(text, 1 - 1e-9)[0]) == ["a" * 50]


def test_split_corpus_builtin():
    text = builtin_corpus()
    train, val = split_corpus(text)
    assert train + val == text
    assert abs(len(val) / len(text) - 0.1) < 0.01


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5, float("nan")])
def test_split_corpus_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus("a\nb\n", frac)


def test_split_corpus_errors():
    with pytest.raises(TypeError, match="val_fraction"):
        split_corpus("a\nb\n", "0.1")
    with pytest.raises(TypeError, match="val_fraction"):
        split_corpus("a\nb\n", True)
    with pytest.raises(TypeError, match="text"):
        split_corpus(b"a\nb\n")
    for short in ("only one line\n", "one\n\n\n", "", "  \n ", "\n\nx"):
        with pytest.raises(ValueError, match="two non-blank lines"):
            split_corpus(short, 0.5)


@given(st.lists(st.text(alphabet="ab \t", max_size=6), min_size=1, max_size=12),
       st.floats(0.01, 0.99))
def test_split_corpus_properties(line_list, frac):
    text = "\n".join(line_list) + "\n"
    if len(lines(text)) < 2:
        with pytest.raises(ValueError):
            split_corpus(text, frac)
        return
    train, val = split_corpus(text, frac)
    assert train + val == text
    assert train.endswith("\n")
    assert lines(train) and lines(val)
    assert lines(train) + lines(val) == lines(text)


def test_lines():
    assert lines("  a b \n\n\t\nc\r\nd  \r") == ["a b", "c", "d"]
    assert lines("") == []
    with pytest.raises(TypeError, match="text"):
        lines(["a"])
