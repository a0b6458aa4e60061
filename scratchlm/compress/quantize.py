r"""Post-training weight quantization: ``int8`` (one scale per output row) and llama.cpp's
``q8_0`` and ``q4_0`` (blocks of 32 weights, one float16 scale each).

For a ``Linear`` with weight :math:`W` (out, in):

* ``int8``: :math:`s_n = \max_k |W_{nk}| / 127`, :math:`q_{nk} = \mathrm{rint}(W_{nk}/s_n)`
  (halves to even, as ``torch.quantize_per_channel``); the product runs on the float
  activations: :math:`y = (x\,q^\top) \odot s + b`.
* ``q8_0`` / ``q4_0``: each row cut into blocks of 32 with a float16 scale (the layouts and the
  rounding of ggml's reference quantizers; see ``scratchlm/kernels/quant.py``). The product
  quantizes the activations to Q8_0 as llama.cpp's CPU backend does and sums each block in int32:
  :math:`y_{mn} = \sum_b d^x_{mb} d^w_{nb} \sum_j q^x_{mbj} q^w_{nbj} + b_n`.

:class:`QuantizedLinear` keeps only the packed weight (``qweight``) and its ``scales`` (buffers:
they are in ``state_dict()``, not trained) and the float bias. Its backward gives the input
gradient through the dequantized weight, :math:`dx = dy\,\hat W` (for ``q8_0``/``q4_0`` the
activations' rounding is passed straight through, as quantization-aware training does), so
gradients reach the layers below; the weight itself is never trained (and LoRA wraps float
``Linear`` layers only).

:func:`quantize` swaps every ``Linear`` of a model for one. A weight whose input size is not a
multiple of 32 is refused for the block formats (no padding: llama.cpp refuses such tensors
too); ``int8`` takes any size. A tied ``Linear`` (GPT's ``lm_head``, the embedding) is left in
float.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from .._checks import float_array, same_dtype
from ..kernels import quant as K
from ..kernels import split_run
from ..nn.module import Module, Parameter

__all__ = ["FORMATS", "BLOCK", "QuantizedLinear", "quantize", "quantize_weight",
           "dequantize_weight", "quantized_layers", "bits_per_weight"]

#: the formats :func:`quantize` knows
FORMATS = ("int8", "q8_0", "q4_0")
#: weights per block of ``q8_0`` / ``q4_0``
BLOCK = K.QK
_F16_MAX = float(np.finfo(np.float16).max)
#: a product splits over the threads from this many multiply-adds (our float GEMM waits for
#: 16M; these kernels run at a fraction of its speed, so a ~45 us hand-off pays off sooner)
SPLIT_MIN_MACS = 1 << 19


def _check_fmt(fmt):
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def bits_per_weight(fmt) -> float:
    """Storage per weight: int8 8 (plus a float32 per row), q8_0 8.5, q4_0 4.5."""
    return {"int8": 8.0, "q8_0": 8.5, "q4_0": 4.5}[_check_fmt(fmt)]


def quantize_weight(w, fmt: str, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """``(qweight, scales)`` of a float weight ``w`` (out, in):

    * ``int8``: int8 (out, in), float32 (out,);
    * ``q8_0``: int8 (out, in), float16 (out, in/32);
    * ``q4_0``: uint8 (out, in/2) (two 4-bit values a byte), float16 (out, in/32).

    ``w`` must be finite; a block whose scale overflows float16 (magnitudes near 8e6 for q8_0)
    is refused, naming ``name``."""
    _check_fmt(fmt)
    w = float_array(w, name, ndim=2)
    N, Kin = w.shape
    if fmt == "int8":
        scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)                     # (N,)
        safe = np.where(scale == 0, np.float32(1), scale)
        q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)            # (N, K)
        return q, scale
    if Kin % BLOCK:
        raise ValueError(f"{name} has {Kin} input features; {fmt} needs a multiple of {BLOCK} "
                         f"(int8 takes any size)")
    x = np.ascontiguousarray(w, dtype=np.float32)
    d = np.empty((N, Kin // BLOCK), np.float32)
    if fmt == "q8_0":
        q = np.empty((N, Kin), np.int8)
        K.quantize_q8_0(x, d, q)
    else:
        q = np.empty((N, Kin // 2), np.uint8)
        K.quantize_q4_0(x, d, q)
    if not np.isfinite(x).all() or np.abs(d).max(initial=0) > _F16_MAX:
        raise ValueError(f"{name} cannot be stored in {fmt}: it must be finite with block "
                         f"scales within float16's range (|scale| <= {_F16_MAX:g})")
    return q, d.astype(np.float16)


def dequantize_weight(qweight, scales, fmt: str, dtype=np.float32) -> np.ndarray:
    """The weight (out, in) that ``(qweight, scales)`` stand for, computed in ``dtype``."""
    _check_fmt(fmt)
    if fmt == "int8":
        return qweight.astype(dtype) * scales.astype(dtype)[:, None]
    d = scales.astype(dtype)                                                # (N, nb)
    N, nb = d.shape
    if fmt == "q8_0":
        q = qweight.reshape(N, nb, BLOCK).astype(dtype)
    else:
        q = K._q4_0_values(qweight).reshape(N, nb, BLOCK).astype(dtype)      # (N, nb, 32)
    return (q * d[..., None]).reshape(N, nb * BLOCK)


class QuantizedLinear(Module):
    """A ``Linear`` whose weight is stored quantized (see the module docstring).

    Buffers: ``qweight`` and ``scales`` (:func:`quantize_weight`'s shapes; ``state_dict`` and
    files hold them in llama.cpp's layout, but for ``q8_0``/``q4_0`` the live ``self.qweight``
    is the kernels' *interleaved* copy -- :meth:`codes` gives llama.cpp's, and
    ``load_state_dict`` is the way to write new codes); parameter: ``bias``
    ``(out_features,)`` if the layer had one (frozen; set ``bias.requires_grad`` to train it).
    Shapes: x ``(..., in_features)`` -> y ``(..., out_features)``, in the dtype the layer was
    built from (``q8_0``/``q4_0`` quantize the activations from float32 whatever it is).
    """

    STORAGE_BUFFERS = ("scales",)                   # float16 / float32 whatever the model's dtype

    def __init__(self, qweight, scales, fmt: str, in_features: int, bias=None,
                 dtype=np.float32):
        super().__init__()
        self.fmt = _check_fmt(fmt)
        self.in_features, self.out_features = int(in_features), int(qweight.shape[0])
        self.dtype = np.dtype(dtype)
        want = {"int8": ((self.out_features, self.in_features), (self.out_features,)),
                "q8_0": ((self.out_features, self.in_features),
                         (self.out_features, self.in_features // BLOCK)),
                "q4_0": ((self.out_features, self.in_features // 2),
                         (self.out_features, self.in_features // BLOCK))}[fmt]
        if fmt != "int8" and self.in_features % BLOCK:
            raise ValueError(f"in_features must be a multiple of {BLOCK} for {fmt}, got "
                             f"{self.in_features}")
        if (qweight.shape, scales.shape) != want:
            raise ValueError(f"qweight and scales must have shapes {want[0]} and {want[1]} for "
                             f"{fmt}, got {qweight.shape} and {scales.shape}")
        # the products read the codes interleaved (kernels/quant.py); state_dict shows
        # llama.cpp's layout
        self.register_buffer("qweight", self._buffer_from_state("qweight", qweight))
        self.register_buffer("scales", np.ascontiguousarray(scales))     # (the kernels read rows)
        self.bias = None if bias is None else Parameter(np.array(bias, self.dtype),
                                                        requires_grad=False)

    @classmethod
    def from_linear(cls, layer: "nn.Linear", fmt: str, name: str = "weight"):
        q, s = quantize_weight(layer.weight.data, fmt, name)
        return cls(q, s, fmt, layer.in_features,
                   None if layer.bias is None else layer.bias.data, layer.weight.dtype)

    def _rows_per_block(self):
        """Codes per block row of the interleaved layout (None: int8 is not blocked)."""
        return {"int8": None, "q8_0": BLOCK, "q4_0": BLOCK // 2}[self.fmt]

    def _buffer_to_state(self, name, value):
        R = self._rows_per_block()
        return K.deinterleave(value, R) if name == "qweight" and R else value

    def _buffer_from_state(self, name, value):
        R = self._rows_per_block()
        return K.interleave(value, R) if name == "qweight" and R else value

    def codes(self) -> np.ndarray:
        """``qweight`` in llama.cpp's layout (:func:`quantize_weight`'s), as ``state_dict`` and
        files hold it; ``self.qweight`` is the products' interleaved copy of it."""
        return self._buffer_to_state("qweight", self.qweight)

    def dequantized(self) -> np.ndarray:
        """The weight the layer computes with, in float (out, in) of the layer's dtype."""
        return dequantize_weight(self.codes(), self.scales, self.fmt, self.dtype)

    def _product(self, x2):
        """x2 (M, K) -> (M, N): the quantized product, split over the threads by columns."""
        M, N = x2.shape[0], self.out_features
        out = np.empty((M, N), np.float32 if self.fmt != "int8" else x2.dtype)
        grain = max(1, -(-SPLIT_MIN_MACS // max(1, M * self.in_features)))
        if self.fmt == "int8":
            scale = self.scales.astype(x2.dtype)
            split_run(lambda lo, hi: K.int8_matmul(x2, self.qweight, scale, out, lo, hi),
                      N, grain)
            return out
        xs = np.ascontiguousarray(x2, dtype=np.float32)
        xd = np.empty((M, self.in_features // BLOCK), np.float32)
        xq = np.empty((M, self.in_features), np.int8)
        K.quantize_q8_0(xs, xd, xq)                         # activations: Q8_0, as llama.cpp
        xd = xd.astype(np.float16).astype(np.float32)       # (its block_q8_0 keeps d in fp16)
        xq = K.interleave(xq, BLOCK)                        # the weights' layout
        wd = self.scales.view(np.uint16)                    # float16 bits: read in the kernel
        kernel = K.q8_0_matmul if self.fmt == "q8_0" else K.q4_0_matmul
        split_run(lambda lo, hi: kernel(xd, xq, wd, self.qweight, out, lo, hi), N, grain)
        return out

    def _forward(self, x):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a float array, got dtype {x.dtype}")
        same_dtype(x, "x", self.dtype, "QuantizedLinear")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape "
                             f"{x.shape}")
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features))           # (M, K)
        y = self._product(x2).astype(self.dtype, copy=False)                 # (M, N)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(*x.shape[:-1], self.out_features), x.shape

    def forward(self, x):
        y, self._cache = self._forward(x)           # cache: x's shape (the backward needs no x)
        return y

    def inference(self, x):
        """The forward without keeping a cache (a KV-cache generation step)."""
        return self._forward(x)[0]

    def backward(self, dy):
        shape = self._saved()                                                # x: (..., K)
        dy2 = dy.reshape(-1, self.out_features)                              # (M, N)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dy2.sum(axis=0)
        dx = dy2 @ self.dequantized()             # from y = x W_hat^T + b   # (M, K)
        return dx.reshape(shape)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fmt={self.fmt}, bias={self.bias is not None}")


def quantized_layers(model) -> dict:
    """``{module name: QuantizedLinear}`` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def quantize(model, fmt: str, skip=(), layers=None, fallback=None) -> dict:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantizedLinear` in
    ``fmt``, except tied ones and those whose name ends with an entry of ``skip`` (e.g.
    ``skip=("lm_head",)``). A layer whose input size ``fmt`` cannot take (not a multiple of 32
    for ``q8_0``/``q4_0``) is an error, or goes to ``fallback`` (e.g. ``"int8"``), as
    llama.cpp's quantizer falls back for such tensors. ``layers`` (``{name: format}``, a
    quantized checkpoint's record) replaces exactly those layers instead. Every weight is
    quantized and checked before the model changes. Returns ``{name: format}`` of the layers
    replaced."""
    from ..finetune.lora import LoRALinear, _parent
    _check_fmt(fmt)
    if fallback is not None:
        _check_fmt(fallback)
    if isinstance(skip, str):
        skip = (skip,)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model has LoRA layers: merge_lora (or reload the base model) "
                         "before quantizing")
    holders = {}                                    # parameter -> how many modules hold it
    for _, mod in model.named_modules():
        for p in mod._parameters.values():
            holders[id(p)] = holders.get(id(p), 0) + 1
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and holders.get(id(m.weight), 0) == 1}     # (a pruned MaskedLinear too: its
    #                                                     zeros quantize to exact zeros)
    if layers is None:
        plan = {n: fmt if fmt == "int8" or m.in_features % BLOCK == 0 or fallback is None
                else fallback
                for n, m in linears.items() if not any(n == s or n.endswith("." + s)
                                                       for s in skip)}
    else:
        if not isinstance(layers, dict) or not all(isinstance(n, str) and f in FORMATS
                                                   for n, f in layers.items()):
            raise TypeError(f"layers must map module names to formats, got {layers!r:.80}")
        missing = [n for n in layers if n not in linears]
        if missing:
            raise ValueError(f"layers names {missing[0]!r}, which is not an untied Linear of "
                             f"{type(model).__name__}")
        plan = dict(layers)
    if not plan:
        raise ValueError(f"{type(model).__name__} has no Linear layer to quantize")
    swaps = [(n, QuantizedLinear.from_linear(linears[n], f, f"{n}.weight"))
             for n, f in plan.items()]
    for name, layer in swaps:
        parent, child = _parent(model, name)
        layer.train(model.training)
        setattr(parent, child, layer)
    return plan
