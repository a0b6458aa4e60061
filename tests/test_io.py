"""Checkpoints: round trip, atomic writes, refusal of truncated / pickled / foreign files;
safetensors read and write."""

import json
import os
import struct

import numpy as np
import pytest
from conftest import same_state

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


# ------------------------------------------------------------------------------------------------
# all-or-nothing loads: every kind of mismatch leaves the model and the optimizer bit-identical
# ------------------------------------------------------------------------------------------------
def _trained(seed):
    """A model and an AdamW with state (two steps taken), all different per seed."""
    from scratchlm.optim import AdamW
    net = model(seed)
    opt = AdamW(net.parameters(), lr=1e-2 * (seed + 1))
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(net(rng.standard_normal((4, 4)).astype(np.float32)), rng.integers(0, 3, 4))
        net.backward(loss_fn.backward())
        opt.step()
    return net, opt


def _snapshot(net, opt):
    import copy
    return ({k: v.copy() for k, v in net.state_dict().items()},
            {k: g.bit_generator.state for k, g in net.generators()},
            copy.deepcopy(opt.state_dict()) if opt is not None else None)




def _write(path, arrays, doc):
    """A checkpoint with exactly these arrays and this JSON document (hand-made, to mismatch)."""
    text = json.dumps(doc)
    if str(path).endswith(".safetensors"):
        save_safetensors(path, arrays, {"__meta__": text})
    else:
        np.savez(path, __meta__=np.array(text), **arrays)


def _drop(arrays, doc, key):
    del arrays[key]


def _reshape(arrays, doc, key):
    arrays[key] = np.zeros(arrays[key].shape + (1,), arrays[key].dtype)


def _first_state_array(doc):
    return next(v for k, v in _walk(doc["optimizer"]["state"]) if k == "__array__")


def _walk(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _set_lr(doc, value):
    groups = next(v for k, v in doc["optimizer"]["state"]["__dict__"] if k == "param_groups")
    entries = groups[0]["__dict__"]
    next(e for e in entries if e[0] == "lr")[1] = value


MISMATCHES = {   # name -> (edit(arrays, doc), the words the error must contain)
    "missing model key": (lambda a, d: _drop(a, d, "model/3.bias"), "missing keys: 3.bias"),
    "unexpected model key": (lambda a, d: a.__setitem__("model/9.weight", np.zeros(2, np.float32)),
                             "unexpected keys: 9.weight"),
    "mis-shaped model key": (lambda a, d: _reshape(a, d, "model/3.weight"), "3.weight: expected (3, 8)"),
    "mis-typed model key": (lambda a, d: a.__setitem__("model/3.bias", np.ones(3, bool)),
                            "3.bias: dtype bool"),
    "float64 beyond float32": (lambda a, d: a.__setitem__("model/3.bias", np.full(3, 1e300)),
                               "beyond the range of float32"),
    "optimizer type": (lambda a, d: d["optimizer"].__setitem__("type", "SGD"), "holds SGD state"),
    "no optimizer": (lambda a, d: [d.__setitem__("optimizer", None)] + [
        a.pop(k) for k in list(a) if k.startswith("optim/")], "holds no optimizer state"),
    "optimizer state shape": (lambda a, d: _reshape(a, d, sorted(k for k in a if k.startswith("optim/"))[-1]),
                              "has shape"),
    "optimizer state array missing": (lambda a, d: _drop(a, d, _first_state_array(d)),
                                      "which the file does not hold"),
    "optimizer hyperparameter": (lambda a, d: _set_lr(d, "fast"), "lr must be a real number"),
    "optimizer negative lr": (lambda a, d: _set_lr(d, -1.0), "lr must be >= 0"),
    "generator state": (lambda a, d: d["rng"]["1.rng"]["state"].__setitem__("state", "x"),
                        "generator '1.rng' does not fit"),
    "generator of another kind": (lambda a, d: d["rng"]["1.rng"].__setitem__("bit_generator", "MT19937"),
                                  "generator '1.rng' does not fit"),
    "unknown generator": (lambda a, d: d["rng"].__setitem__("7.rng", d["rng"]["1.rng"]),
                          "saved but not in the module: ['7.rng']"),
    "missing generator": (lambda a, d: d["rng"].pop("1.rng"), "in the module but not saved"),
    "meta of the wrong type": (lambda a, d: d.__setitem__("meta", [1, 2]), "'meta' must be an object"),
    "rng of the wrong type": (lambda a, d: d.__setitem__("rng", ["x"]), "'rng' must be an object"),
    "optimizer of the wrong type": (lambda a, d: d.__setitem__("optimizer", [1]),
                                    "'optimizer' must be null or an object"),
    "version of the wrong type": (lambda a, d: d.__setitem__("version", "1"), "version must be an integer"),
    "stray array": (lambda a, d: a.__setitem__("optim/stray", np.zeros(2)), "nothing in it refers to"),
}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("kind", sorted(MISMATCHES))
def test_a_refused_checkpoint_changes_nothing(tmp_path, kind, suffix):
    a, opt_a = _trained(0)
    good = tmp_path / f"good{suffix}"
    save_checkpoint(good, a, opt_a, step=2)
    arrays, doc = read_checkpoint(good)
    edit, words = MISMATCHES[kind]
    edit(arrays, doc)
    bad = tmp_path / f"bad{suffix}"
    _write(bad, arrays, doc)

    b, opt_b = _trained(1)
    before = _snapshot(b, opt_b)
    with pytest.raises(ValueError) as info:
        load_checkpoint(bad, b, opt_b)
    assert str(bad) in str(info.value) and words in str(info.value), str(info.value)
    assert same_state(_snapshot(b, opt_b), before)
    x = np.ones((2, 4), np.float32)
    assert load_checkpoint(good, b, opt_b) == {"step": 2}      # and the good one still loads whole
    assert same_state(_snapshot(b, opt_b)[:2], _snapshot(a, opt_a)[:2]) and np.array_equal(a(x), b(x))


def test_optimizer_that_does_not_fit_is_refused_before_the_model_is_written(tmp_path):
    """The bug this guards against: the model's arrays were written, then the optimizer's state
    was refused (too few parameters in its group)."""
    from scratchlm.optim import AdamW
    a, opt_a = _trained(0)
    save_checkpoint(tmp_path / "ck.npz", a, opt_a)
    b, _ = _trained(1)
    fewer = AdamW(list(b.parameters())[:2])
    before = _snapshot(b, fewer)
    with pytest.raises(ValueError, match="has 6 parameters, but this AdamW's group has 2"):
        load_checkpoint(tmp_path / "ck.npz", b, fewer)
    assert same_state(_snapshot(b, fewer), before)
    two_groups = AdamW([{"params": list(b.parameters())[:2]}, {"params": list(b.parameters())[2:]}])
    with pytest.raises(ValueError, match="1 parameter groups, but this AdamW has 2"):
        load_checkpoint(tmp_path / "ck.npz", b, two_groups)
    assert same_state(_snapshot(b, None)[:2], before[:2])


def test_validate_runs_before_any_write(tmp_path):
    a, opt_a = _trained(0)
    save_checkpoint(tmp_path / "ck.npz", a, opt_a, step=5)
    b, opt_b = _trained(1)
    before = _snapshot(b, opt_b)
    seen = []

    def refuse(meta):
        seen.append(meta)
        assert same_state(_snapshot(b, opt_b), before)           # nothing written yet
        raise ValueError("the caller's own state does not fit")
    with pytest.raises(ValueError, match="caller's own state"):
        load_checkpoint(tmp_path / "ck.npz", b, opt_b, validate=refuse)
    assert seen == [{"step": 5}] and same_state(_snapshot(b, opt_b), before)


def test_module_load_state_dict_is_all_or_nothing():
    a, b = model(0), model(1)
    before = _snapshot(b, None)
    state = dict(a.state_dict())
    state["3.bias"] = np.array(["a", "b", "c"])               # the last key is mis-typed
    with pytest.raises(TypeError, match=r"3.bias: dtype <U1, expected numbers"):
        b.load_state_dict(state)
    state["3.bias"] = np.full(3, 1e39)                        # beyond float32
    with pytest.raises(ValueError, match="beyond the range of float32"):
        b.load_state_dict(state)
    with pytest.raises(TypeError, match="mapping of name -> array"):
        b.load_state_dict([("0.weight", np.zeros((8, 4)))])
    assert same_state(_snapshot(b, None), before)
    state["3.bias"] = np.full(3, np.inf)                      # infinity is a value, and fits
    b.load_state_dict(state)
    assert np.isinf(b.state_dict()["3.bias"]).all()


def test_tied_names_must_agree():
    from scratchlm.models import GPT, GPTConfig
    g = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)
    state = {k: v.copy() for k, v in g.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    before = _snapshot(g, None)
    with pytest.raises(ValueError, match="lm_head.weight: tied to transformer.wte.weight"):
        g.load_state_dict(state)
    assert same_state(_snapshot(g, None), before)


def test_optimizer_load_state_dict_is_all_or_nothing():
    import copy
    from scratchlm.optim import Adam
    a, opt_a = _trained(0)
    b, opt_b = _trained(1)
    good = opt_a.state_dict()
    before = copy.deepcopy(opt_b.state_dict())
    breakages = {
        "state not a dict": lambda sd: sd.__setitem__("state", [1]),
        "groups not a list": lambda sd: sd.__setitem__("param_groups", 3),
        "params not indices": lambda sd: sd["param_groups"][0].__setitem__("params", ["a"] * 6),
        "index listed twice": lambda sd: sd["param_groups"][0].__setitem__("params", [0] * 6),
        "state for no parameter": lambda sd: sd["state"].__setitem__(99, {}),
        "negative step": lambda sd: sd["state"][5].__setitem__("step", -1),
        "fractional step": lambda sd: sd["state"][5].__setitem__("step", 1.5),
        "text state": lambda sd: sd["state"][5].__setitem__("exp_avg", np.array(["x"] * 3)),
        "object state": lambda sd: sd["state"][5].__setitem__("extra", object()),
        "bad betas": lambda sd: sd["param_groups"][0].__setitem__("betas", (0.9, 1.5)),
    }
    for what, breakage in breakages.items():
        sd = copy.deepcopy(good)
        breakage(sd)
        with pytest.raises((ValueError, TypeError)):
            opt_b.load_state_dict(sd)
        assert same_state(copy.deepcopy(opt_b.state_dict()), before), what
    assert isinstance(opt_b, Adam)


@pytest.mark.parametrize("make", ["StepLR", "WarmupCosineLR", "LambdaLR"])
def test_scheduler_load_state_dict_is_all_or_nothing(make):
    import copy
    from scratchlm import optim
    makers = {"StepLR": lambda o: optim.StepLR(o, 4, gamma=0.3),
              "WarmupCosineLR": lambda o: optim.WarmupCosineLR(o, 3, 20, min_lr=1e-4),
              "LambdaLR": lambda o: optim.LambdaLR(o, lambda t: 0.9 ** t)}
    opt = optim.Adam(model(0).parameters(), lr=0.1)
    sched = makers[make](opt)
    for _ in range(5):
        sched.step()
    good = sched.state_dict()
    opt2 = optim.Adam(model(0).parameters(), lr=0.1)
    sched2 = makers[make](opt2)
    before = copy.deepcopy({k: v for k, v in sched2.__dict__.items() if k != "optimizer"})
    bad = [dict(good, last_epoch="5"), dict(good, last_epoch=-3), dict(good, base_lrs=[0.1, 0.1]),
           dict(good, _last_lr=[float("nan")]), dict(good, optimizer=None), dict(good, extra=1),
           {k: v for k, v in good.items() if k != "_step_count"}, [("last_epoch", 1)]]
    if make == "StepLR":
        bad += [dict(good, step_size=0), dict(good, gamma=-1.0)]
    if make == "WarmupCosineLR":
        bad += [dict(good, total_steps=2), dict(good, min_lrs=[1.0]), dict(good, warmup_steps=1.5)]
    if make == "LambdaLR":
        bad += [dict(good, lr_lambdas=[{"x": 1}]), dict(good, lr_lambdas=[None, None])]
    for state in bad:
        with pytest.raises((ValueError, TypeError)):
            sched2.load_state_dict(state)
        now = {k: v for k, v in sched2.__dict__.items() if k != "optimizer"}
        assert repr(now) == repr(before), state
    sched2.load_state_dict(copy.deepcopy(good))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_resume_refuses_a_source_state_that_does_not_fit_before_touching_the_model(tmp_path):
    from scratchlm.data import ShuffledEpochs
    from scratchlm.optim import SGD
    from scratchlm.training import TrainConfig, train
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((24, 4)).astype(np.float32)
    ts = rng.integers(0, 3, 24)

    def run(net, source, steps, resume):
        loss_fn = nn.CrossEntropyLoss()

        def forward(idx, step):
            loss = loss_fn(net(xs[idx]), ts[idx])
            net.backward(loss_fn.backward())
            return loss
        net.backward = lambda *a: None              # forward already backpropagated
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9)
        return train(net, source, forward, TrainConfig(steps=steps, optimizer="sgd"),
                     checkpoint=tmp_path / "ck.npz", resume=resume, log=lambda m: None,
                     optimizer=opt), opt

    a = model(0)
    run(a, ShuffledEpochs(24, 4, seed=0), 3, False)
    b = model(1)
    before = _snapshot(b, None)
    other = ShuffledEpochs(12, 4, seed=0)                 # another data set: does not fit
    source_before = other.state_dict()
    with pytest.raises(ValueError, match="does not fit this run"):
        run(b, other, 6, True)
    assert same_state(_snapshot(b, None), before)
    assert same_state(other.state_dict(), source_before)


# ------------------------------------------------------------------------------------------------
# hostile files: named errors, never a traceback on the command line
# ------------------------------------------------------------------------------------------------
def _declaring_npz(path, shape=(1 << 40, 4)):
    """A 1-kB .npz whose member declares an enormous array (4 TiB x 8 bytes)."""
    import io
    import zipfile
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    meta = io.BytesIO()
    np.save(meta, np.array(json.dumps({"format": "scratchlm-checkpoint", "version": 1,
                                       "module": "GPT", "meta": {}, "rng": {}, "optimizer": None})))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__meta__.npy", meta.getvalue())
        z.writestr("model/w.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)


def test_declared_sizes_are_checked_before_allocating(tmp_path):
    import tracemalloc
    path = tmp_path / "huge.npz"
    _declaring_npz(path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"member 'model/w.npy' declares a float64 array of "
                                             r"shape \(1099511627776, 4\)"):
            read_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_non_regular_files_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)                       # opening it to read would block forever
    zero = tmp_path / "zero.safetensors"
    os.symlink("/dev/zero", zero)         # reading it would never end
    for path, kind in [(fifo, "a FIFO"), (zero, "a device"), (tmp_path, "a directory")]:
        for reader in (read_checkpoint, load_safetensors, lambda p: load_checkpoint(p, model(0))):
            with pytest.raises(ValueError, match=f"is {kind}, not a regular"):
                reader(path)


def test_safetensors_offsets_and_shapes_are_checked(tmp_path):
    def st(header, data):
        raw = json.dumps(header).encode()
        p = tmp_path / "t.safetensors"
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return p
    f32 = lambda shape, begin, end: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}
    cases = [
        ({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, 12, "'b' .*overlaps tensor 'a'"),
        ({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, 12, "leaves 4 bytes unused"),
        ({"a": f32([1], 0, 4)}, 8, "4 bytes after the last tensor"),
        ({"a": f32([2], 8, 0)}, 8, "spans bytes 8..0"),
        ({"a": f32([1], 0, 16)}, 8, "spans bytes 0..16 of a 8-byte buffer"),
        ({"a": f32([1], 0.0, 4)}, 4, "data_offsets must be two integers"),
        ({"a": f32([1], True, 4)}, 4, "data_offsets must be two integers"),
        ({"a": f32([-1], 0, 4)}, 4, "shape must be a list"),
        ({"a": f32([1.0], 0, 4)}, 4, "shape must be a list"),
        ({"a": f32([1 << 40, 1 << 40], 0, 4)}, 4, "absurdly large"),
        ({"a": f32([1 << 20, 1 << 20], 0, 4)}, 4, "4 bytes for shape"),
        ({"a": {"dtype": "F32", "shape": [1]}}, 4, "malformed entry"),
        ({"a": [1]}, 4, "malformed entry"),
        ({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 4]}}, 4, "unsupported dtype"),
        ({"__metadata__": ["x"], "a": f32([1], 0, 4)}, 4, "__metadata__ must map strings"),
        ({"__metadata__": {"k": 1}, "a": f32([1], 0, 4)}, 4, "__metadata__ must map strings"),
        ({"a": {"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]}}, 1, "bytes other than 0 and 1"),
    ]
    for header, n, words in cases:
        p = st(header, b"\x07" * n)
        with pytest.raises(ValueError, match=words):
            load_safetensors(p)
    deep = b"[" * 100000 + b"]" * 100000
    p = tmp_path / "deep.safetensors"
    p.write_bytes(struct.pack("<Q", len(deep) + 2) + b'{"' + deep)
    with pytest.raises(ValueError, match="nested deeper|not valid JSON"):
        load_safetensors(p)
    p.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")           # header length > the file
    with pytest.raises(ValueError, match="header length says"):
        load_safetensors(p)


def test_safetensors_reserved_name_is_refused_at_write(tmp_path):
    with pytest.raises(ValueError, match="'__metadata__' is reserved"):
        save_safetensors(tmp_path / "t.safetensors", {"__metadata__": np.zeros(2)})
    assert not os.listdir(tmp_path)
    with pytest.raises(TypeError, match="names must be strings"):
        save_safetensors(tmp_path / "t.safetensors", {1: np.zeros(2)})


def test_checkpoint_json_is_checked(tmp_path):
    arrays = {"model/0.weight": np.zeros(2, np.float32)}
    base = {"format": "scratchlm-checkpoint", "version": 1, "module": "M", "meta": {}, "rng": {},
            "optimizer": None}
    cases = [
        ([base], "expected a JSON object, got array"),
        (dict(base, version=99), "version 99; this scratchlm reads <= 1"),
        (dict(base, module=3), "'module' must be a string"),
        (dict(base, rng={"r": 1}), "generator 'r' must be an object"),
        (dict(base, optimizer={"type": "SGD", "state": {"__array__": "optim/x"}}),
         "refers to array 'optim/x', which the file does not hold"),
        (dict(base, optimizer={"type": "SGD", "state": {"__dict__": [[[1], 2]]}}),
         r"\[key, value\] pair"),
        (dict(base, optimizer={"type": "SGD", "state": {"__dict__": [["a", 1], ["a", 2]]}}),
         "key 'a' appears twice"),
        (dict(base, optimizer={"type": "SGD", "state": {"__nope__": 1}}), "malformed entry"),
    ]
    for doc, words in cases:
        p = tmp_path / "ck.npz"
        np.savez(p, __meta__=np.array(json.dumps(doc)), **arrays)
        with pytest.raises(ValueError, match=words):
            read_checkpoint(p)
    np.savez(p, __meta__=np.array("[" * 5000 + "]" * 5000), **arrays)
    with pytest.raises(ValueError, match="nested deeper than 64"):
        read_checkpoint(p)
    np.savez(p, __meta__=np.zeros(3), **arrays)
    with pytest.raises(ValueError, match="__meta__ must be a string"):
        read_checkpoint(p)


def _cli(capsys, *argv):
    from scratchlm.cli import main
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def test_cli_reports_bad_checkpoints_in_one_line(tmp_path, capsys):
    from scratchlm.models import GPT, GPTConfig, NGramLM
    gpt = tmp_path / "gpt.npz"
    save_checkpoint(gpt, GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)))
    ngram = tmp_path / "ngram.npz"
    lm = NGramLM(2, "witten_bell")
    lm.fit([np.array([1, 2, 3, 1, 2, 3, 1, 2])])
    save_checkpoint(ngram, lm)                                # no config: not NGramLM.save
    huge = tmp_path / "huge.npz"
    _declaring_npz(huge)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    truncated = tmp_path / "truncated.npz"
    save_checkpoint(truncated, model(0))
    truncated.write_bytes(truncated.read_bytes()[:300])
    cases = [(gpt, "carries no model config"), (ngram, "carries no n-gram config"),
             (huge, "declares a float64 array"), (fifo, "is a FIFO"), (tmp_path, "is a directory"),
             (truncated, "truncated or corrupt"), (tmp_path / "missing.npz", "not found")]
    for path, words in cases:
        for command in ("sample", "eval"):
            rc, err = _cli(capsys, command, "--checkpoint", str(path))
            assert rc == 2, (path, command, err)
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert words in err and str(path) in err, err


def test_a_safetensors_header_length_of_0x80_mod_256_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header's length: 0x0280 begins with the bytes a
    pickle begins with (PROTO, then protocol 2); the header's "{" tells them apart."""
    from scratchlm import nn
    from scratchlm.io import load_checkpoint, read_checkpoint, save_checkpoint
    layer = nn.Linear(2, 2, rng=0)
    p = tmp_path / "m.safetensors"
    for pad in range(1500):
        save_checkpoint(p, layer, note="x" * pad)
        head = p.read_bytes()[:2]
        if head[0] == 0x80 and head[1] in (2, 3, 4, 5):
            break
    else:
        pytest.fail("no padding gave a header length of 0x280..0x580")
    assert load_checkpoint(p, nn.Linear(2, 2, rng=1))["note"] == "x" * pad
    pickled = tmp_path / "p.npz"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(ValueError, match="is a pickle file"):
        read_checkpoint(pickled)
