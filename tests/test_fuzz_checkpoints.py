"""Fuzzing the checkpoint readers: every mutation of a valid checkpoint (.npz and .safetensors)
either loads correctly or is refused with a ``ValueError`` naming the file -- never another
exception, never a load that is half done, and always within a bound on memory and time.

What is mutated (hypothesis, a bounded budget per property):

* **truncation** at any byte: must always be refused;
* **flipped bytes** anywhere, biased towards the structure (zip headers, ``.npy`` headers, the
  central directory, the safetensors JSON header);
* **spliced headers**: an ``.npy`` member header replaced by a generated one (any dtype, shape,
  order; the zip's CRCs recomputed so the header check itself is what is exercised), a
  safetensors header entry given a hostile value (negative, huge, float, bool, text, lists);
* **inflated declared sizes**: zip size/offset fields (local headers, central directory, end
  record) and safetensors offsets/shapes set to arbitrary values.

Each load runs under ``tracemalloc``: the peak must stay below a few times the file's size (a
file cannot make the reader allocate what it declares but does not hold), and within seconds. A
load that succeeds is compared with the original (an .npz is CRC-protected, so it must be the
original exactly); :func:`load_checkpoint` is then run into a model and optimizer, which must be
either fully loaded or untouched.
"""

import copy
import io
import json
import os
import struct
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import same_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm import nn
from scratchlm.io import (load_checkpoint, load_safetensors, read_checkpoint, save_checkpoint,
                          save_safetensors)
from scratchlm.optim import AdamW

#: examples per property: 30 by default (a few seconds in all); SCRATCHLM_FUZZ_EXAMPLES=2000 soaks
try:
    import safetensors.numpy as SAFETENSORS      # the reference reader, an oracle when installed
except ImportError:
    SAFETENSORS = None

FUZZ = settings(max_examples=int(os.environ.get("SCRATCHLM_FUZZ_EXAMPLES", 30)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SUFFIXES = [".npz", ".safetensors"]
PEAK_FACTOR, PEAK_SLACK = 3, 2 << 20      # peak traced memory <= 3 x file size + 2 MiB
SECONDS = 5.0                             # per load, on a busy two-core machine


def _model(seed=0):
    return nn.Sequential(nn.Linear(32, 64, rng=seed), nn.Dropout(0.1, rng=seed), nn.LayerNorm(64),
                         nn.Linear(64, 8, rng=seed + 1))


def _optimizer(net):
    opt = AdamW(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad[...] = 0.5
    opt.step()
    return opt


WORK = Path(tempfile.mkdtemp(prefix="scratchlm-fuzz-"))
VALID, ORIGINAL = {}, {}
for _suffix in SUFFIXES:
    _net = _model(0)
    save_checkpoint(WORK / f"valid{_suffix}", _net, _optimizer(_net), step=1, config={"d": 64})
    VALID[_suffix] = (WORK / f"valid{_suffix}").read_bytes()
    ORIGINAL[_suffix] = read_checkpoint(WORK / f"valid{_suffix}")


def _structure(data, suffix):
    """Byte positions where the structure lives (headers, directories), for biased flips."""
    if suffix == ".safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        return list(range(8 + n))
    positions = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            positions += range(info.header_offset, info.header_offset + 30 + len(info.filename) + 20 + 128)
    positions += range(data.find(b"PK\x01\x02"), len(data))    # the central directory, the end
    return sorted(set(p for p in positions if 0 <= p < len(data)))


STRUCTURE = {s: _structure(VALID[s], s) for s in SUFFIXES}


def _snapshot(net, opt):
    return ([v.copy() for v in net.state_dict().values()],
            {k: g.bit_generator.state for k, g in net.generators()},
            copy.deepcopy(opt.state_dict()))




def _check(data, suffix, must_fail=False, oracle="original"):
    """Write ``data``, read it under tracemalloc: a ``ValueError`` naming the file, or a correct
    load; then load it into a model and optimizer: all or nothing.

    A correct load: an .npz is CRC-protected, so a damaged one that loads (``oracle="original"``)
    must give the original arrays bit for bit, and a well-formed zip with a spliced member
    (``oracle="numpy"``) what ``np.load(allow_pickle=False)`` reads from it. A safetensors file
    has no checksum (a flipped name or value is another valid file): what loads must be what the
    reference implementation (the ``safetensors`` package, when installed) reads from it."""
    path = WORK / f"mutant{suffix}"
    path.write_bytes(data)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        try:
            result = read_checkpoint(path)
        except ValueError as exc:
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < SECONDS
    assert peak <= PEAK_FACTOR * len(data) + PEAK_SLACK, f"peak {peak:,} for a {len(data):,}-byte file"
    if isinstance(result, ValueError):
        assert str(path) in str(result) and "\n" not in str(result), str(result)
    else:
        assert not must_fail, "a damaged file loaded"
        arrays, doc = result
        if oracle == "numpy":
            with np.load(io.BytesIO(data), allow_pickle=False) as reference:
                assert sorted(reference.files) == sorted([*arrays, "__meta__"])
                for k, v in arrays.items():                  # ours in native byte order
                    theirs = reference[k]
                    assert v.dtype == theirs.dtype.newbyteorder("=") and v.dtype.isnative, k
                    assert same_state(v, theirs.astype(v.dtype)), k
                assert json.loads(str(reference["__meta__"])) == doc
            return
        if suffix == ".npz":
            original_arrays, original_doc = ORIGINAL[suffix]
            assert arrays.keys() == original_arrays.keys() and doc == original_doc
            for k, v in arrays.items():
                assert same_state(v, original_arrays[k]), k
        elif SAFETENSORS is not None:
            from safetensors import safe_open
            reference = SAFETENSORS.load(data)       # raises if the reference refuses the file
            assert set(reference) == set(arrays)
            for k, v in arrays.items():
                assert same_state(v, reference[k]), k
            with safe_open(str(path), "np") as f:
                assert json.loads(f.metadata()["__meta__"]) == doc
    net = _model(3)
    opt = _optimizer(net)
    before = _snapshot(net, opt)
    try:
        load_checkpoint(path, net, opt)
    except ValueError as exc:
        assert str(path) in str(exc)
        assert same_state(_snapshot(net, opt), before), "a refused load changed the model or optimizer"
    else:
        assert not isinstance(result, ValueError)
        assert same_state([v for v in net.state_dict().values()],
                     [result[0]["model/" + k] for k in net.state_dict()])


# ------------------------------------------------------------------------------------------------
# the properties
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_valid_files_load(suffix):
    _check(VALID[suffix], suffix)


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(data=st.data())
def test_truncated_files_are_refused(suffix, data):
    n = data.draw(st.one_of(st.integers(0, len(VALID[suffix]) - 1),
                            st.sampled_from(STRUCTURE[suffix])), label="length")
    _check(VALID[suffix][:n], suffix, must_fail=True)


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(data=st.data())
def test_flipped_bytes(suffix, data):
    blob = bytearray(VALID[suffix])
    anywhere = st.integers(0, len(blob) - 1)
    where = st.one_of(anywhere, st.sampled_from(STRUCTURE[suffix]))
    flips = data.draw(st.lists(st.tuples(where, st.integers(1, 255)), min_size=1, max_size=8),
                      label="flips")
    for i, x in flips:
        blob[i] ^= x
    _check(bytes(blob), suffix)


_DESCRS = ["<f4", "<f8", ">f4", "<i8", "|b1", "|u1", "<U7", "|O", "V8", "<M8[s]", "<c16",
           "[('a', '<f4')]", "('<f4', (2,))", "'<f4'", "1"]


def _npy(descr, shape, fortran, body):
    literal = descr if descr[:1] in "[('1" else repr(descr)      # some are literals already
    text = f"{{'descr': {literal}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header = text.encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


@FUZZ
@given(data=st.data())
def test_spliced_npy_headers(data):
    """A member's .npy header replaced by a generated one, the zip rebuilt with correct CRCs."""
    with zipfile.ZipFile(io.BytesIO(VALID[".npz"])) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    name = data.draw(st.sampled_from(sorted(members)), label="member")
    shape = tuple(data.draw(st.lists(st.one_of(st.integers(-3, 70), st.integers(0, 1 << 62)),
                                     max_size=5), label="shape"))
    descr = data.draw(st.sampled_from(_DESCRS), label="descr")
    body = members[data.draw(st.sampled_from(sorted(members)), label="body of")]
    body = body[body.index(b"\n") + 1:]                        # another member's data
    body = body[:data.draw(st.integers(0, len(body)), label="cut")]
    members[name] = _npy(descr, shape, data.draw(st.booleans()), body)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    _check(out.getvalue(), ".npz", oracle="numpy")


def _zip_fields(blob):
    """(offset, struct format) of every size/offset field in the zip's headers."""
    fields = []
    for sig, spec in ((b"PK\x03\x04", [(14, "<I"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H")]),
                      (b"PK\x01\x02", [(16, "<I"), (20, "<I"), (24, "<I"), (28, "<H"), (30, "<H"),
                                       (42, "<I")]),
                      (b"PK\x05\x06", [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H")])):
        start = blob.find(sig)
        while start != -1:
            fields += [(start + off, fmt) for off, fmt in spec]
            start = blob.find(sig, start + 4)
    return fields


ZIP_FIELDS = _zip_fields(VALID[".npz"])


@FUZZ
@given(data=st.data())
def test_inflated_zip_sizes(data):
    blob = bytearray(VALID[".npz"])
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        off, fmt = data.draw(st.sampled_from(ZIP_FIELDS), label="field")
        top = (1 << (8 * struct.calcsize(fmt))) - 1
        value = data.draw(st.one_of(st.integers(0, top), st.sampled_from([0, 1, top, top // 2])),
                          label="value")
        struct.pack_into(fmt, blob, off, value)
    _check(bytes(blob), ".npz")


_NASTY = st.one_of(st.integers(-(1 << 70), 1 << 70), st.integers(-3, 5000), st.booleans(),
                   st.none(), st.floats(allow_nan=True), st.text(max_size=4),
                   st.lists(st.one_of(st.integers(-5, 1 << 45), st.floats(0, 10)), max_size=4),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FUZZ
@given(data=st.data())
def test_spliced_and_inflated_safetensors_headers(data):
    blob = VALID[".safetensors"]
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    names = sorted(header)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        name = data.draw(st.sampled_from(names), label="tensor")
        if name == "__metadata__":
            header[name] = data.draw(st.one_of(_NASTY, st.dictionaries(st.text(max_size=3), _NASTY,
                                                                       max_size=2)))
            continue
        entry = header[name]
        if not isinstance(entry, dict):                        # replaced by an earlier edit
            continue
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "begin", "end",
                                           "scale", "entry", "swap"]), label="field")
        if field == "begin" and isinstance(entry.get("data_offsets"), list):
            entry["data_offsets"][0] = data.draw(st.integers(-10, 1 << 63))
        elif field == "end" and isinstance(entry.get("data_offsets"), list):
            entry["data_offsets"][-1] = data.draw(st.integers(-10, 1 << 63))
        elif field == "scale" and isinstance(entry.get("shape"), list) and entry["shape"]:
            entry["shape"][0] *= data.draw(st.sampled_from([0, 2, 1 << 20, 1 << 40]))
        elif field == "entry":
            header[name] = data.draw(_NASTY)
        elif field == "swap":                                  # another tensor's header entry
            header[name] = copy.deepcopy(header[data.draw(st.sampled_from(names))])
        elif field == "dtype":
            entry["dtype"] = data.draw(st.one_of(st.sampled_from(["F16", "BF16", "I8", "BOOL", "U64",
                                                                  "F8", "f32", ""]), _NASTY))
        elif field in entry:
            entry[field] = data.draw(_NASTY)
    raw = json.dumps(header).encode()
    _check(struct.pack("<Q", len(raw)) + raw + blob[8 + n:], ".safetensors")


@FUZZ
@given(declared=st.integers(0, (1 << 64) - 1), tail=st.binary(max_size=64))
def test_declared_header_lengths(declared, tail):
    _check(struct.pack("<Q", declared) + b"{" + tail, ".safetensors", must_fail=True)


_ST_DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "<u8", "<u4", "<u2", "u1", "?"]


@FUZZ
@given(tensors=st.dictionaries(
    st.text(min_size=1, max_size=6).filter(lambda s: s != "__metadata__"),
    st.tuples(st.sampled_from(_ST_DTYPES), st.lists(st.integers(0, 4), max_size=3)),
    max_size=5))
def test_safetensors_round_trip(tensors):
    rng = np.random.default_rng(0)
    arrays = {k: np.asarray(rng.standard_normal(shape) * 50).astype(dt)
              for k, (dt, shape) in tensors.items()}
    path = WORK / "roundtrip.safetensors"
    save_safetensors(path, arrays, {"n": str(len(arrays))})
    back, meta = load_safetensors(path)
    assert meta == {"n": str(len(arrays))} and back.keys() == arrays.keys()
    for k, v in arrays.items():
        assert same_state(back[k], v), k
