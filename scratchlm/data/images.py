r"""Image data that needs no download: procedurally rendered digits 0-9, scikit-learn's bundled
8x8 digits when it is installed, and the helpers around them (binarisation, resizing).

**Glyph digits** (:func:`digit_images`). Every digit is described in :data:`GLYPHS` as pen strokes
in a glyph box ``x in [0, 0.6]``, ``y in [0, 1]`` (``y`` pointing down, as image rows do): straight
polylines and elliptical arcs, with one to three *variants* per digit (a ``1`` with or without its
flag and foot, an open or closed ``4``, a ``7`` with or without its bar, a ``9`` with a straight or
a curved tail, a round or a flat-topped ``3``). An image is drawn as follows, every random number
coming from one ``np.random.Generator`` seeded by ``seed``:

1. *label* -- ``n`` labels, each digit ``n // 10`` or ``n // 10 + 1`` times, randomly permuted
   (or the ``labels`` given); *variant* -- uniform among that digit's variants.
2. *strokes to points* -- each stroke becomes a polyline: the points of its primitives in order
   (an arc ``(cx, cy, rx, ry, a0, a1)`` is sampled at angles from ``a0`` to ``a1`` degrees as
   ``(cx + rx cos a, cy - ry sin a)``, at most 0.12 glyph units apart; a polyline keeps its
   vertices, long edges subdivided likewise).
3. *wobble* -- every point ``p`` (glyph units, centred on the box centre ``(0.3, 0.5)``) moves by
   a smooth random field, independently per axis,
   :math:`\delta(p) = \frac{0.04}{\sqrt 3}\sum_{k=1}^{3} c_k \sin(\omega_k \cdot p + \phi_k)`,
   with :math:`c_k \sim N(0, 1)`, :math:`\omega_k \sim N(0, 2.5^2 I_2)` (radians per glyph
   unit), :math:`\phi_k \sim U(0, 2\pi)`: the same pen path, drawn by a slightly unsteady hand.
4. *pose* -- the point is mapped to pixel coordinates (``x`` right, ``y`` down, pixel ``(i, j)``
   centred at ``(j + 0.5, i + 0.5)``) by
   :math:`q = f\,h\, R(\theta)\, \begin{pmatrix} 1 & \sigma \\ 0 & 1\end{pmatrix}
   \begin{pmatrix} a & 0 \\ 0 & 1\end{pmatrix} p + o`
   with canvas size :math:`s` = ``size``, glyph height :math:`h \sim U(0.6, 0.75)\,s`, aspect
   :math:`a \sim U(0.8, 1.2)`, slant (shear) :math:`\sigma \sim U(-0.3, 0.3)` and rotation
   :math:`\theta \sim U(-15°, 15°)`. *Placement*: the inked area must keep a blank border of
   :math:`0.1 s` (as MNIST's digits sit in the central 20x20 of 28x28), so the stroke centrelines
   may span :math:`r = 0.8 s - w - 1` per axis (``w`` the stroke width below, plus the
   anti-aliased edge). With :math:`E` the per-axis extent of the posed points, the shrink factor
   is :math:`f = \min(1, \min_{\text{axes}} r / E)` (most images: 1), and the offset
   :math:`o = s/2 - f\,c + u \odot (r - f E)/2` centres the bounding box (centre :math:`c`)
   and then moves it by a random fraction :math:`u \sim U(-1, 1)^2` of the room left.
5. *ink* -- with :math:`d` the Euclidean distance from a pixel centre to the nearest stroke segment,
   stroke width :math:`w \sim U(0.06 s, 0.12 s)` (1.7 to 3.4 px at 28x28) and ink level
   :math:`\iota \sim U(0.8, 1)`, the pixel is :math:`\iota\,\mathrm{clip}(w/2 - d + 1/2, 0, 1)`:
   solid ink inside the stroke, a one-pixel linear anti-aliased edge, 0 outside.
6. *noise* -- i.i.d. :math:`N(0, \text{noise}^2)` is added to every pixel and the result clipped
   to ``[0, 1]``.

The draws happen in that order, vectorised over the ``n`` images (labels, variants, wobble, pose,
placement ``u``, width, ink, then the noise image by image), so the output depends on
``(n, seed, size, noise, labels)`` only. Two different seeds give independent images;
:func:`load_digits_dataset` draws its train and test splits from two independent streams spawned
from its ``seed``, so a test image is never a training image.

**scikit-learn digits** (:func:`load_digits_dataset` with ``source='sklearn'``): the 1797 8x8
images of ``sklearn.datasets.load_digits`` (values 0..16, divided by 16), shuffled with ``seed``
and split without overlap; ``size`` other than 8 resizes them bilinearly (:func:`resize_images`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import choice, float_array, index_array, integer, make_rng, positive_int

__all__ = ["GLYPHS", "ImageSplit", "digit_images", "load_digits_dataset", "binarize",
           "resize_images"]

# ------------------------------------------------------------------------------------------------
# the glyphs
# ------------------------------------------------------------------------------------------------
# A glyph is a list of variants; a variant a list of strokes; a stroke a list of primitives:
#   ("L", (x0, y0), (x1, y1), ...)        a polyline through the points
#   ("A", cx, cy, rx, ry, a0, a1)         an elliptical arc from a0 to a1 degrees,
#                                         point(a) = (cx + rx cos a, cy - ry sin a)
# Consecutive primitives of one stroke are joined; separate strokes are not.
# Box: x in [0, 0.6], y in [0, 1], y down.
_ROUND_0 = [[("A", 0.3, 0.5, 0.28, 0.48, 90, 450)]]
_BOWL_9 = ("A", 0.3, 0.29, 0.27, 0.28, 0, 360)

GLYPHS = {
    0: [_ROUND_0],
    1: [[[("L", (0.3, 0.0), (0.3, 1.0))]],                                   # a bare bar
        [[("L", (0.12, 0.2), (0.34, 0.0), (0.34, 1.0))]],                    # with a flag
        [[("L", (0.12, 0.2), (0.34, 0.0), (0.34, 1.0))],                     # flag and foot
         [("L", (0.12, 1.0), (0.56, 1.0))]]],
    2: [[[("A", 0.3, 0.27, 0.27, 0.25, 165, -35), ("L", (0.02, 1.0), (0.6, 1.0))]]],
    3: [[[("A", 0.29, 0.25, 0.25, 0.23, 150, -90), ("A", 0.29, 0.72, 0.29, 0.26, 90, -150)]],
        [[("L", (0.04, 0.0), (0.56, 0.0), (0.25, 0.4)),                         # flat top
          ("A", 0.29, 0.7, 0.29, 0.28, 110, -150)]]],
    4: [[[("L", (0.44, 1.0), (0.44, 0.0), (0.0, 0.68), (0.6, 0.68))]],       # closed
        [[("L", (0.12, 0.0), (0.03, 0.62), (0.6, 0.62))],                    # open
         [("L", (0.44, 0.28), (0.44, 1.0))]]],
    5: [[[("L", (0.56, 0.0), (0.1, 0.0), (0.06, 0.44)),
          ("A", 0.3, 0.69, 0.28, 0.29, 130, -145)]]],
    6: [[[("A", 0.58, 0.72, 0.54, 0.7, 95, 180), ("A", 0.31, 0.73, 0.27, 0.26, 180, 540)]]],
    7: [[[("L", (0.0, 0.0), (0.6, 0.0), (0.2, 1.0))]],
        [[("L", (0.0, 0.0), (0.6, 0.0), (0.2, 1.0))],                         # with a bar
         [("L", (0.18, 0.52), (0.52, 0.52))]]],
    8: [[[("A", 0.3, 0.25, 0.22, 0.24, -90, 270)], [("A", 0.3, 0.74, 0.28, 0.26, 90, 450)]]],
    9: [[[_BOWL_9, ("L", (0.57, 0.29), (0.52, 1.0))]],                         # straight tail
        [[_BOWL_9, ("A", 0.02, 0.29, 0.55, 0.7, 0, -80)]]],                    # curved tail
}

_CENTRE = np.array([0.3, 0.5])
_STEP = 0.12                      # max distance between consecutive stroke points (glyph units)
_WOBBLE, _WOBBLE_TERMS, _WOBBLE_FREQ = 0.04, 3, 2.5
_HEIGHT = (0.6, 0.75)             # glyph height / canvas size
_ASPECT = (0.8, 1.2)
_SHEAR = 0.3
_ROTATION = math.radians(15.0)
_MARGIN = 0.1                     # blank border / canvas size
_WIDTH = (0.06, 0.12)             # stroke width / canvas size
_INK = (0.8, 1.0)
_CHUNK = 512                      # images rendered at once (keeps the working set in cache)


def _stroke_points(stroke) -> np.ndarray:
    """The polyline of one stroke, ``(P, 2)`` glyph units, consecutive points <= _STEP apart."""
    pts = []
    for prim in stroke:
        if prim[0] == "A":
            _, cx, cy, rx, ry, a0, a1 = prim
            a0, a1 = math.radians(a0), math.radians(a1)
            length = abs(a1 - a0) * max(rx, ry)                   # an upper bound on arc length
            a = np.linspace(a0, a1, max(2, math.ceil(length / _STEP) + 1))
            seg = np.stack([cx + rx * np.cos(a), cy - ry * np.sin(a)], axis=1)
        else:
            verts = np.array(prim[1:], dtype=np.float64)
            seg = [verts[:1]]
            for p, q in zip(verts[:-1], verts[1:]):
                k = max(1, math.ceil(np.hypot(*(q - p)) / _STEP))
                seg.append(p + (q - p) * (np.arange(1, k + 1) / k)[:, None])
            seg = np.concatenate(seg)
        pts.append(seg)
    return np.concatenate(pts)


def _variant_geometry(variant):
    """``(points (P, 2) centred on the box centre, seg_start (S,), seg_end (S,))`` for a variant:
    the strokes' points stacked, and the index pairs of the segments (never across strokes)."""
    points, starts = [], []
    offset = 0
    for stroke in variant:
        p = _stroke_points(stroke)
        points.append(p)
        starts.append(offset + np.arange(len(p) - 1))
        offset += len(p)
    starts = np.concatenate(starts)
    return np.concatenate(points) - _CENTRE, starts, starts + 1


_GEOMETRY = {(d, v): _variant_geometry(var) for d, g in GLYPHS.items() for v, var in enumerate(g)}


def _render(points, seg_a, seg_b, width, ink, size):
    """Distance-field rendering. ``points`` (m, P, 2) in pixel coordinates; returns (m, size,
    size) float32 ``ink * clip(width/2 - d + 1/2, 0, 1)`` with ``d`` the distance from each pixel
    centre to the nearest segment ``points[:, seg_a[j]] -> points[:, seg_b[j]]``."""
    centres = (np.arange(size, dtype=np.float32) + 0.5)
    px = np.broadcast_to(centres[None, :], (size, size)).reshape(1, -1)    # x = column
    py = np.broadcast_to(centres[:, None], (size, size)).reshape(1, -1)    # y = row
    pts = points.astype(np.float32)
    m = len(pts)
    best = np.full((m, size * size), np.inf, dtype=np.float32)
    for a, b in zip(seg_a, seg_b):
        ax, ay = pts[:, a, 0:1], pts[:, a, 1:2]                          # (m, 1)
        ux, uy = pts[:, b, 0:1] - ax, pts[:, b, 1:2] - ay
        inv = 1.0 / np.maximum(ux * ux + uy * uy, np.float32(1e-12))
        dx, dy = px - ax, py - ay                                          # (m, size*size)
        t = np.clip((dx * ux + dy * uy) * inv, 0.0, 1.0)
        dx -= t * ux
        dy -= t * uy
        np.minimum(best, dx * dx + dy * dy, out=best)
    half = (width.astype(np.float32) / 2 + np.float32(0.5))[:, None]
    img = np.clip(half - np.sqrt(best), 0.0, 1.0) * ink.astype(np.float32)[:, None]
    return img.reshape(m, size, size)


# ------------------------------------------------------------------------------------------------
# the public functions
# ------------------------------------------------------------------------------------------------
class ImageSplit(NamedTuple):
    """``(images, labels)``: images ``(n, C, H, W)`` float32 in [0, 1], labels ``(n,)`` int64."""
    images: np.ndarray
    labels: np.ndarray


def _noise_level(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)):
        raise TypeError(f"noise must be a number, got {type(noise).__name__}")
    noise = float(noise)
    if not (noise >= 0 and np.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0 (a standard deviation), got {noise}")
    return noise


def digit_images(n, seed=0, size=28, noise=0.05, labels=None):
    """``n`` rendered digit images: ``ImageSplit(images (n, 1, size, size) float32 in [0, 1],
    labels (n,) int64)``.

    The generative process is the module docstring's (strokes of :data:`GLYPHS`, wobble, random
    pose, stroke width and ink, Gaussian pixel noise of standard deviation ``noise``, clipped).
    ``seed``: an int or a ``np.random.Generator`` (used and advanced). ``labels``: the digits to
    draw, an int array of length ``n`` in ``[0, 10)``; by default each digit appears ``n // 10``
    or ``n // 10 + 1`` times in random order. ``size`` >= 8 scales the whole drawing.
    """
    n = positive_int(n, "n")
    size = positive_int(size, "size", minimum=8)
    noise = _noise_level(noise)
    rng = make_rng(seed)
    if labels is None:
        y = rng.permutation(np.arange(n, dtype=np.int64) % 10)
    else:
        y = index_array(labels, "labels", 10, ndim=1).copy()
        if len(y) != n:
            raise ValueError(f"labels must have length n={n}, got {len(y)}")
    counts = np.array([len(GLYPHS[int(d)]) for d in range(10)])
    variant = (rng.random(n) * counts[y]).astype(np.int64)              # uniform per digit
    K = _WOBBLE_TERMS
    coef = rng.standard_normal((n, 2, K)) * (_WOBBLE / math.sqrt(K))
    freq = rng.standard_normal((n, 2, K, 2)) * _WOBBLE_FREQ
    phase = rng.uniform(0.0, 2 * math.pi, (n, 2, K))
    height = rng.uniform(*_HEIGHT, n) * size
    aspect = rng.uniform(*_ASPECT, n)
    shear = rng.uniform(-_SHEAR, _SHEAR, n)
    theta = rng.uniform(-_ROTATION, _ROTATION, n)
    place = rng.uniform(-1.0, 1.0, (n, 2))
    width = rng.uniform(*_WIDTH, n) * size
    ink = rng.uniform(*_INK, n)
    # pose: q = f h R(theta) [[1, shear], [0, 1]] diag(aspect, 1) p + offset
    c, s = np.cos(theta), np.sin(theta)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)          # (n, 2, 2)
    S = np.zeros((n, 2, 2))
    S[:, 0, 0], S[:, 0, 1], S[:, 1, 1] = aspect, shear, 1.0
    A = height[:, None, None] * (R @ S)
    room = size * (1 - 2 * _MARGIN) - width - 1.0          # what the stroke centrelines may span

    images = np.empty((n, 1, size, size), dtype=np.float32)
    for key, (p0, sa, sb) in _GEOMETRY.items():
        idx = np.flatnonzero((y == key[0]) & (variant == key[1]))
        for lo in range(0, len(idx), _CHUNK):
            i = idx[lo:lo + _CHUNK]
            # wobble: delta[m, axis, P] = sum_k coef * sin(freq . p + phase)
            arg = np.einsum("makc,pc->makp", freq[i], p0) + phase[i][..., None]
            p = p0[None] + np.einsum("mak,makp->mpa", coef[i], np.sin(arg))     # (m, P, 2)
            q = np.einsum("mab,mpb->mpa", A[i], p)                              # about 0
            lo_q, hi_q = q.min(axis=1), q.max(axis=1)                           # (m, 2)
            f = np.minimum(1.0, (room[i][:, None] / np.maximum(hi_q - lo_q, 1e-9)).min(axis=1))
            slack = (room[i][:, None] - f[:, None] * (hi_q - lo_q)) / 2           # >= 0
            offset = size / 2 - f[:, None] * (lo_q + hi_q) / 2 + place[i] * slack
            q = f[:, None, None] * q + offset[:, None, :]
            images[i, 0] = _render(q, sa, sb, width[i], ink[i], size)
    if noise > 0:
        for lo in range(0, n, _CHUNK):         # in image order: the same stream as one big draw
            hi = min(n, lo + _CHUNK)
            draw = rng.standard_normal((hi - lo, 1, size, size)) * noise
            images[lo:hi] += draw.astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return ImageSplit(images, y)


def load_digits_dataset(n_train=None, n_test=None, seed=0, source="glyphs", size=None,
                        noise=0.05):
    """Train and test splits of a digit set: ``(train, test)``, each an
    :class:`ImageSplit` ``(images (n, 1, size, size) float32 in [0, 1], labels (n,) int64)``.

    * ``source='glyphs'`` (no download, no dependency): :func:`digit_images` rendered at ``size``
      (default 28) with ``noise``; defaults ``n_train=20000``, ``n_test=2000``. The two splits
      come from two independent generators spawned from ``seed``
      (``np.random.SeedSequence(seed).spawn(2)``), so they are disjoint draws, and a larger
      ``n_test`` never changes the training set.
    * ``source='sklearn'``: scikit-learn's bundled 8x8 digits (1797 images, ``ImportError`` when
      scikit-learn is missing), pixel values / 16, shuffled with ``seed`` and split without
      overlap; defaults ``n_train=1497``, ``n_test=300`` (at most 1797 together). ``size``
      defaults to the native 8; any other size resizes bilinearly (:func:`resize_images`).
      ``noise`` is ignored.
    """
    source = choice(source, "source", ("glyphs", "sklearn"))
    seed = integer(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if source == "glyphs":
        n_train = positive_int(20000 if n_train is None else n_train, "n_train")
        n_test = positive_int(2000 if n_test is None else n_test, "n_test")
        size = positive_int(28 if size is None else size, "size", minimum=8)
        noise = _noise_level(noise)
        g_train, g_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        return (digit_images(n_train, g_train, size, noise),
                digit_images(n_test, g_test, size, noise))
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("source='sklearn' needs scikit-learn (pip install scikit-learn); "
                          "source='glyphs' needs nothing") from None
    n_train = positive_int(1497 if n_train is None else n_train, "n_train")
    n_test = positive_int(300 if n_test is None else n_test, "n_test")
    size = positive_int(8 if size is None else size, "size")
    digits = load_digits()
    total = len(digits.target)
    if n_train + n_test > total:
        raise ValueError(f"n_train + n_test must be <= {total} (scikit-learn's digits), got "
                         f"{n_train} + {n_test} = {n_train + n_test}")
    order = np.random.default_rng(seed).permutation(total)
    images = (np.asarray(digits.images, dtype=np.float64) / 16.0)[:, None]      # (1797, 1, 8, 8)
    images = images.astype(np.float32)
    if size != images.shape[-1]:
        images = resize_images(images, size)
    labels = np.asarray(digits.target, dtype=np.int64)
    tr, te = order[:n_train], order[n_train:n_train + n_test]
    return ImageSplit(images[tr], labels[tr]), ImageSplit(images[te], labels[te])


def resize_images(images, size):
    """Bilinear resize of ``(..., H, W)`` images to ``(..., size, size)`` with half-pixel centres
    (``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``, no antialias):
    output pixel ``i`` samples input coordinate ``(i + 0.5) H / size - 0.5``, clamped to the
    image. Keeps the dtype (float32 or float64)."""
    x = float_array(images, "images", min_ndim=2)
    size = positive_int(size, "size")
    out = x
    for axis in (-2, -1):
        n_in = out.shape[axis]
        src = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        src = np.clip(src, 0.0, None)                       # torch clamps negative coords to 0
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (src - lo).astype(x.dtype)
        shape = [1] * out.ndim
        shape[axis] = size
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out.astype(x.dtype, copy=False)


def binarize(images, method="threshold", threshold=0.5, rng=None):
    """0/1 images of the same shape and dtype, for Bernoulli-likelihood models (a VAE):

    * ``method='threshold'``: ``images > threshold`` (deterministic; ``threshold`` in [0, 1));
    * ``method='bernoulli'``: each pixel is 1 with probability equal to its value (dynamic
      binarisation, Salakhutdinov & Murray 2008), drawn from ``rng`` (a Generator or an int
      seed; needed, so that a run is reproducible). The values must lie in [0, 1].
    """
    x = float_array(images, "images")
    method = choice(method, "method", ("threshold", "bernoulli"))
    if method == "threshold":
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer,
                                                                      np.floating)):
            raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        return (x > threshold).astype(x.dtype)
    if rng is None:
        raise ValueError("method='bernoulli' needs rng= (a numpy Generator or an int seed)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must lie in [0, 1] to be Bernoulli probabilities, got values in "
                         f"[{lo}, {hi}]")
    return (make_rng(rng).random(x.shape) < x).astype(x.dtype)
