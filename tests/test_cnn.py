"""The built-in image data (rendered glyph digits, scikit-learn's digits, binarize, resize) and the
CNN classifier: gradient checks, equality with a PyTorch reference in float64, bad input,
checkpoints that resume bit-identically, and training to high held-out accuracy."""

import sys
import time
import types

import numpy as np
import pytest

from conftest import assert_close, to_torch
from scratchlm.data.images import (GLYPHS, ImageSplit, binarize, digit_images, load_digits_dataset,
                                   resize_images)
from scratchlm.gradcheck import check_module
from scratchlm.io import read_checkpoint
from scratchlm.models.cnn import CNN, CNNConfig, accuracy
from scratchlm.training import fit_classifier

F64 = np.float64


# ================================================================================================
# data: rendered glyph digits
# ================================================================================================
def test_digit_images_shapes_dtypes_and_range():
    x, y = digit_images(50, seed=0)
    assert x.shape == (50, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (50,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0 and set(y) <= set(range(10))
    small = digit_images(20, seed=0, size=12)
    assert isinstance(small, ImageSplit) and small.images.shape == (20, 1, 12, 12)


def test_digit_images_are_deterministic_given_the_seed():
    a, b = digit_images(60, seed=3), digit_images(60, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = digit_images(60, seed=np.random.default_rng(3))           # a Generator seeds the same way
    np.testing.assert_array_equal(a.images, c.images)
    d = digit_images(60, seed=4)
    assert not np.array_equal(a.images, d.images)


def test_labels_are_balanced_and_every_variant_appears():
    x, y = digit_images(1003, seed=1)
    counts = np.bincount(y, minlength=10)
    assert counts.min() >= 100 and counts.max() <= 101 and counts.sum() == 1003
    assert not np.array_equal(y[:20], np.arange(20) % 10)          # shuffled, not cyclic
    assert sum(len(v) for v in GLYPHS.values()) > 10               # some digits have variants


def test_given_labels_are_drawn():
    want = np.array([7, 7, 0, 3])
    x, y = digit_images(4, seed=0, labels=want)
    np.testing.assert_array_equal(y, want)


def test_glyphs_keep_a_blank_border_and_noise_is_additive():
    """Without noise the background is exactly 0 and the 10% border (2.8 px at 28x28) is blank
    (the placement rule of the docstring); every image has ink, at full level somewhere."""
    x, _ = digit_images(500, seed=2, noise=0.0)
    border = np.ones((28, 28), bool)
    border[2:-2, 2:-2] = False
    assert x[:, 0][:, border].max() == 0.0
    assert np.all(x.max(axis=(1, 2, 3)) >= 0.8)
    assert np.mean(x == 0.0) > 0.6
    noisy, _ = digit_images(500, seed=2, noise=0.2)
    assert np.mean(noisy == 0.0) < 0.6                    # about half the background goes up


def test_classes_differ_more_than_draws_within_a_class():
    """A nearest-centroid classifier on raw pixels (no learning to speak of) beats chance by far:
    the glyphs are distinct, the variation does not wash them out."""
    train, test = load_digits_dataset(2000, 500, seed=0)
    X = train.images.reshape(2000, -1)
    C = np.stack([X[train.labels == d].mean(0) for d in range(10)])
    d2 = ((test.images.reshape(500, 1, -1) - C[None]) ** 2).sum(-1)
    assert np.mean(d2.argmin(1) == test.labels) > 0.6


def test_load_digits_dataset_splits_are_disjoint_and_seeded():
    train, test = load_digits_dataset(300, 100, seed=5)
    assert train.images.shape == (300, 1, 28, 28) and test.images.shape == (100, 1, 28, 28)
    train_rows = {r.tobytes() for r in train.images}
    assert not any(r.tobytes() in train_rows for r in test.images)
    again, _ = load_digits_dataset(300, 200, seed=5)
    np.testing.assert_array_equal(train.images, again.images)      # n_test does not move train
    other, _ = load_digits_dataset(300, 100, seed=6)
    assert not np.array_equal(train.images, other.images)


def _fake_sklearn(monkeypatch):
    """A stand-in ``sklearn.datasets.load_digits`` (1797 images 0..16), so the code path runs
    without scikit-learn installed."""
    r = np.random.default_rng(0)
    bunch = types.SimpleNamespace(images=r.integers(0, 17, (1797, 8, 8)).astype(float),
                                  target=np.arange(1797) % 10)
    datasets = types.ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: bunch
    pkg = types.ModuleType("sklearn")
    pkg.datasets = datasets
    monkeypatch.setitem(sys.modules, "sklearn", pkg)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)
    return bunch


def test_sklearn_source(monkeypatch):
    bunch = _fake_sklearn(monkeypatch)
    train, test = load_digits_dataset(seed=0, source="sklearn")
    assert train.images.shape == (1497, 1, 8, 8) and test.images.shape == (300, 1, 8, 8)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.images.max() <= 1.0 and train.images.min() >= 0.0
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(train.images[:, 0], bunch.images[order[:1497]] / 16)
    np.testing.assert_array_equal(test.labels, bunch.target[order[1497:]])
    big, _ = load_digits_dataset(100, 50, source="sklearn", size=28)
    assert big.images.shape == (100, 1, 28, 28)
    with pytest.raises(ValueError, match="<= 1797"):
        load_digits_dataset(1500, 300, source="sklearn")


def test_sklearn_source_real():
    """With scikit-learn installed: its bundled digits, native 8x8, trained by the same CNN."""
    pytest.importorskip("sklearn")
    train, test = load_digits_dataset(seed=0, source="sklearn")
    assert train.images.shape == (1497, 1, 8, 8) and set(test.labels) == set(range(10))
    m = CNN(channels=(8, 16), image_size=8, rng=0)
    fit_classifier(m, train, None, steps=200, batch_size=64)
    assert accuracy(m, *test) >= 0.9


def test_sklearn_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits_dataset(source="sklearn")


def test_resize_matches_torch_bilinear(torch):
    x = np.random.default_rng(0).random((3, 2, 8, 8))
    for size in (8, 13, 28, 5):
        want = torch.nn.functional.interpolate(to_torch(torch, x), size=(size, size),
                                               mode="bilinear", align_corners=False)
        assert_close(resize_images(x, size), want)
    assert resize_images(x.astype(np.float32), 20).dtype == np.float32


def test_binarize():
    x, _ = digit_images(40, seed=0)
    b = binarize(x)
    assert b.dtype == np.float32 and b.shape == x.shape and set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_array_equal(b, (x > 0.5).astype(np.float32))
    s1, s2 = binarize(x, "bernoulli", rng=0), binarize(x, "bernoulli", rng=0)
    np.testing.assert_array_equal(s1, s2)
    assert set(np.unique(s1)) <= {0.0, 1.0}
    many = np.mean([binarize(x, "bernoulli", rng=k).mean() for k in range(20)])
    assert many == pytest.approx(x.mean(), rel=0.02)               # E[b] = p
    assert binarize(x.astype(F64), threshold=0.2).dtype == F64


@pytest.mark.parametrize("call,exc,match", [
    (lambda: digit_images(0), ValueError, "n must be >= 1"),
    (lambda: digit_images(2.0), TypeError, "n must be an int"),
    (lambda: digit_images(5, size=4), ValueError, "size must be >= 8"),
    (lambda: digit_images(5, noise=-0.1), ValueError, "noise must be a finite number >= 0"),
    (lambda: digit_images(5, noise=float("nan")), ValueError, "noise"),
    (lambda: digit_images(5, noise="0.1"), TypeError, "noise must be a number"),
    (lambda: digit_images(5, seed="x"), TypeError, "rng must be"),
    (lambda: digit_images(2, labels=[1, 10]), ValueError, r"labels must lie in \[0, 10\)"),
    (lambda: digit_images(3, labels=[1, 2]), ValueError, "labels must have length n=3"),
    (lambda: digit_images(2, labels=np.array([1.0, 2.0])), TypeError, "integer dtype"),
    (lambda: load_digits_dataset(source="mnist"), ValueError, "source must be one of"),
    (lambda: load_digits_dataset(seed=-1), ValueError, "seed must be >= 0"),
    (lambda: load_digits_dataset(n_test=0), ValueError, "n_test must be >= 1"),
    (lambda: binarize(np.ones((2, 2), np.float32), "otsu"), ValueError, "method must be one of"),
    (lambda: binarize(np.ones((2, 2), np.float32), threshold=1.0), ValueError, r"\[0, 1\)"),
    (lambda: binarize(np.ones((2, 2), np.float32), "bernoulli"), ValueError, "needs rng"),
    (lambda: binarize(np.full((2, 2), 2.0), "bernoulli", rng=0), ValueError, "lie in"),
    (lambda: binarize(np.array([[np.nan]]),), ValueError, "finite"),
    (lambda: binarize(np.ones((2, 2), np.uint8)), TypeError, "float32 or float64"),
    (lambda: resize_images(np.ones((2, 2)), 0), ValueError, "size must be >= 1"),
])
def test_data_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ================================================================================================
# the model
# ================================================================================================
def tiny(dtype=F64, rng=0, **kw):
    kw = {"in_channels": 1, "channels": (2, 3), "image_size": 8, **kw}
    return CNN(dtype=dtype, rng=rng, **kw)


def images(n=3, c=1, s=8, dtype=F64, seed=0):
    return np.random.default_rng(seed).random((n, c, s, s)).astype(dtype)


def test_shapes_names_and_config():
    m = CNN(rng=0)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.3.weight",
                     "features.3.bias", "fc.weight", "fc.bias"]
    assert m.features[0].weight.shape == (16, 1, 3, 3) and m.fc.weight.shape == (10, 32 * 7 * 7)
    x = images(4, s=28, dtype=np.float32)
    logits = m(x)
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    logits2, loss = m(x, np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(logits, logits2)
    assert isinstance(loss, float) and np.isfinite(loss)
    dx = m.backward()
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 and np.any(p.grad) for p in m.parameters())
    assert m.predict(x).shape == (4,) and m.predict(x).dtype == np.int64
    assert CNNConfig(channels=[4, 8, 16], image_size=32).sizes() == [16, 8, 4]
    assert CNN(channels=(4,), image_size=8, kernel_size=5, rng=0).fc.weight.shape == (10, 4 * 16)


def test_config_round_trips_through_json():
    import json
    m = CNN(in_channels=3, num_classes=4, channels=(5, 6, 7), kernel_size=5, image_size=16, rng=0)
    d = json.loads(json.dumps(m.config_dict()))
    again = CNN.from_config(d, rng=1)
    assert again.config == m.config and again.config.channels == (5, 6, 7)
    assert [p.shape for p in again.parameters()] == [p.shape for p in m.parameters()]


def test_feature_maps():
    m = tiny(np.float32)
    x = images(2, dtype=np.float32)
    maps = m.feature_maps(x)
    assert list(maps) == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "logits"]
    assert maps["conv1"].shape == (2, 2, 8, 8) and maps["pool1"].shape == (2, 2, 4, 4)
    assert maps["pool2"].shape == (2, 3, 2, 2) and maps["logits"].shape == (2, 10)
    np.testing.assert_array_equal(maps["relu1"], np.maximum(maps["conv1"], 0))
    np.testing.assert_array_equal(maps["logits"], m(x))
    m.feature_maps(x)
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.ones((2, 10), np.float32))              # no cache is left behind


@pytest.mark.parametrize("kw", [{}, {"kernel_size": 5, "in_channels": 2}, {"kernel_size": 2}])
def test_gradcheck_whole_model(kw):
    """Every parameter and the input, through the logits (random upstream gradient); pixels are
    uniform in [0, 1], so no max-pool window ties or ReLU kink is within the step."""
    m = tiny(**kw)
    report = check_module(m, images(3, kw.get("in_channels", 1)), max_entries=40)
    assert report.ok, str(report)


def test_gradcheck_through_the_loss():
    """``(logits, loss)`` both carry a gradient: backward(dlogits, dloss) adds the two paths."""
    report = check_module(tiny(), images(3), np.array([1, 7, 0]), max_entries=40)
    assert report.ok, str(report)


def torch_cnn(torch, ours):
    from benchmarks.workloads.conv import torch_cnn as reference
    return reference(torch, ours)


@pytest.mark.torch
@pytest.mark.parametrize("kw", [{"channels": (3, 4), "image_size": 12},
                                {"channels": (4, 5, 6), "image_size": 16, "kernel_size": 5,
                                 "in_channels": 3, "num_classes": 7},
                                {"channels": (3,), "image_size": 9, "kernel_size": 4}])
def test_matches_torch_float64(torch, kw):
    """Logits, mean cross-entropy, the input gradient and every parameter gradient."""
    ours = CNN(dtype=F64, rng=0, **kw)
    theirs = torch_cnn(torch, ours)
    c = ours.config
    x = images(5, c.in_channels, c.image_size, seed=1)
    y = np.random.default_rng(2).integers(0, c.num_classes, 5)
    logits, loss = ours(x, y)
    dx = ours.backward()
    xt = to_torch(torch, x, grad=True)
    lt = theirs(xt)
    loss_t = torch.nn.functional.cross_entropy(lt, torch.from_numpy(y))
    loss_t.backward()
    assert_close(logits, lt)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    assert_close(dx, xt.grad)
    got = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert_close(got[name].grad, p.grad)


@pytest.mark.torch
def test_matches_torch_float32(torch):
    ours = CNN(channels=(4, 8), image_size=16, rng=0)
    theirs = torch_cnn(torch, ours).float()
    x = images(6, s=16, dtype=np.float32)
    dlogits = np.random.default_rng(3).standard_normal((6, 10)).astype(np.float32)
    logits = ours(x)
    ours.backward(dlogits)
    lt = theirs(to_torch(torch, x))
    lt.backward(to_torch(torch, dlogits))
    assert_close(logits, lt)
    got = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(got[name].grad, p.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_model_bad_input():
    m = tiny(np.float32)
    x = images(2, dtype=np.float32)
    with pytest.raises(TypeError, match="float64 but CNN holds float32"):
        m(x.astype(F64))
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        m(images(2, s=9, dtype=np.float32))
    with pytest.raises(ValueError, match="must be 4-D"):
        m(x[0])
    bad = x.copy()
    bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"x must be finite, got nan at index \(1, 0, 2, 3\)"):
        m(bad)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        m(x, np.array([0, 10]))
    with pytest.raises(ValueError, match="one entry per image"):
        m(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer dtype"):
        m(x, np.array([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="before forward"):
        tiny().backward()
    m(x)
    with pytest.raises(RuntimeError, match="needs a forward call with labels"):
        m.backward()
    with pytest.raises(ValueError, match="forward output's shape"):
        m.backward(np.ones((3, 10), np.float32))
    with pytest.raises(TypeError, match="dtype float64"):
        m.backward(np.ones((2, 10)))
    with pytest.raises(ValueError, match="finite"):
        m.backward(np.full((2, 10), np.inf, np.float32))
    for kw, exc, match in [({"channels": ()}, ValueError, "at least one conv stage"),
                           ({"channels": 8}, TypeError, "tuple of ints"),
                           ({"channels": (4, 0)}, ValueError, "channels entry must be >= 1"),
                           ({"image_size": 3}, ValueError, "too small"),
                           ({"channels": (2, 2, 2, 2), "image_size": 8}, ValueError, "too small"),
                           ({"num_classes": 1}, ValueError, "num_classes must be >= 2"),
                           ({"kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
                           ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64")]:
        with pytest.raises(exc, match=match):
            CNN(**{"image_size": 8, **kw})


# ================================================================================================
# training
# ================================================================================================
def small_data(n_train=400, n_test=100, size=12, seed=0):
    return load_digits_dataset(n_train, n_test, seed=seed, size=size)


def test_fit_classifier_bad_input(tmp_path):
    m = tiny(np.float32, image_size=12)
    train, test = small_data()
    with pytest.raises(TypeError, match="model must be a CNN"):
        fit_classifier(object(), train, test, 1)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\) to fit the model"):
        fit_classifier(tiny(np.float32), train, test, 1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit_classifier(m, train, test, 1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="batch_size"):
        fit_classifier(m, train, test, 1, batch_size=401)
    with pytest.raises(ValueError, match="needs checkpoint="):
        fit_classifier(m, train, test, 1, resume=True)
    with pytest.raises(ValueError, match="meta must not use"):
        fit_classifier(m, train, test, 1, meta={"loop": 3})
    with pytest.raises(ValueError, match="400 images but 399 labels"):
        fit_classifier(m, (train.images, train.labels[:-1]), test, 1)
    with pytest.raises(TypeError, match="pair"):
        fit_classifier(m, train.images, test, 1)
    diverged = tiny(np.float32, image_size=12)
    diverged.fc.bias.data[0] = np.inf                  # the layers do not scan: the loss shows it
    with pytest.raises(FloatingPointError, match="loss became (nan|inf) at step 1; lower the "
                                                 "learning rate"):
        fit_classifier(diverged, train, None, 5)
    with pytest.raises(FileNotFoundError):
        fit_classifier(m, train, test, 2, checkpoint=tmp_path / "none.npz", resume=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_classifier_resumes_bit_identically(tmp_path, optimizer):
    train, test = small_data()
    make = lambda rng=0: CNN(channels=(4, 6), image_size=12, rng=rng)        # noqa: E731
    kw = dict(steps=12, batch_size=32, optimizer=optimizer, save_every=5, eval_every=4,
              warmup_steps=2)
    straight = make()
    h1 = fit_classifier(straight, train, test, checkpoint=tmp_path / "a.npz", **kw)

    class Stop(Exception):
        pass

    def interrupt(step, total, info):
        if step == 7:                          # two steps after the checkpoint of step 5
            raise Stop
    with pytest.raises(Stop):
        fit_classifier(make(), train, test, checkpoint=tmp_path / "b.npz", progress=interrupt, **kw)
    resumed = make(rng=99)
    h2 = fit_classifier(resumed, train, test, checkpoint=tmp_path / "b.npz", resume=True, **kw)
    assert h2 == h1 and h1["step"] == list(range(1, 13)) and h1["eval_step"] == [4, 8, 12]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    # the checkpoint rebuilds the model on its own
    arrays, doc = read_checkpoint(tmp_path / "b.npz")
    assert doc["meta"]["loop"]["step"] == 12 and doc["meta"]["train"]["optimizer"] == optimizer
    rebuilt = CNN.from_config(doc["meta"]["config"], dtype=arrays["model/fc.weight"].dtype)
    rebuilt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    np.testing.assert_array_equal(rebuilt.predict(test.images), straight.predict(test.images))
    # a finished run resumes as a no-op
    h3 = fit_classifier(resumed, train, test, checkpoint=tmp_path / "b.npz", resume=True, **kw)
    assert h3 == h1


def test_short_training_run_beats_chance_clearly():
    """300 steps on 14x14 glyph digits (under a second): held-out accuracy far above the 10% of
    chance (0.988 when written)."""
    train, test = load_digits_dataset(2000, 500, seed=0, size=14)
    m = CNN(channels=(8, 16), image_size=14, rng=0)
    t0 = time.perf_counter()
    h = fit_classifier(m, train, test, steps=300, batch_size=32, lr=0.05, seed=0)
    seconds = time.perf_counter() - t0
    acc = accuracy(m, *test)
    assert h["test_acc"] == [acc]
    assert np.mean(h["loss"][-20:]) < np.mean(h["loss"][:20]) / 5
    assert acc >= 0.9, (acc, seconds)


def test_float64_model_trains_on_float32_images():
    train, test = small_data(200, 50)
    m = CNN(channels=(3, 4), image_size=12, dtype=F64, rng=0)
    h = fit_classifier(m, train, test, steps=3, batch_size=16)
    assert len(h["loss"]) == 3 and 0.0 <= h["test_acc"][0] <= 1.0
    assert m.fc.weight.data.dtype == F64


@pytest.mark.slow
def test_glyph_digits_reach_97_percent_held_out():
    """The classic layout (16 and 32 channels, 28x28) on 20 000 rendered digits; the 2000 test
    images come from a different random stream than the training images. SGD with momentum 0.9,
    lr 0.05, cosine decay; 1000 steps of 64 images (3.2 epochs)."""
    train, test = load_digits_dataset(20000, 2000, seed=0)
    m = CNN(channels=(16, 32), image_size=28, rng=0)
    t0 = time.perf_counter()
    h = fit_classifier(m, train, test, steps=1000, batch_size=64, lr=0.05, optimizer="sgd",
                       momentum=0.9, seed=0, eval_every=250)
    seconds = time.perf_counter() - t0
    acc = h["test_acc"][-1]
    print(f"glyph digits: 1000 steps in {seconds:.1f}s, test accuracy {acc:.4f} "
          f"(at steps {h['eval_step']}: {h['test_acc']})")
    assert acc >= 0.97


def test_cli_train_eval_filters_cnn(tmp_path, capsys):
    from scratchlm.cli import main
    ck = tmp_path / "cnn.npz"
    assert main(["train", "cnn", "--steps", "40", "--conv-channels", "4", "8", "--out", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and ck.exists()
    acc = float(out.split("held-out accuracy ")[1].split(";")[0])
    assert acc > 0.3                                   # 40 steps: far above chance (0.1)
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert f"accuracy {acc:.4f}" in capsys.readouterr().out   # the same model, the same images
    assert main(["sample", "--checkpoint", str(ck)]) == 2      # a CNN generates no text
    pytest.importorskip("matplotlib")
    png = tmp_path / "f.png"
    assert main(["filters", "--checkpoint", str(ck), "--index", "5", "--out", str(png)]) == 0
    assert png.stat().st_size > 5000 and "test image 5" in capsys.readouterr().out
    assert main(["filters", "--checkpoint", str(ck), "--index", "5000", "--out", str(png)]) == 2
