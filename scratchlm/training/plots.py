"""Plots (PNG, through matplotlib: the ``plot`` extra). Each public function writes one figure to
``path`` (creating its folder) and returns False when matplotlib is not installed, so callers can
say how to get it; a private ``_*_figure`` helper builds the :class:`matplotlib.figure.Figure`
(no pyplot state, no backend switch), which is what the tests inspect.

* :func:`plot_history` -- a training run's loss curves (bits per token);
* :func:`plot_attention` -- every layer's and head's attention map for a prompt;
* :func:`plot_gradient_norms` -- how much gradient reaches each step of an RNN/LSTM/GRU;
* :func:`plot_filters_and_maps` -- a CNN's first-layer filters and one image's feature maps;
* :func:`plot_vae` -- a VAE's reconstructions, prior samples and 2-D latent space;
* :func:`plot_samples` -- a grid of generated images;
* :func:`plot_word_vectors` -- chosen words and their nearest neighbours, projected to 2-D by PCA.

Every figure has a title and labelled axes; a colour bar where colour is a value, a legend where
colour is a class, and a title that says so when only part of a layer is shown.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["plot_history", "plot_attention", "plot_gradient_norms", "plot_filters_and_maps",
           "plot_vae", "plot_samples", "plot_word_vectors"]


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def _have_matplotlib() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None   # None too when sys.modules blocks it


def _figure(**kwargs):
    """A bare Figure (not registered with pyplot, so nothing to close and no backend to pick)."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _save(fig, path, dpi) -> bool:
    """Create the folder of ``path``, write ``fig`` there as a PNG and release it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        fig.clear()
    return True


def _count(shown, total, unit="channels") -> str:
    """``"16 of 40 channels"`` when part is shown, else ``"40 channels"``."""
    unit = unit if total != 1 else unit.rstrip("s")
    return f"{shown} of {total} {unit}" if shown < total else f"{total} {unit}"


# ------------------------------------------------------------------------------------------------
# loss curves
# ------------------------------------------------------------------------------------------------
def _history_figure(history, title="", tokens_per_char=None, baseline=None, sample=None):
    """Training loss per step and validation loss per evaluation, in bits per token; optionally
    a baseline's validation level (bits per token) as a dashed line, and a generated sample
    printed under the plot."""
    lines = [] if not sample else sample.replace("\t", "    ").splitlines()[:10]
    fig = _figure(figsize=(7, 4.2 + 0.17 * (len(lines) + 2) if lines else 4.2))
    if lines:
        ax, text_ax = fig.subplots(2, 1, height_ratios=[4.2, 0.17 * (len(lines) + 2)])
    else:
        ax, text_ax = fig.subplots(), None
    to_bits = 1 / math.log(2)
    train = np.array(history["loss"]) * to_bits
    val = np.array(history.get("val_loss", [])) * to_bits
    ax.plot(history["step"], train, lw=0.8, alpha=0.8, label="training batch")
    if val.size:
        ax.plot(history["eval_step"], val, "o-", label="validation")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", lw=1,
                   label=f"order-5 n-gram on the validation split ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (bits per token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if tokens_per_char and abs(tokens_per_char - 1) > 1e-9:
        sec = ax.secondary_yaxis("right", functions=(lambda b: b * tokens_per_char,
                                                     lambda c: c / tokens_per_char))
        sec.set_ylabel("bits per character")
    if text_ax is not None:
        text_ax.axis("off")
        text_ax.set_title("a sample from the trained model", fontsize=8, loc="left")
        text_ax.text(0, 1, "\n".join(line[:110] for line in lines), family="monospace",
                     fontsize=6.5, va="top", transform=text_ax.transAxes)
    if val.size and train.size:
        recent = train[-max(1, len(train) // 10):].mean()
        if val[-1] < recent:
            fig.text(0.01, 0.01, "validation sits below training: the validation split is the "
                     "corpus's tail, whose text is easier to predict than the average batch",
                     fontsize=7, style="italic")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_history(history, path, title="", tokens_per_char=None, baseline=None, sample=None):
    """Write a run's loss curves as a PNG: training loss per step and validation loss per
    evaluation, in bits per token (and bits per character on a second axis when
    ``tokens_per_char`` is given and not 1), with an optional ``baseline`` level and ``sample``
    text. When validation sits below training the caption says why. Returns False when
    matplotlib (the ``plot`` extra) is not installed."""
    if not _have_matplotlib():
        return False
    return _save(_history_figure(history, title, tokens_per_char, baseline, sample), path, dpi=120)


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
def _attention_figure(maps, labels, title="", max_layers=8, max_heads=8):
    """A grid of attention heat maps (rows: layers, columns: heads; at most ``max_layers`` x
    ``max_heads``, the title says when fewer than all are shown) with one shared colour bar."""
    L_all, H_all, T, _ = maps.shape
    L, H = min(L_all, max_layers), min(H_all, max_heads)
    fig = _figure(figsize=(2.4 * H + 1.6, 2.4 * L + 0.9), layout="constrained")
    axes = fig.subplots(L, H, squeeze=False)
    shown = [repr(s)[1:-1] for s in labels]
    for i in range(L):
        for j in range(H):
            ax = axes[i][j]
            im = ax.imshow(maps[i, j], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {i}, head {j}", fontsize=8)
            if T <= 40:
                ax.set_xticks(range(T), shown, fontsize=5, rotation=90)
                ax.set_yticks(range(T), shown, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            if i == L - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if j == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(im, ax=axes, label="attention weight", shrink=min(1.0, 0.6 + 0.2 * L),
                 aspect=15 + 10 * L, pad=0.02)
    cut = ([f"layers 0-{L - 1} of {L_all}"] if L < L_all else []) + \
          ([f"heads 0-{H - 1} of {H_all}"] if H < H_all else [])
    head = (title or "attention") + ("\nshowing " + " and ".join(cut) if cut else
                                     f" ({_count(L, L, 'layers')} x {_count(H, H, 'heads')})")
    fig.suptitle(head, fontsize=10)
    return fig


def plot_attention(maps, labels, path, title="", max_layers=8, max_heads=8):
    """Write the attention maps ``(n_layer, n_head, T, T)`` of a prompt whose tokens are
    ``labels`` as a grid of heat maps (rows: layers, columns: heads, at most ``max_layers`` x
    ``max_heads``). False without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_attention_figure(maps, labels, title, max_layers, max_heads), path, dpi=130)


# ------------------------------------------------------------------------------------------------
# gradient norms through time
# ------------------------------------------------------------------------------------------------
def _gradient_norms_figure(norms):
    """One log-scale curve per cell: the norm of the gradient reaching each time step."""
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for cell, v in norms.items():
        ax.semilogy(np.arange(v.size), np.maximum(v, 1e-300), label=cell.upper())
    ax.set_xlabel("time step t (the loss is at the last step)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title("gradient reaching each step: backprop through time")
    ax.grid(alpha=0.3, which="both")
    if norms:
        ax.legend(title="cell")
    fig.tight_layout()
    return fig


def plot_gradient_norms(norms, path) -> bool:
    """Write :func:`gradient_norms_over_time`'s ``{cell: (T,) norms}`` as a log-scale plot.
    False without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_gradient_norms_figure(norms), path, dpi=120)


# ------------------------------------------------------------------------------------------------
# CNN filters and feature maps
# ------------------------------------------------------------------------------------------------
def _montage(tiles, cols, gap=1):
    """Lay ``tiles`` ``(n, h, w)`` out in rows of ``cols``, ``gap`` NaN pixels apart (drawn as
    background): one image, so a whole row of tiles costs one Axes and shares one colour scale."""
    n, h, w = tiles.shape
    rows = max(1, -(-n // cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[k]
    return out


def _cmap(name, bad="white"):
    """The colormap ``name`` with NaN (the gaps of a :func:`_montage`) drawn as ``bad``."""
    import matplotlib
    return matplotlib.colormaps[name].with_extremes(bad=bad)


def _tile_row(fig, ax, tiles, cols, cmap, vmin, vmax, label):
    """Draw up to ``cols`` of ``tiles`` side by side in ``ax`` on one colour scale, with the
    channel index under each tile and a colour bar labelled ``label``."""
    n, _, w = tiles.shape
    ax.imshow(_montage(tiles[:cols], cols), cmap=_cmap(cmap), vmin=vmin, vmax=vmax,
              interpolation="nearest")
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(min(n, cols))],
                  [str(j) for j in range(min(n, cols))], fontsize=6)
    ax.tick_params(length=0)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(ax.images[0], ax=ax, fraction=0.03, pad=0.01, aspect=8)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _filters_figure(model, image, max_cols=16):
    """The first conv layer's filters (input channel 0; colour: weight, diverging around 0),
    then the input image and every stage's feature maps for it (colour: activation), one row
    each, at most ``max_cols`` channels per row (the row title says when fewer than all)."""
    maps = model.feature_maps(image[None])                      # name -> (1, C, H, W) or (1, K)
    convs = [m for m in model.modules() if type(m).__name__ == "Conv2d"]
    weight = np.asarray(convs[0].weight.data)                    # (C_out, C_in, kH, kW)
    filters = weight[:, 0]
    stages = [(name, a[0]) for name, a in maps.items() if a.ndim == 4]
    widest = max(a.shape[0] for _, a in stages[1:]) if len(stages) > 1 else 8
    cols = min(max(8, widest, filters.shape[0]), max_cols)
    rows = 1 + len(stages)
    fig = _figure(figsize=(cols * 0.75 + 1.6, rows * 1.05 + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]

    n = min(cols, len(filters))
    w_max = float(np.abs(filters[:n]).max()) or 1.0
    _tile_row(fig, axes[0], filters, cols, "RdBu_r", -w_max, w_max, "weight")
    axes[0].set_title(f"conv1 filters on input channel 0 of {weight.shape[1]}: "
                      f"{_count(n, len(filters), 'output channels')}", loc="left", fontsize=8)
    axes[0].set_ylabel("filters", fontsize=7)

    for ax, (name, a) in zip(axes[1:], stages):
        n = min(cols, a.shape[0])
        part = a[:n]
        if name == "input":
            cmap, lo, hi, what = "gray", float(part.min()), float(part.max()), "pixel value"
            head = f"input image: {_count(n, a.shape[0])}"
        elif name.startswith("conv"):
            m = float(np.abs(part).max()) or 1.0
            cmap, lo, hi, what = "RdBu_r", -m, m, "activation\n(before ReLU)"
            head = f"{name} feature maps: {_count(n, a.shape[0])}"
        else:
            cmap, lo, hi, what = "viridis", 0.0, float(part.max()) or 1.0, "activation"
            head = f"{name} feature maps: {_count(n, a.shape[0])}"
        if hi <= lo:
            hi = lo + 1.0
        _tile_row(fig, ax, part, cols, cmap, lo, hi, what)
        ax.set_title(head, loc="left", fontsize=8)
        ax.set_ylabel(name, fontsize=7)
    axes[-1].set_xlabel("channel", fontsize=7)
    fig.suptitle("a CNN's first-layer filters, then the feature maps of one image", fontsize=9)
    return fig


def plot_filters_and_maps(model, image, path) -> bool:
    """One PNG: the first conv layer's filters (one tile per output channel, input channel 0),
    then the input image and every stage's feature maps for it, at most 16 channels a row.
    False without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_filters_figure(model, image), path, dpi=120)


# ------------------------------------------------------------------------------------------------
# VAE and generated images
# ------------------------------------------------------------------------------------------------
def _image_rows(ax, images, side, cols, title):
    """Flattened grey ``side`` x ``side`` images in [0, 1], ``cols`` a row, in one Axes."""
    ax.imshow(_montage(images.reshape(-1, side, side), cols), cmap=_cmap("gray"), vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=7)


def _vae_figure(model, test, labels=None, seed=0, n=8, max_points=2000):
    """Rows of test images, their reconstructions and samples from the prior; when
    ``latent_dim == 2``, a scatter of the test images' posterior means (one colour and legend
    entry per label when ``labels`` is given)."""
    side = int(round(np.sqrt(model.input_dim)))
    n = min(n, len(test))
    recon = model.reconstruct(test[:n])
    samples = model.sample(2 * n, rng=np.random.default_rng(seed))
    two_d = model.latent_dim == 2
    heights = [1, 1, 2] + ([4.5] if two_d else [])
    fig = _figure(figsize=(n * 0.9 + 0.4, sum(heights) * 0.95 + 0.5), layout="constrained")
    axes = fig.subplots(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    _image_rows(axes[0], np.asarray(test[:n]), side, n, "test images")
    _image_rows(axes[1], recon, side, n, "reconstructions (decoder mean at the posterior mean)")
    _image_rows(axes[2], samples, side, n, f"{2 * n} samples from the prior")
    if two_d:
        ax = axes[3]
        x = test[:max_points]
        mu, _ = model.encode(x)
        if labels is None:
            ax.scatter(mu[:, 0], mu[:, 1], s=3, alpha=0.6)
        else:
            y = np.asarray(labels)[:len(x)]
            classes = np.unique(y)
            import matplotlib
            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for k, value in enumerate(classes):
                sel = y == value
                ax.scatter(mu[sel, 0], mu[sel, 1], s=3, alpha=0.6, color=cmap(k % cmap.N),
                           label=str(value))
            ax.legend(title="digit", fontsize=6, title_fontsize=7, markerscale=3,
                      loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xlabel("z1", fontsize=8)
        ax.set_ylabel("z2", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_title(f"posterior means of {len(x)} test images (latent_dim = 2)", fontsize=8)
    fig.suptitle("VAE: test images, reconstructions and samples from the prior", fontsize=9)
    return fig


def plot_vae(model, test, path, labels=None, seed=0) -> bool:
    """A PNG for an image VAE: 8 test images over their reconstructions, 16 samples from the
    prior, and, when ``latent_dim == 2``, the posterior means of the test images (coloured by
    ``labels`` when given, with a legend). False without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_vae_figure(model, test, labels, seed), path, dpi=120)


def _samples_figure(images, title="images drawn from the prior"):
    """A titled grid of flattened square images ``(n, side * side)`` in [0, 1], 8 a row."""
    n = len(images)
    side = int(round(math.sqrt(images.shape[1])))
    cols = min(n, 8)
    rows = -(-n // cols)
    fig = _figure(figsize=(cols * 0.9, rows * 0.95 + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        axes[i // cols][i % cols].imshow(images[i].reshape(side, side), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_samples(images, path, title="images drawn from the prior") -> bool:
    """Write a titled grid of flattened square images ``(n, side * side)`` in [0, 1]; False
    without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_samples_figure(images, title), path, dpi=120)


# ------------------------------------------------------------------------------------------------
# pruning: perplexity against sparsity
# ------------------------------------------------------------------------------------------------
def _sweep_figure(curves, dense, title):
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for method, points in curves.items():
        xs, ys = zip(*points)
        ax.semilogy(np.array(xs) * 100, ys, marker="o", label=method)
    ax.axhline(dense, color="k", lw=0.8, ls="--", label="dense")
    ax.set_xlabel("sparsity (% of Linear weights, or of heads / MLP neurons, pruned)")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_pruning_sweep(curves, dense, path, title="perplexity against sparsity") -> bool:
    """``curves`` ``{method: [(sparsity, perplexity)]}`` and the dense perplexity as one
    log-scale chart. False without matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_sweep_figure(curves, dense, title), path, dpi=130)


# ------------------------------------------------------------------------------------------------
# mixed precision: gradients against the 16-bit ranges
# ------------------------------------------------------------------------------------------------
def _gradient_ranges_figure(grads, scale, ranges, title):
    fig = _figure(figsize=(8, 4.2))
    ax = fig.subplots()
    g = np.abs(np.asarray(grads, np.float64))
    g = g[g > 0]
    for values, label in ((np.log2(g), "activation gradients"),
                          (np.log2(g * scale), f"x loss scale 2^{int(np.log2(scale))}")):
        ax.hist(values, bins=120, histtype="step", lw=1.4, label=label)
    sub, normal, top = ranges["fp16"]
    ax.axvspan(min(np.log2(g).min(), sub) - 2, sub - 1, color="tab:red", alpha=0.12,
               label="fp16: flushed to zero")
    ax.axvspan(sub - 1, normal, color="tab:orange", alpha=0.12, label="fp16: subnormal")
    ax.axvspan(top, max(np.log2(g * scale).max(), top) + 2, color="tab:purple", alpha=0.12,
               label="fp16: overflow")
    bsub, bnormal, _ = ranges["bf16"]
    if np.log2(g).min() < bnormal:
        ax.axvline(bnormal, color="tab:green", ls="--", lw=1, label="bf16: smallest normal")
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("entries")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_gradient_ranges(grads, scale, ranges, path, title="") -> bool:
    """The histogram of log2 |g| for the gradient entries ``grads``, before and after the loss
    scale, over float16's flush-to-zero, subnormal and overflow regions. False without
    matplotlib."""
    if not _have_matplotlib():
        return False
    return _save(_gradient_ranges_figure(grads, scale, ranges, title), path, dpi=130)


# ------------------------------------------------------------------------------------------------
# word vectors: a PCA picture of neighbourhoods
# ------------------------------------------------------------------------------------------------
def _pca_2d(x):
    r"""The rows of ``x`` ``(n, D)`` on the two leading principal axes, in float64: centre,
    :math:`X_c = U S V^\top`, coordinates :math:`X_c V_{:, :2}` (zeros for an axis that does not
    exist when ``n`` or ``D`` is below 2). Each axis's sign is fixed so that its largest |loading|
    is positive (the picture does not flip between runs). Returns ``(coords (n, 2), fraction of
    the variance on each axis (2,))``."""
    xc = np.asarray(x, np.float64)
    xc = xc - xc.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.argmax(np.abs(axes), axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((xc.shape[0], 2))
    coords[:, :k] = xc @ axes.T
    var = s ** 2
    frac = np.zeros(2)
    if var.sum() > 0:
        frac[:k] = var[:k] / var.sum()
    return coords, frac


def _word_groups(kv, words, topn):
    """``[(query word, [its topn neighbours])]`` for the distinct ``words`` (all must be keys)."""
    if isinstance(words, str):
        words = [words]
    words = list(dict.fromkeys(words))
    if not words:
        raise ValueError("words must name at least one word")
    bad = [w for w in words if w not in kv]
    if bad:
        raise ValueError(f"words not in the vocabulary ({len(kv)} keys): {bad[:20]}"
                         + (f" and {len(bad) - 20} more" if len(bad) > 20 else ""))
    if isinstance(topn, bool) or not isinstance(topn, (int, np.integer)) or topn < 0:
        raise ValueError(f"topn must be an int >= 0, got {topn!r}")
    return [(w, [k for k, _ in kv.most_similar(w, topn=int(topn))] if topn else [])
            for w in words]


def _word_vectors_figure(kv, words, topn=5, title=""):
    """The query ``words`` (large dots, bold labels) and each one's ``topn`` nearest neighbours
    by cosine (small dots), one colour per query word, all projected by :func:`_pca_2d` of their
    unit vectors (the cosine geometry the neighbours come from). A point shared by two groups is
    drawn once, in the colour of the first."""
    import matplotlib
    groups = _word_groups(kv, words, topn)
    points, colour_of = [], {}
    for g, (w, near) in enumerate(groups):
        for k in [w] + near:
            if k not in colour_of:
                colour_of[k] = g
                points.append(k)
    for w, _ in groups:                        # a query word is coloured as its own group
        colour_of[w] = next(g for g, (q, _) in enumerate(groups) if q == w)
    coords, frac = _pca_2d(np.stack([kv.get_vector(k, norm=True) for k in points]))
    where = {k: i for i, k in enumerate(points)}
    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    fig = _figure(figsize=(7.5, 6))
    ax = fig.subplots()
    queries = {w for w, _ in groups}
    for g, (w, near) in enumerate(groups):
        colour = cmap(g % cmap.N)
        mine = [k for k in points if colour_of[k] == g and k not in queries]
        if mine:
            xy = coords[[where[k] for k in mine]]
            ax.scatter(xy[:, 0], xy[:, 1], s=18, color=colour, alpha=0.8)
        x, y = coords[where[w]]
        ax.scatter([x], [y], s=80, color=colour, edgecolor="black", linewidth=0.6,
                   label=f"{w} and its {len(near)} nearest" if near else w)
    for k in points:
        x, y = coords[where[k]]
        ax.annotate(k, (x, y), xytext=(3, 3), textcoords="offset points",
                    fontsize=8 if k in queries else 7, weight="bold" if k in queries else "normal",
                    color=cmap(colour_of[k] % cmap.N))
    ax.set_xlabel(f"first principal component ({100 * frac[0]:.0f}% of the variance)")
    ax.set_ylabel(f"second principal component ({100 * frac[1]:.0f}% of the variance)")
    ax.set_title(title or f"{len(groups)} word(s) and their {topn} nearest neighbours (cosine), "
                          f"PCA of the unit vectors", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="query word", title_fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_word_vectors(kv, words, path, topn=5, title="") -> bool:
    """Write a PNG of the query ``words`` of the :class:`~scratchlm.models.KeyedVectors` ``kv``
    and each one's ``topn`` nearest neighbours (cosine), projected to 2-D by PCA (centred, SVD,
    the two leading components, in float64) of their unit vectors and drawn as labelled points,
    one colour per query word. A word not in ``kv`` is a ``ValueError`` naming it. False
    without matplotlib."""
    _word_groups(kv, words, topn)              # unknown words are an error, matplotlib or not
    if not _have_matplotlib():
        return False
    return _save(_word_vectors_figure(kv, words, topn, title), path, dpi=130)
