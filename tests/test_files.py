"""scratchlm._files: what every reader does first (regular files only, sizes before reads,
bounded JSON)."""

import os

import pytest

from scratchlm._files import loads_json, read_bytes, regular_file


def test_regular_file_refuses_what_is_not_one(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"12345")
    assert regular_file(f) == (str(f), 5)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        regular_file(tmp_path / "missing", "checkpoint")
    with pytest.raises(ValueError, match="is a directory, not a regular corpus"):
        regular_file(tmp_path, "corpus")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        regular_file(fifo)
    link = tmp_path / "zero"
    os.symlink("/dev/zero", link)
    with pytest.raises(ValueError, match="is a device"):
        read_bytes(link)                                      # refused before any read


def test_read_bytes_checks_the_size_before_reading(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 100)
    assert read_bytes(f, limit=100) == b"x" * 100
    with pytest.raises(ValueError, match="has 100 bytes, more than the 99 a vocab may have"):
        read_bytes(f, "vocab", limit=99)


@pytest.mark.parametrize("text,expect,match", [
    ("[" * 65 + "]" * 65, list, "JSON nested deeper than 64 levels"),
    ("[1, 2]", dict, "expected a JSON object, got array"),
    ('{"a": 1', dict, "not valid JSON"),
    (b"\xff\xfe", dict, "not UTF-8 JSON"),
])
def test_loads_json_names_what_is_wrong(text, expect, match):
    with pytest.raises(ValueError, match=f"tok.json: {match}"):
        loads_json(text, "tok.json", expect)


def test_loads_json_ignores_brackets_inside_strings():
    deep_looking = '{"pattern": "' + "[" * 200 + '\\"", "x": [[1]]}'
    assert loads_json(deep_looking, "p")["x"] == [[1]]
