"""Every file reader, fuzzed: mutated files get a named error or a correct load, in bounded memory
and time.

Readers: ARPA files (``NGramLM.from_arpa``), the n-gram's checkpoints (``NGramLM.load``),
tokenizer files (``load_tokenizer``, every kind, and ``Tokenizer.from_dict``), GPT-2's
``vocab.json`` + ``merges.txt``, corpora (``load_corpus``), Hugging Face GPT-2 folders
(``GPT.from_pretrained``: ``config.json`` and the weights it expects) and word vectors
(``KeyedVectors.load_word2vec_format``, text and binary, and the word-pairs and analogy files
``evaluate_word_pairs`` / ``evaluate_word_analogies`` read).

Each starts from a valid file and applies one to three mutations: byte-level (truncate, flip a
byte, delete or duplicate a span, insert bytes, swap / duplicate / drop lines, replace a number by
an extreme one: ``0``, ``2**63``, ``10**30``, ``nan`` ...) or, for JSON, structural (replace a
value anywhere by a value of another type or an extreme one, delete a key, duplicate an item).
Every outcome must be

* a ``ValueError`` (never a ``KeyError``, ``TypeError``, ``AttributeError``, ``OverflowError``,
  ``MemoryError``, ``RecursionError`` or NumPy's internals) whose one-line message names the file
  (or, for ``from_dict``, the tokenizer dict), or
* a load that works: the model scores without NaN, the tokenizer encodes into its id range and
  decodes, the corpus is non-empty text;

with the ``tracemalloc`` peak under ``MEMORY_FACTOR x file size + MEMORY_BASE`` (a declared count
or size is never trusted to allocate) and the wall time under ``TIME_LIMIT`` seconds; while a
reader runs, the soft ``RLIMIT_AS`` is lowered to 2 GiB above the current address space, so a
regression fails with a ``MemoryError`` instead of exhausting the machine. Budget:
``FUZZ_EXAMPLES`` examples per reader (more under ``HYPOTHESIS_PROFILE=thorough``), derandomised.
"""

import contextlib
import copy
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.cli import main
from scratchlm.data import load_corpus
from scratchlm.data.gpt2_tokenizer import GPT2Tokenizer, bytes_to_unicode
from scratchlm.data.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer,
                                       WordTokenizer, load_tokenizer)
from scratchlm.io import save_safetensors
from scratchlm.models import GPT, NGramLM
from scratchlm.models.gpt import GPTConfig

FUZZ_EXAMPLES = max(40, settings().max_examples)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MEMORY_FACTOR = 64                     # Python objects per line / token: tens of bytes per byte
MEMORY_BASE = 4 << 20
TIME_LIMIT = 20.0                      # generous: two cores shared with other test runs
ADDRESS_SPACE_EXTRA = 2 << 30          # a hard stop while a reader runs (see address_space_cap)

TEXT = ("the cat sat on the mat . the dog sat on the log .\n"
        "a cat and a dog ; 12 cats , 3 dogs !\n"
        "naïve café 東京 🙂 -- the end\n")


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------
EXTREME_NUMBERS = [b"0", b"1", b"-1", b"65536", b"2147483648", b"9223372036854775807",
                   b"9223372036854775808", b"18446744073709551616", b"100000000000",
                   b"1" * 40, b"1e308", b"-1e400", b"nan", b"inf", b"-0.5"]


@st.composite
def mutated_bytes(draw, data: bytes):
    """``data`` after one to three byte-level mutations."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        n = len(out)
        op = draw(st.sampled_from(["truncate", "flip", "delete", "splice", "insert", "number",
                                   "number", "line"]))
        if op == "truncate":
            out = out[:draw(st.integers(0, n))]
        elif op == "flip" and n:
            out[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del out[i:i + draw(st.integers(1, 64))]
        elif op == "splice" and n:
            i = draw(st.integers(0, n - 1))
            chunk = out[i:i + draw(st.integers(1, 200))]
            j = draw(st.integers(0, n))
            out[j:j] = chunk
        elif op == "insert":
            j = draw(st.integers(0, n))
            out[j:j] = draw(st.binary(min_size=1, max_size=16))
        elif op == "number":
            spans = [m.span() for m in re.finditer(rb"-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?", out)]
            if spans:
                i, j = draw(st.sampled_from(spans))
                out[i:j] = draw(st.sampled_from(EXTREME_NUMBERS))
        elif op == "line":
            lines = bytes(out).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            how = draw(st.sampled_from(["dup", "swap", "drop"]))
            if how == "dup":
                lines.insert(j, lines[i])
            elif how == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                del lines[i]
            out = bytearray(b"\n".join(lines))
    return bytes(out)


NASTY_VALUES = [None, True, False, 0, -1, 1.5, 2**31, 2**63, 2**64, 10**30, float("nan"),
                float("inf"), "", "x", "(", "\ud800", [], {}, [1], ["a", "b"], [[1, 2, 3]],
                {"a": 1}, [[[[[]]]]]]


def _paths(value, prefix=()):
    """Every path (tuple of keys / indices) to a value inside ``value``, the root excluded."""
    items = (value.items() if isinstance(value, dict) else
             enumerate(value) if isinstance(value, list) else ())
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


@st.composite
def mutated_json(draw, doc):
    """``doc`` (a JSON value) after one or two structural mutations."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 2))):
        paths = list(_paths(doc))
        depth = draw(st.sampled_from([1, 2, None]))          # top-level fields as often as deep items
        paths = [p for p in paths if depth is None or len(p) <= depth] or paths
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "dup"]))
        if op == "replace":
            parent[key] = copy.deepcopy(draw(st.sampled_from(NASTY_VALUES)))
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = [parent[key], parent[key]]
    return doc


@st.composite
def mutated_json_file(draw, doc):
    """Bytes of a JSON file: ``doc`` mutated structurally, or its text mutated byte-wise."""
    if draw(st.booleans()):
        return json.dumps(draw(mutated_json(doc))).encode("utf-8")
    return draw(mutated_bytes(json.dumps(doc).encode("utf-8")))


# ------------------------------------------------------------------------------------------------
# the bounded run and the verdict
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def address_space_cap(extra=ADDRESS_SPACE_EXTRA):
    """Lower the soft ``RLIMIT_AS`` to the current address space + ``extra`` bytes while the block
    runs, so a reader that trusts a declared size fails with a ``MemoryError`` (a test failure)
    instead of taking the machine down; the limit is restored afterwards."""
    try:
        import resource
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def bounded(load, size, names):
    """Run ``load()`` under ``tracemalloc`` and an address-space cap; return its result, or the
    ``ValueError`` it raised. Fails on any other exception, on a message that names none of
    ``names`` or spans lines, and on memory or time beyond the bounds."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), address_space_cap():
            warnings.simplefilter("ignore")
            result = load()
    except ValueError as exc:
        result = exc
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    bound = MEMORY_FACTOR * size + MEMORY_BASE
    assert peak <= bound, f"peak {peak:,} bytes for a {size:,}-byte file (bound {bound:,})"
    assert elapsed < TIME_LIMIT, f"{elapsed:.1f} s"
    if isinstance(result, ValueError):
        message = str(result)
        assert type(result) not in (UnicodeDecodeError, json.JSONDecodeError), repr(result)
        assert any(name in message for name in names), f"the error names no file: {message!r}"
        assert "\n" not in message, f"a multi-line message: {message!r}"
    return result


def write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def check_model_scores(model):
    """A loaded n-gram model scores sentences without NaN (log-probabilities are <= 0 or -inf)."""
    for seq in ([], [0, 1, 2], [5, 5, 5, 5], [10**6]):
        s = model.score(seq)
        assert not np.isnan(s) and s <= 1e-9


def check_tokenizer_works(tok):
    """A loaded tokenizer encodes into its id range and decodes (or refuses with a ValueError, as
    for text its vocabulary cannot spell)."""
    for text in (TEXT, "", "<|endoftext|> x"):
        try:
            ids = tok.encode(text)
        except ValueError:
            continue
        assert ids.dtype == np.int64 and ids.ndim == 1
        assert ids.size == 0 or (0 <= ids.min() and ids.max() < tok.vocab_size)
        assert isinstance(tok.decode(ids), str)


# ------------------------------------------------------------------------------------------------
# ARPA files
# ------------------------------------------------------------------------------------------------
def small_ngram(order=3):
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 8, rng.integers(0, 12)).tolist() for _ in range(30)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NGramLM(order).fit(seqs)


@pytest.fixture(scope="module")
def arpa_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("arpa") / "m.arpa"
    small_ngram().to_arpa(path)
    NGramLM.from_arpa(path)                              # warm the kernels before measuring
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_arpa(tmp_path_factory, arpa_bytes, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.arpa"
    size = write(path, data.draw(mutated_bytes(arpa_bytes)))
    result = bounded(lambda: NGramLM.from_arpa(path), size, [str(path)])
    if not isinstance(result, ValueError):
        check_model_scores(result)


def test_arpa_round_trip_is_exact(tmp_path, arpa_bytes):
    path = tmp_path / "m.arpa"
    write(path, arpa_bytes)
    m, back = small_ngram(), NGramLM.from_arpa(path)
    for seq in ([], [0, 1, 2], [7, 7, 3]):
        assert back.score(seq) == pytest.approx(m.score(seq), abs=1e-6)


@pytest.mark.parametrize("edit, match", [
    # a declared count far beyond the file: refused from the size, before anything is allocated
    (lambda t: re.sub(r"ngram 1=\d+", "ngram 1=100000000000", t), r"announces 100,000,000,000 1-grams.*file has"),
    (lambda t: re.sub(r"ngram 3=\d+", "ngram 3=99999999999999999999", t), "malformed count line"),
    (lambda t: t.replace("ngram 1=", "ngram 999999999999999=1\nngram 1=", 1), "must list ngram 1="),
    (lambda t: t.replace("ngram 2=", "ngram 1=5\nngram 2=", 1), "announced twice"),
    (lambda t: t.replace("\\3-grams:", "\\7-grams:"), r"section '\\\\7-grams:' is not one of"),
    (lambda t: t.replace("\\2-grams:", "\\1-grams:"), r"a second \\1-grams: section"),
    (lambda t: re.sub(r"\t[0-9]+\t", "\t99999999999999999999\t", t, count=1), "does not fit in int64"),
    (lambda t: re.sub(r"\t[0-9]+\t", "\t9223372036854775808\t", t, count=1), "does not fit in int64"),
    (lambda t: re.sub(r"\n(-?[0-9.]+)\t([0-9]+) ", r"\n\1\t\2  x ", t, count=1), r":\d+: .*must hold 2 word\(s\), got 3"),
])
def test_hostile_arpa_headers_and_ids(tmp_path, arpa_bytes, edit, match):
    path = tmp_path / "m.arpa"
    size = write(path, edit(arpa_bytes.decode()).encode())
    result = bounded(lambda: NGramLM.from_arpa(path), size, [str(path)])
    assert isinstance(result, ValueError) and re.search(match, str(result)), result


def test_arpa_errors_name_the_line(tmp_path, arpa_bytes):
    lines = arpa_bytes.decode().split("\n")
    i = lines.index("\\2-grams:") + 2
    lines[i] = re.sub(r"\t[^ ]+ ", "\tzz ", lines[i], count=1)
    path = tmp_path / "m.arpa"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"m.arpa:{i + 1}: .*'zz'"):
        NGramLM.from_arpa(path)


def test_arpa_file_must_be_regular_utf8_and_bounded(tmp_path, arpa_bytes):
    path = tmp_path / "m.arpa"
    write(path, arpa_bytes)
    with pytest.raises(ValueError, match="more than the 100 an? ARPA file may have"):
        NGramLM.from_arpa(path, max_bytes=100)
    with pytest.raises(ValueError, match="is a directory"):
        NGramLM.from_arpa(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        NGramLM.from_arpa(fifo)
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is a device"):
        NGramLM.from_arpa(tmp_path / "zero")
    write(path, arpa_bytes.replace(b"\\data\\", b"\\data\\\xff", 1))
    with pytest.raises(ValueError, match=r"not UTF-8 text: invalid byte 0xff at byte offset \d+"):
        NGramLM.from_arpa(path)
    write(path, arpa_bytes)
    with pytest.raises(ValueError, match=r"word_to_id\['0'\] must be an int in \[0, 2\*\*63\)"):
        NGramLM.from_arpa(path, word_to_id={str(i): ("x" if i == 0 else i) for i in range(20)})


# ------------------------------------------------------------------------------------------------
# the n-gram's own checkpoints
# ------------------------------------------------------------------------------------------------
def _split_safetensors(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(header, body: bytes) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) % 256 == 0x80:   # io.read_checkpoint takes a first byte 0x80 for pickle's magic
        raw += b" " * 8
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.fixture(scope="module")
def ngram_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "m.safetensors"
    small_ngram().save(path, note="fuzz")
    NGramLM.load(path)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_ngram_checkpoint(tmp_path_factory, ngram_checkpoint, data):
    header, body = _split_safetensors(ngram_checkpoint)
    how = data.draw(st.sampled_from(["bytes", "header", "meta"]))
    if how == "bytes":
        blob = data.draw(mutated_bytes(ngram_checkpoint))
    elif how == "header":                               # shapes, dtypes, offsets, names
        meta = header.pop("__metadata__")
        header = data.draw(mutated_json(header))
        if isinstance(header, dict):
            header["__metadata__"] = meta
        blob = _join_safetensors(header, body)
    else:                                               # the checkpoint's JSON document
        doc = json.loads(header["__metadata__"]["__meta__"])
        header = dict(header, __metadata__={"__meta__": json.dumps(data.draw(mutated_json(doc)))})
        blob = _join_safetensors(header, body)
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    size = write(path, blob)
    result = bounded(lambda: NGramLM.load(path), size, [str(path)])
    if not isinstance(result, ValueError):
        check_model_scores(result[0])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["meta"].update(config=[1]), r"meta.config must be an object, got list"),
    (lambda d: d["meta"]["config"].update(order="3"), r"meta.config.order must be an int >= 1, got str"),
    (lambda d: d["meta"]["config"].update(order=10**12), r"order is 1000000000000, which needs"),
    (lambda d: d["meta"]["config"].update(smoothing=["kneser_ney"]), "smoothing must be a str"),
    (lambda d: d["meta"]["config"].update(k="1"), "k must be a finite number"),
    (lambda d: d["meta"]["config"].update(discounts={"a": 1}), "discounts must be a list of three"),
    (lambda d: d["meta"].update(discounts=[1, 2]), "meta.discounts must be an object"),
    (lambda d: d["meta"].update(discounts={"x": [0.5, 1, 1.5]}), "meta.discounts has the key 'x'"),
    (lambda d: d["meta"].update(discounts={"1": "abc"}), r"meta.discounts\['1'\] must be a list"),
    (lambda d: d.pop("meta"), "'meta'"),
])
def test_hostile_ngram_checkpoint_metadata(tmp_path, ngram_checkpoint, edit, match):
    header, body = _split_safetensors(ngram_checkpoint)
    doc = json.loads(header["__metadata__"]["__meta__"])
    edit(doc)
    header["__metadata__"]["__meta__"] = json.dumps(doc)
    path = tmp_path / "m.safetensors"
    write(path, _join_safetensors(header, body))
    with pytest.raises(ValueError, match=match):
        NGramLM.load(path)


@pytest.mark.parametrize("name, value, match", [
    ("model/vocab", np.array([3, 1, 2]), "model/vocab must be a sorted vector"),
    ("model/vocab", np.array([0.0, 1.0]), "model/vocab must be a sorted vector"),
    ("model/order1.logp", "str", "order-1 logp must be float"),
    ("model/order2.counts", np.zeros(0), "order-2 counts has shape"),
    ("model/order1.keys", "shift", "order-1 keys must be outcome indices"),
    ("model/order9.keys", np.zeros(1, np.int64), "needs 13 model arrays"),
])
def test_hostile_ngram_checkpoint_arrays(tmp_path, name, value, match):
    from scratchlm.io import read_checkpoint, save_checkpoint
    path = tmp_path / "m.npz"
    small_ngram().save(path)
    arrays, doc = read_checkpoint(path)
    if isinstance(value, str) and value == "str":
        value = arrays[name].astype(str)
    elif isinstance(value, str):
        value = arrays[name] + 10**6

    class Fake:
        def state_dict(self):
            state = {k[len("model/"):]: v for k, v in arrays.items()}
            state[name[len("model/"):]] = value
            return state

        def generators(self):
            return iter(())
    Fake.__name__ = "NGramLM"
    save_checkpoint(path, Fake(), **doc["meta"])
    with pytest.raises(ValueError, match=match):
        NGramLM.load(path)


# ------------------------------------------------------------------------------------------------
# tokenizer files, every kind
# ------------------------------------------------------------------------------------------------
def tiny_gpt2():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "t"), ("c", "at")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


@pytest.fixture(scope="module")
def tokenizer_docs():
    vocab, merges = tiny_gpt2()
    toks = [CharTokenizer.train(TEXT), ByteTokenizer(), WordTokenizer.train(TEXT, lowercase=True),
            BPETokenizer.train(TEXT, 256 + 40, special_tokens=["<|endoftext|>"]),
            GPT2Tokenizer.from_vocab_and_merges(vocab, merges)]
    return [t.to_dict() for t in toks]


@FUZZ
@given(data=st.data())
def test_fuzz_tokenizer_files(tmp_path_factory, tokenizer_docs, data):
    doc = data.draw(st.sampled_from(tokenizer_docs))
    path = tmp_path_factory.getbasetemp() / "fuzz-tok.json"
    size = write(path, data.draw(mutated_json_file(doc)))
    result = bounded(lambda: load_tokenizer(path), size, [str(path)])
    if not isinstance(result, ValueError):
        check_tokenizer_works(result)


@FUZZ
@given(data=st.data())
def test_fuzz_tokenizer_from_dict(tokenizer_docs, data):
    d = data.draw(mutated_json(data.draw(st.sampled_from(tokenizer_docs))))
    size = len(json.dumps(d))
    if not isinstance(d, dict):
        with pytest.raises(TypeError, match="d must be a dict"):
            Tokenizer.from_dict(d)
        return
    result = bounded(lambda: Tokenizer.from_dict(d), size, ["tokenizer", "merges", "vocab", "chars",
                                                            "words", "special_tokens", "pattern"])
    if not isinstance(result, ValueError):
        check_tokenizer_works(result)


# ------------------------------------------------------------------------------------------------
# GPT-2's vocab.json + merges.txt
# ------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_gpt2_vocab_and_merges(tmp_path_factory, data):
    vocab, merges = tiny_gpt2()
    folder = tmp_path_factory.getbasetemp() / "fuzz-gpt2"
    folder.mkdir(exist_ok=True)
    vocab_bytes = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
    merges_bytes = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
    which = data.draw(st.sampled_from(["vocab", "merges", "both"]))
    if which in ("vocab", "both"):
        vocab_bytes = data.draw(st.one_of(mutated_bytes(vocab_bytes), mutated_json(vocab).map(
            lambda v: json.dumps(v).encode("utf-8"))))
    if which in ("merges", "both"):
        merges_bytes = data.draw(mutated_bytes(merges_bytes))
    size = write(folder / "vocab.json", vocab_bytes) + write(folder / "merges.txt", merges_bytes)
    result = bounded(lambda: GPT2Tokenizer.from_pretrained(folder), size,
                     [str(folder / "vocab.json"), str(folder / "merges.txt")])
    if not isinstance(result, ValueError):
        check_tokenizer_works(result)


@pytest.mark.parametrize("text", ['{"type": "char", "chars": "ab", "version": ' + "1" * 5000 + "}",
                                  '{"type": "bpe", "merges": [[' + "9" * 5000 + ', 1]]}'])
def test_json_integers_beyond_python_limit_are_named(tmp_path, text):
    """Python refuses to convert integers of more than 4300 digits: a named error, not a bare one."""
    path = tmp_path / "tok.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="tok.json: not valid JSON .*4300 digits"):
        load_tokenizer(path)


def test_gpt2_files_must_be_regular(tmp_path):
    vocab, merges = tiny_gpt2()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    os.mkfifo(tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="merges.txt is a FIFO"):
        GPT2Tokenizer.from_pretrained(tmp_path)
    os.remove(tmp_path / "merges.txt")
    (tmp_path / "merges.txt").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="merges.txt is a device"):
        GPT2Tokenizer.from_pretrained(tmp_path)
    os.remove(tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\n")
    (tmp_path / "vocab.json").write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(ValueError, match="vocab.json.*nested deeper"):
        GPT2Tokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# corpora
# ------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_corpus(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz-corpus.txt"
    size = write(path, data.draw(mutated_bytes(TEXT.encode("utf-8"))))
    result = bounded(lambda: load_corpus(path), size, [str(path)])
    if not isinstance(result, ValueError):
        assert isinstance(result, str) and result.strip() and "\r" not in result


# ------------------------------------------------------------------------------------------------
# word vectors: the word2vec text and binary formats
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["text", "binary"])
def vectors_file(request, tmp_path_factory):
    from scratchlm.models import KeyedVectors
    rng = np.random.default_rng(5)
    keys = ["the", "cat", "café", "東京", "x", "naïve", "a-b", "Z"]
    kv = KeyedVectors(keys, (rng.standard_normal((len(keys), 6)) *
                             10.0 ** rng.integers(-20, 20, (len(keys), 6))).astype(np.float32))
    path = tmp_path_factory.mktemp("vectors") / "v"
    kv.save_word2vec_format(path, binary=request.param)
    return request.param, path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_word2vec_format(tmp_path_factory, vectors_file, data):
    from scratchlm.models import KeyedVectors
    binary, original = vectors_file
    path = tmp_path_factory.getbasetemp() / ("fuzz-vectors.bin" if binary else "fuzz-vectors.txt")
    size = write(path, data.draw(mutated_bytes(original)))
    limit = data.draw(st.sampled_from([None, None, 1, 3, 100]))
    result = bounded(lambda: KeyedVectors.load_word2vec_format(path, binary=binary, limit=limit),
                     size, [str(path)])
    if not isinstance(result, ValueError):             # a load that works: distinct words,
        keys, vec = result.index_to_key, result.vectors    # finite vectors, similarities
        assert len(set(keys)) == len(keys) == vec.shape[0] >= 1
        assert all(isinstance(k, str) and k and not any(c.isspace() for c in k) for k in keys)
        assert vec.dtype == np.float32 and np.isfinite(vec).all()
        sims = [s for _, s in result.most_similar(keys[0], topn=2)] if len(keys) > 1 else []
        assert np.isfinite(sims).all()


PAIRS = "# a comment\nWord 1\tWord 2\tScore\nthe\tcat\t7.5\ncat\tcafé\t2\nx\tZ\t9.25\n"
ANALOGIES = ": capital\nthe cat x Z\ncat the Z x\n: other\ncafé x the cat\n"


@FUZZ
@given(data=st.data())
def test_fuzz_evaluation_files(tmp_path_factory, data):
    from scratchlm.models import KeyedVectors
    keys = ["the", "cat", "café", "x", "Z"]
    kv = KeyedVectors(keys, np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    which = data.draw(st.sampled_from(["pairs", "analogies"]))
    path = tmp_path_factory.getbasetemp() / f"fuzz-{which}.txt"
    size = write(path, data.draw(mutated_bytes((PAIRS if which == "pairs" else ANALOGIES)
                                               .encode("utf-8"))))
    read = kv.evaluate_word_pairs if which == "pairs" else kv.evaluate_word_analogies
    bounded(lambda: read(path), size, [str(path)])      # a result, or a ValueError naming it


# ------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 folders
# ------------------------------------------------------------------------------------------------
HF_CONFIG = {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "vocab_size": 20, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2,
             "n_inner": None, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
             "add_cross_attention": False, "tie_word_embeddings": True}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_tensors(model):
    """Our GPT's state in Hugging Face's names and Conv1D layout (as ``save_pretrained`` writes)."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = k[len("transformer."):]
        out[name] = np.ascontiguousarray(v.T if name.endswith(CONV1D) else v)
    return out


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=5)
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    tensors = hf_tensors(model)
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))   # an old mask buffer
    save_safetensors(folder / "model.safetensors", tensors)
    return folder, model


def test_from_pretrained_reads_our_own_export(hf_folder):
    folder, model = hf_folder
    back = GPT.from_pretrained(folder)
    idx = np.array([[1, 2, 3, 4, 19]])
    model.eval()
    np.testing.assert_allclose(back(idx), model(idx), rtol=1e-6, atol=1e-6)


@FUZZ
@given(data=st.data())
def test_fuzz_from_pretrained(tmp_path_factory, hf_folder, data):
    src, _ = hf_folder
    folder = tmp_path_factory.getbasetemp() / "fuzz-hf"
    folder.mkdir(exist_ok=True)
    config = (src / "config.json").read_bytes()
    weights = (src / "model.safetensors").read_bytes()
    how = data.draw(st.sampled_from(["config", "header", "weights"]))
    if how == "config":
        config = data.draw(mutated_json_file(HF_CONFIG))
    elif how == "header":
        header, body = _split_safetensors(weights)
        weights = _join_safetensors(data.draw(mutated_json(header)), body)
    else:
        weights = data.draw(mutated_bytes(weights))
    size = write(folder / "config.json", config) + write(folder / "model.safetensors", weights)
    result = bounded(lambda: GPT.from_pretrained(folder), size, [str(folder)])
    if not isinstance(result, ValueError):
        logits = result(np.array([[0, 1, 2]]) % result.config.vocab_size)
        assert np.isfinite(logits).all()


def _hf_case(folder, config=None, tensors=None):
    (folder / "config.json").write_text(json.dumps({**HF_CONFIG, **(config or {})}))
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=5)
    t = hf_tensors(model)
    for k, v in (tensors or {}).items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    save_safetensors(folder / "model.safetensors", t)
    return folder


@pytest.mark.parametrize("config, tensors, match", [
    # a declared model far larger than the weights: refused before building anything
    ({"n_layer": 10**6, "n_embd": 4096, "n_head": 32}, None, r"declares .* parameters .* bytes; .* has"),
    ({"vocab_size": "20"}, None, "vocab_size must be an int >= 1, got '20'"),
    ({"n_embd": 7}, None, r"config.json: n_embd \(7\) must be divisible by n_head \(2\)"),
    ({"n_inner": 64}, None, "n_inner must be null or 4 \\* n_embd = 32"),
    ({"scale_attn_weights": False}, None, "scale_attn_weights must be true"),
    ({"scale_attn_by_inverse_layer_idx": True}, None, "scale_attn_by_inverse_layer_idx must be false"),
    ({"activation_function": "relu"}, None, "activation_function must be GPT-2's tanh GELU"),
    ({"layer_norm_epsilon": "1e-5"}, None, "layer_norm_epsilon must be 1e-5"),
    ({"model_type": "llama"}, None, "model_type must be 'gpt2'"),
    ({"tie_word_embeddings": False}, None, "tie_word_embeddings is false, but .* no lm_head.weight"),
    (None, {"wpe.weight": np.zeros((9, 8), np.float32)}, r"'wpe.weight' has shape \(9, 8\), expected \(8, 8\)"),
    (None, {"h.0.ln_1.bias": None}, "lacks 1 GPT-2 tensor.*h.0.ln_1.bias"),
    (None, {"h.0.extra": np.zeros(3, np.float32)}, "'h.0.extra' is not a GPT-2 parameter"),
    (None, {"transformer.wte.weight": np.zeros((20, 8), np.float32)}, "are the same parameter"),
    (None, {"ln_f.bias": np.full(8, np.nan, np.float32)}, "'ln_f.bias' holds NaN"),
    (None, {"ln_f.bias": np.full(8, 1e300)}, "'ln_f.bias' holds NaN, inf or values beyond float32"),
    (None, {"ln_f.bias": np.zeros(8, np.int32)}, "'ln_f.bias' has dtype int32"),
    (None, {"lm_head.weight": np.ones((20, 8), np.float32)}, "lm_head.weight differs from wte.weight"),
])
def test_hostile_from_pretrained(tmp_path, config, tensors, match):
    folder = _hf_case(tmp_path, config, tensors)
    size = sum(os.path.getsize(folder / f) for f in ("config.json", "model.safetensors"))
    result = bounded(lambda: GPT.from_pretrained(folder), size, [str(folder)])
    assert isinstance(result, ValueError) and re.search(match, str(result)), result


def test_from_pretrained_refuses_non_regular_config(tmp_path):
    folder = _hf_case(tmp_path)
    os.remove(folder / "config.json")
    os.mkfifo(folder / "config.json")
    with pytest.raises(ValueError, match="config.json is a FIFO"):
        GPT.from_pretrained(folder)
    os.remove(folder / "config.json")
    (folder / "config.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(ValueError, match="config.json: JSON nested deeper"):
        GPT.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# the command line: one line on stderr, exit 2, never a traceback
# ------------------------------------------------------------------------------------------------
def _error_lines(err):
    """stderr without the progress bar the training command draws (tqdm's own lines)."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("train markov:")]


@pytest.mark.parametrize("kind", ["fifo", "directory", "binary", "device", "not_utf8", "huge",
                                  "missing"])
def test_cli_corpus_errors_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / "corpus.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"text\x00\x01\x02" + bytes(range(256)))
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "not_utf8":
        path.write_bytes("caf\xe9\n".encode("latin-1") * 10)
    elif kind == "huge":                              # sparse: 4 GiB declared, no disk used
        with open(path, "wb") as f:
            f.truncate(4 << 30)
    code = main(["train", "markov", "--corpus", str(path), "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("scratchlm train markov: error:"), err
    assert "corpus.txt" in lines[0]


def test_cli_fifo_corpus_does_not_hang(tmp_path):
    """A subprocess, so that a reader that opened the FIFO would be killed by the timeout."""
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "scratchlm", "train", "markov", "--corpus", str(fifo),
                           "--out", str(tmp_path / "m.npz")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert lines == [f"scratchlm train markov: error: {fifo} is a FIFO, not a regular corpus file; "
                     f"refusing to read it"]
