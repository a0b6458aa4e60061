"""Every figure of scratchlm.training.plots has a title, labelled axes, a colour bar where colour
is a value, a legend where colour is a class, says when only part of a layer is shown, and is
written (folder created) by its public function."""

import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.text import Text  # noqa: E402

from scratchlm.models import CNN, VAE  # noqa: E402
from scratchlm.training import plots  # noqa: E402


# -- what a figure shows ------------------------------------------------------------------------
def texts(fig):
    """Every non-empty string drawn in ``fig`` (titles, labels, captions, tick labels...)."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def colorbar_labels(fig):
    """The labels of ``fig``'s colour bars (matplotlib names a colour bar's axes '<colorbar>')."""
    return [ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes
            if ax.get_label() == "<colorbar>"]


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def has_title(fig):
    return bool(fig.get_suptitle()) or any(ax.get_title(loc) for ax in fig.axes
                                           for loc in ("left", "center", "right"))


def legend_entries(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


# -- inputs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_and_image():
    model = CNN(channels=(4, 40), image_size=12, rng=0)        # conv2 has 40 > 16 channels
    image = np.random.default_rng(0).random((1, 12, 12), dtype=np.float32)
    return model, image


@pytest.fixture(scope="module")
def vae_data():
    rng = np.random.default_rng(0)
    test = (rng.random((60, 16)) > 0.5).astype(np.float32)     # 4x4 binary "images"
    labels = np.arange(60) % 10
    return test, labels


def history(val_below=False):
    steps = list(range(50))
    return {"step": steps, "loss": list(np.linspace(3.0, 1.0, 50)), "eval_step": [0, 25, 49],
            "val_loss": [3.0, 2.0, 0.5 if val_below else 1.5]}


def attention_maps(L=2, H=3, T=5):
    m = np.tril(np.random.default_rng(0).random((L, H, T, T))) + 1e-3
    return m / m.sum(-1, keepdims=True)


# -- each figure ----------------------------------------------------------------------------------
def test_history_figure():
    fig = plots._history_figure(history(), title="GPT (gpt)", tokens_per_char=1.5)
    ax = fig.axes[0]
    assert ax.get_title() == "GPT (gpt)"
    assert ax.get_xlabel() and ax.get_ylabel()
    assert legend_entries(ax) == ["training batch", "validation"]
    assert "bits per character" in texts(fig)
    assert not any("validation sits below" in t for t in texts(fig))
    below = plots._history_figure(history(val_below=True))
    assert any("validation sits below training" in t for t in texts(below))


def test_attention_figure():
    fig = plots._attention_figure(attention_maps(2, 3), list("abcde"), title="attention for 'x'")
    assert fig.get_suptitle().startswith("attention for 'x'")
    assert "2 layers x 3 heads" in fig.get_suptitle()
    grid = data_axes(fig)
    assert len(grid) == 6 and len(fig.axes) == 7                # one shared colour bar
    assert colorbar_labels(fig) == ["attention weight"]
    assert all(ax.get_title() for ax in grid)
    assert sum(ax.get_xlabel() == "key (attended to)" for ax in grid) == 3   # bottom row
    assert sum(ax.get_ylabel() == "query" for ax in grid) == 2               # left column


def test_attention_figure_says_when_capped():
    fig = plots._attention_figure(attention_maps(5, 3), list("abcde"), max_layers=2)
    assert len(data_axes(fig)) == 2 * 3
    assert "layers 0-1 of 5" in fig.get_suptitle()
    fig = plots._attention_figure(attention_maps(5, 4), list("abcde"), max_layers=2, max_heads=2)
    assert "layers 0-1 of 5 and heads 0-1 of 4" in fig.get_suptitle()


def test_gradient_norms_figure():
    norms = {"rnn": np.logspace(-6, 0, 20), "lstm": np.logspace(-2, 0, 20)}
    fig = plots._gradient_norms_figure(norms)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert legend_entries(ax) == ["RNN", "LSTM"]
    assert ax.get_yscale() == "log"


def test_filters_figure(cnn_and_image):
    model, image = cnn_and_image
    fig = plots._filters_figure(model, image)
    assert fig.get_suptitle()
    rows = data_axes(fig)
    # filters, input, conv1, relu1, pool1, conv2, relu2, pool2: one row each, one colour bar each
    assert [ax.get_ylabel() for ax in rows] == ["filters", "input", "conv1", "relu1", "pool1",
                                               "conv2", "relu2", "pool2"]
    assert all(ax.get_title(loc="left") for ax in rows)
    bars = colorbar_labels(fig)
    assert len(bars) == len(rows)
    assert bars[0] == "weight" and bars[1] == "pixel value"
    assert all("activation" in b for b in bars[2:])
    assert rows[-1].get_xlabel() == "channel"
    # the filters' colour scale is centred at 0 (diverging)
    lo, hi = rows[0].images[0].get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    # first stage: all 4 channels; second: the 16-column cap shows 16 of 40, and says so
    assert rows[2].get_title(loc="left") == "conv1 feature maps: 4 channels"
    for ax in rows[5:]:
        assert "16 of 40 channels" in ax.get_title(loc="left")
    assert "4 output channels" in rows[0].get_title(loc="left")


def test_vae_figure_latent_2d(vae_data):
    test, labels = vae_data
    model = VAE(16, 8, 2, rng=0)
    fig = plots._vae_figure(model, test, labels=labels)
    assert fig.get_suptitle()
    scatter = fig.axes[-1]
    assert scatter.get_xlabel() == "z1" and scatter.get_ylabel() == "z2"
    assert scatter.get_title()
    # colour is a class here: a legend with one entry per digit, no colour bar
    assert legend_entries(scatter) == [str(d) for d in range(10)]
    assert colorbar_labels(fig) == []
    unlabelled = plots._vae_figure(model, test)
    assert unlabelled.axes[-1].get_legend() is None


def test_vae_figure_no_scatter_without_2d_latent(vae_data):
    test, _ = vae_data
    fig = plots._vae_figure(VAE(16, 8, 3, rng=0), test)
    assert fig.get_suptitle()
    assert len(fig.axes) == 3                                   # the three image blocks only
    assert all(ax.get_title(loc="left") for ax in fig.axes)


def test_samples_figure():
    images = np.random.default_rng(0).random((10, 16))
    fig = plots._samples_figure(images, title="10 images")
    assert fig.get_suptitle() == "10 images"
    assert len(fig.axes) == 2 * 8 and sum(bool(ax.images) for ax in fig.axes) == 10


# -- the public functions write PNGs ---------------------------------------------------------------
def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_public_functions_write_pngs_into_new_folders(tmp_path, cnn_and_image, vae_data):
    model, image = cnn_and_image
    test, labels = vae_data
    calls = {
        "history": lambda p: plots.plot_history(history(), p, title="t"),
        "attention": lambda p: plots.plot_attention(attention_maps(1, 2), list("abcde"), p),
        "gradnorms": lambda p: plots.plot_gradient_norms({"gru": np.ones(5)}, p),
        "filters": lambda p: plots.plot_filters_and_maps(model, image, p),
        "vae": lambda p: plots.plot_vae(VAE(16, 8, 2, rng=0), test, p, labels=labels),
        "samples": lambda p: plots.plot_samples(test[:4], p),
    }
    for name, call in calls.items():
        path = tmp_path / name / "deeper" / f"{name}.png"
        assert not path.parent.exists()
        assert call(str(path)) is True
        assert is_png(path), name


def test_false_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    path = tmp_path / "none" / "x.png"
    assert plots.plot_samples(np.zeros((2, 4)), str(path)) is False
    assert plots.plot_gradient_norms({"rnn": np.ones(3)}, str(path)) is False
    assert not os.path.exists(path.parent)
