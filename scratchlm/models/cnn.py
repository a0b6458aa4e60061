r"""CNN: the classic small convolutional classifier (LeCun et al., 1998, in its modern ReLU /
max-pool form), for 1- or 3-channel images such as :func:`scratchlm.data.digit_images`.

    x (N, C, S, S) -> [Conv2d k x k, padding k//2 -> ReLU -> MaxPool2d 2] per entry of channels
                   -> Flatten -> fc (Linear)                        -> logits (N, num_classes)

.. math::  p(y \mid x) = \mathrm{softmax}(W_{fc}\, \mathrm{vec}(h_L) + b_{fc}),\qquad
           h_l = \mathrm{maxpool}_2(\mathrm{relu}(W_l * h_{l-1} + b_l)),\quad h_0 = x

With the defaults (``channels=(16, 32)``, ``kernel_size=3``, 28x28 inputs) the feature maps are
16x28x28 -> 16x14x14 -> 32x14x14 -> 32x7x7, and ``fc`` maps the 1568 features to the 10 classes;
the softmax lives in the loss (``CrossEntropyLoss``), so ``model(x)`` returns logits.

Parameter names are those of the equivalent ``torch.nn`` model -- ``features`` a
``Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d)`` and ``fc`` a ``Linear``
(``features.0.weight``, ``features.3.weight``, ``fc.weight`` ...) -- so a state dict moves across
unchanged. :func:`scratchlm.training.fit_classifier` trains it (SGD with momentum or Adam, cosine schedule,
checkpoints that resume bit-identically) and :func:`accuracy` scores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import nn
from .._checks import (float_array, float_errors_checked, index_array, make_rng, positive_int,
                       resolve_dtype, same_dtype, scalar, trusted, upstream)
from ..nn.module import NO_CACHE

__all__ = ["CNN", "CNNConfig", "accuracy"]


@dataclass
class CNNConfig:
    in_channels: int = 1
    num_classes: int = 10
    channels: tuple = (16, 32)
    kernel_size: int = 3
    image_size: int = 28

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "kernel_size", "image_size"):
            positive_int(getattr(self, name), name)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if isinstance(self.channels, (int, np.integer)) or not hasattr(self.channels, "__len__"):
            raise TypeError(f"channels must be a tuple of ints (one per conv stage), got "
                            f"{self.channels!r}")
        self.channels = tuple(positive_int(c, "channels entry") for c in self.channels)
        if not self.channels:
            raise ValueError("channels must name at least one conv stage, got ()")
        self.sizes()                                   # raises if the image is too small

    def sizes(self) -> list:
        """Spatial size after each stage: conv (``s + 2 (k//2) - k + 1``), then pool (``// 2``)."""
        k, s, out = self.kernel_size, self.image_size, []
        for i in range(len(self.channels)):
            conv = s + 2 * (k // 2) - k + 1
            if conv < 2:
                raise ValueError(f"image_size={self.image_size} is too small for "
                                 f"{len(self.channels)} conv+pool stages with kernel_size={k}: "
                                 f"stage {i + 1} would pool a {conv}x{conv} map")
            s = conv // 2
            out.append(s)
        return out

    @property
    def fc_features(self) -> int:
        return self.channels[-1] * self.sizes()[-1] ** 2


class CNN(nn.Module):
    """``CNN(in_channels=1, num_classes=10, channels=(16, 32), kernel_size=3, image_size=28,
    dtype=np.float32, rng=None)``.

    * ``logits = model(x)`` -- ``x`` ``(N, in_channels, image_size, image_size)`` of the model's
      dtype, finite; logits ``(N, num_classes)``;
    * ``logits, loss = model(x, labels)`` -- ``labels`` ``(N,)`` ints in ``[0, num_classes)``;
      ``loss`` the mean cross-entropy (a float);
    * ``dx = model.backward(dlogits)``, or ``model.backward()`` after a call with labels (the
      gradient of the loss). ``backward(dlogits, dloss)`` takes one gradient per output of
      ``(logits, loss)`` and adds both paths. Parameter gradients accumulate; ``dx`` is returned.
    * ``predict(x)`` (class ids), ``feature_maps(x)`` (every stage's activations).

    ``forward`` checks ``x`` (shape, dtype, NaN/inf) and ``labels`` before entering the layers,
    which then run ``@trusted`` (no NaN scans of the activations they pass each other).
    """

    differentiable_inputs = (0,)

    def __init__(self, in_channels=1, num_classes=10, channels=(16, 32), kernel_size=3,
                 image_size=28, dtype=np.float32, rng=None):
        super().__init__()
        self.config = CNNConfig(in_channels, num_classes, channels, kernel_size, image_size)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(rng)
        c = self.config
        layers, cin = [], c.in_channels
        for cout in c.channels:
            layers += [nn.Conv2d(cin, cout, c.kernel_size, padding=c.kernel_size // 2,
                                 dtype=self.dtype, rng=rng),
                       nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c.fc_features, c.num_classes, dtype=self.dtype, rng=rng)
        self.loss_fn = nn.CrossEntropyLoss()
        self._has_loss = False

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Rebuild from a :class:`CNNConfig` or its :meth:`config_dict` (e.g. a checkpoint's)."""
        fields = asdict(config) if isinstance(config, CNNConfig) else dict(config)
        return cls(**fields, dtype=dtype, rng=rng)

    def config_dict(self) -> dict:
        """The constructor's arguments as JSON-able values (``channels`` as a list)."""
        d = asdict(self.config)
        d["channels"] = list(d["channels"])
        return d

    # -- forward / backward --------------------------------------------------------------------
    def _check_images(self, x, name="x"):
        c = self.config
        x = float_array(x, name, ndim=4)                     # outside @trusted: NaN/inf scanned
        want = (c.in_channels, c.image_size, c.image_size)
        if x.shape[1:] != want:
            raise ValueError(f"{name} must have shape (N, {want[0]}, {want[1]}, {want[2]}) "
                             f"(N, in_channels, image_size, image_size), got {x.shape}")
        same_dtype(x, name, self.dtype, "CNN")
        return x

    def forward(self, x, labels=None):
        x = self._check_images(x)
        if labels is not None:
            labels = index_array(labels, "labels", self.config.num_classes, ndim=1)
            if len(labels) != len(x):
                raise ValueError(f"labels must have one entry per image ({len(x)}), got "
                                 f"{len(labels)}")
        return self._forward(x, labels)

    @trusted                        # inputs checked in forward; the layers skip their NaN scans
    def _forward(self, x, labels):
        logits = self.fc(self.flatten(self.features(x)))                      # (N, classes)
        self._cache = len(x)
        if labels is None:
            self._has_loss = False
            return logits
        loss = self.loss_fn(logits, labels)
        self._has_loss = True
        return logits, loss

    def backward(self, dlogits=None, dloss=None):
        """``dx`` (N, C, S, S); parameter gradients are added to ``.grad``.

        ``backward()`` after ``model(x, labels)`` backpropagates the loss; ``backward(dlogits)``
        an upstream gradient of the logits; ``backward(dlogits, dloss)`` both (the gradient
        of ``<dlogits, logits> + dloss * loss``)."""
        n = self._saved()
        if dlogits is None and dloss is None:
            if not self._has_loss:
                raise RuntimeError("backward() without dlogits needs a forward call with labels")
            dloss = 1.0
        g = None
        if dlogits is not None:
            g = upstream(dlogits, (n, self.config.num_classes), self.dtype, "dlogits")
        if dloss is not None:
            if not self._has_loss:
                raise RuntimeError("backward(dloss=...) needs a forward call with labels")
            gl = self.loss_fn.backward(scalar(dloss, "dloss"))
            g = gl if g is None else g + gl
        return self._backward(g)

    @trusted
    def _backward(self, dlogits):
        return self.features.backward(self.flatten.backward(self.fc.backward(dlogits)))

    # -- inference ----------------------------------------------------------------------------
    @float_errors_checked          # it checks its logits; no NumPy warnings
    def predict(self, x, batch_size=512) -> np.ndarray:
        """Class ids ``(N,)`` int64: the argmax of the logits, in eval mode, ``batch_size``
        images at a time. Leaves no cache behind (a ``backward`` next is refused). Logits with
        NaN or +inf (a diverged model) raise ``NonFiniteError``: never class 0 for every image."""
        from ..decoding import check_logits
        out = []
        for z in self._logits(x, batch_size):
            check_logits(z, "class")
            out.append(np.argmax(z, axis=1))
        return np.concatenate(out)

    def _logits(self, x, batch_size):
        x = self._check_images(x)
        batch_size = positive_int(batch_size, "batch_size")
        was = self.training
        self.eval()
        try:
            for i in range(0, len(x), batch_size):
                yield self._forward(x[i:i + batch_size], None)
        finally:
            self.train(was)
            self._forget()

    def _forget(self):
        for m in self.modules():
            object.__setattr__(m, "_cache", NO_CACHE)
        self._has_loss = False

    def feature_maps(self, x) -> dict:
        """Every stage's activations for images ``x``, in order: ``{'input': x, 'conv1': ...,
        'relu1': ..., 'pool1': ..., 'conv2': ..., ..., 'logits': ...}`` (arrays of the model's
        dtype, shapes ``(N, channels, H, W)``, logits ``(N, num_classes)``), computed in eval
        mode. Leaves no cache behind."""
        return self._feature_maps(self._check_images(x))

    @trusted
    def _feature_maps(self, x) -> dict:
        out = {"input": x}
        was = self.training
        self.eval()
        try:
            h = x
            for i, layer in enumerate(self.features):
                h = layer(h)
                kind = ("conv", "relu", "pool")[i % 3]
                out[f"{kind}{i // 3 + 1}"] = h
            out["logits"] = self.fc(self.flatten(h))
        finally:
            self.train(was)
            self._forget()
        return out

    def extra_repr(self):
        c = self.config
        return (f"in_channels={c.in_channels}, num_classes={c.num_classes}, "
                f"channels={c.channels}, kernel_size={c.kernel_size}, image_size={c.image_size}")


# ------------------------------------------------------------------------------------------------
# evaluation and training
# ------------------------------------------------------------------------------------------------
def _split(data, name, model):
    """``(images, labels)`` checked against each other and the model; returns the arrays."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (images, labels), got {type(data).__name__}")
    images = float_array(data[0], f"{name} images", ndim=4)
    labels = index_array(data[1], f"{name} labels", model.config.num_classes, ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{name} has {len(images)} images but {len(labels)} labels")
    c = model.config
    want = (c.in_channels, c.image_size, c.image_size)
    if images.shape[1:] != want:
        raise ValueError(f"{name} images must have shape (N, {want[0]}, {want[1]}, {want[2]}) "
                         f"to fit the model, got {images.shape}")
    return images, labels


def accuracy(model, images, labels, batch_size=512) -> float:
    """Fraction of ``images`` whose predicted class (:meth:`CNN.predict`, eval mode) equals
    ``labels``. Images of another float dtype than the model's are cast."""
    if not isinstance(model, CNN):
        raise TypeError(f"model must be a CNN, got {type(model).__name__}")
    x, y = _split((images, labels), "data", model)
    return float(np.mean(model.predict(x.astype(model.dtype, copy=False), batch_size) == y))
