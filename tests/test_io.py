"""Checkpoints: round trip, atomic writes, refusal of truncated / pickled / foreign files;
safetensors read and write."""

import json
import os
import struct

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.io import (atomic_write, load_checkpoint, load_safetensors, read_checkpoint,
                          save_checkpoint, save_safetensors)


def model(seed=0):
    return nn.Sequential(nn.Linear(4, 8, rng=seed), nn.Dropout(0.5, rng=seed), nn.LayerNorm(8), nn.Linear(8, 3, rng=seed + 1))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_roundtrip_restores_weights_meta_and_random_state(tmp_path, suffix):
    a = model(0)
    path = tmp_path / f"ck{suffix}"
    save_checkpoint(path, a, step=7, config={"d": 8, "name": "mlp"})
    b = model(1)
    meta = load_checkpoint(path, b)
    assert meta == {"step": 7, "config": {"d": 8, "name": "mlp"}}
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        assert np.array_equal(u, v) and u.dtype == v.dtype, k
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(a(x), b(x))          # the dropout generators resume in step
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model(0), step=1)
    before = path.read_bytes()
    real_savez = np.savez

    def half_then_boom(f, **arrays):
        real_savez(f, **arrays)                       # the bytes really reach the temp file ...
        f.truncate(f.tell() // 2)                     # ... half of them survive ...
        raise OSError("disk full")                    # ... and the write dies
    monkeypatch.setattr(np, "savez", half_then_boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model(1), step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]       # no temp file left behind
    assert load_checkpoint(path, model(3)) == {"step": 1}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_creates_the_folder(tmp_path, suffix, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = os.path.join("run", "deeper", f"model{suffix}")       # relative, two levels missing
    save_checkpoint(path, model(0), step=1000, config={"d": 64})
    assert load_checkpoint(path, model(1)) == {"step": 1000, "config": {"d": 64}}
    assert os.listdir(os.path.join("run", "deeper")) == [f"model{suffix}"]
    save_safetensors(tmp_path / "st" / "t.safetensors", {"a": np.arange(3.0)})
    assert np.array_equal(load_safetensors(tmp_path / "st" / "t.safetensors")[0]["a"], np.arange(3.0))
    atomic_write(tmp_path / "raw" / "bytes.bin", lambda f: f.write(b"ok"))
    assert (tmp_path / "raw" / "bytes.bin").read_bytes() == b"ok"


def test_write_errors_name_the_target_not_the_temp_file(tmp_path, monkeypatch):
    import errno
    import tempfile
    path = tmp_path / "ck.npz"

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")    # no file name of its own
    with monkeypatch.context() as m:
        m.setattr(np, "savez", full)
        with pytest.raises(OSError, match="No space left") as info:
            save_checkpoint(path, model(0))
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)

    def read_only(dir, prefix, suffix):                          # what a read-only folder does
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "x1" + suffix))
    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(PermissionError) as info:
            save_checkpoint(path, model(0))
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)
    assert str(path) in str(info.value)

    (tmp_path / "afile").write_text("in the way")
    with pytest.raises(NotADirectoryError, match="afile"):
        save_checkpoint(tmp_path / "afile" / "ck.npz", model(0))
    assert sorted(os.listdir(tmp_path)) == ["afile"]             # nothing written, nothing left


def test_checkpoint_has_ordinary_file_mode(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model(0))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask


def test_raw_pickle_and_npy_files_are_refused(tmp_path):
    import pickle
    p = tmp_path / "weights.npz"
    p.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(ValueError, match="is a pickle file; refusing"):
        load_checkpoint(p, model(0))
    q = tmp_path / "a.npz"
    np.save(tmp_path / "a.npy", np.zeros(3))
    os.replace(tmp_path / "a.npy", q)
    with pytest.raises(ValueError, match="bare .npy array"):
        load_checkpoint(q, model(0))
    r = tmp_path / "junk.npz"
    r.write_bytes(b"hello world, this is text")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_checkpoint(r, model(0))


def test_optimizer_mismatch_leaves_the_model_untouched(tmp_path):
    from scratchlm.optim import SGD, AdamW
    a = model(0)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, a, AdamW(a.parameters()))
    b = model(1)
    before = {k: v.copy() for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match="holds AdamW state, not SGD"):
        load_checkpoint(path, b, SGD(b.parameters()))
    assert all(np.array_equal(before[k], v) for k, v in b.state_dict().items())


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model(0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path, model(0))
    st = tmp_path / "ck.safetensors"
    save_checkpoint(st, model(0))
    blob = st.read_bytes()
    st.write_bytes(blob[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(st, model(0))


def test_pickle_bearing_file_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array(json.dumps({"format": "scratchlm-checkpoint", "version": 1, "meta": {}})),
             **{"model/0.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickled objects"):
        load_checkpoint(path, model(0))


def test_foreign_and_mismatched_files_are_refused(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a scratchlm checkpoint"):
        load_checkpoint(other, model(0))
    ck = tmp_path / "ck.npz"
    save_checkpoint(ck, model(0))
    bigger = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.LayerNorm(16), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="mis-shaped keys"):
        load_checkpoint(ck, bigger)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz", model(0))
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(ck, model(0), bad=object())


def test_read_checkpoint_without_module(tmp_path):
    ck = tmp_path / "ck.npz"
    save_checkpoint(ck, model(0), step=3)
    arrays, doc = read_checkpoint(ck)
    assert doc["meta"] == {"step": 3} and doc["module"] == "Sequential"
    assert set(arrays) == {f"model/{k}" for k in model(0).state_dict()}


def test_safetensors_roundtrip_all_dtypes(tmp_path):
    tensors = {"f64": np.arange(6.0).reshape(2, 3), "f32": np.ones((4,), np.float32),
               "f16": np.array([1.5, -2], np.float16), "i64": np.array([[1, -2]], np.int64),
               "u8": np.arange(5, dtype=np.uint8), "b": np.array([True, False]),
               "scalar": np.array(3.0, np.float32), "empty": np.zeros((0, 2), np.float32)}
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, {"note": "hi"})
    back, meta = load_safetensors(path)
    assert meta == {"note": "hi"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0                         # data 8-byte aligned
    header = json.loads(raw[8:8 + n])
    assert header["f32"] == {"dtype": "F32", "shape": [4], "data_offsets": header["f32"]["data_offsets"]}


def test_safetensors_bf16_loads_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits)
    back, _ = load_safetensors(path)
    assert back["w"].dtype == np.float32 and np.array_equal(back["w"], values)


def test_safetensors_package_interop(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, tensors)
    for k, v in st.load_file(str(ours)).items():
        assert np.array_equal(v, tensors[k])
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(theirs))
    back, _ = load_safetensors(theirs)
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())


def test_corrupt_safetensors_header(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        load_safetensors(p)
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short"):
        load_safetensors(p)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_resume_with_optimizer_is_bit_identical(tmp_path, suffix):
    from scratchlm.optim import SGD, AdamW

    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(10)]

    def train(net, opt, batches):
        loss_fn = nn.CrossEntropyLoss()
        for x, t in batches:
            opt.zero_grad()
            loss_fn(net(x), t)
            net.backward(loss_fn.backward())
            opt.step()

    straight = model(0)                                  # 10 steps without interruption
    train(straight, AdamW(straight.parameters(), lr=1e-2, betas=(0.8, 0.99)), data)

    first = model(0)                                     # 4 steps, save ...
    opt1 = AdamW(first.parameters(), lr=1e-2, betas=(0.8, 0.99))
    train(first, opt1, data[:4])
    path = tmp_path / f"ck{suffix}"
    save_checkpoint(path, first, opt1, step=4)
    resumed = model(5)                                   # ... load into a differently seeded model
    opt2 = AdamW(resumed.parameters(), lr=0.5)
    assert load_checkpoint(path, resumed, opt2) == {"step": 4}
    assert opt2.state_dict()["param_groups"] == opt1.state_dict()["param_groups"]
    train(resumed, opt2, data[4:])                       # ... and finish: same bits as straight
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert np.array_equal(a, b), k
    with pytest.raises(ValueError, match="holds AdamW state, not SGD"):
        load_checkpoint(path, model(0), SGD(model(0).parameters()))
