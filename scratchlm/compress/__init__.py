"""Making models cheaper to store and run: post-training weight quantization (``quantize.py``:
``int8``, llama.cpp's ``q8_0`` and ``q4_0``), what it costs (``measure.py``), and llama.cpp's
GGUF files (``gguf.py``: :func:`~scratchlm.compress.gguf.export_gguf`,
:func:`~scratchlm.compress.gguf.load_gguf`), and pruning (``prune.py``: magnitude, Wanda, 2:4,
with masks that keep a fine-tuned model pruned); of mixed precision so far, the 16-bit rounding
and the loss scaler (``precision.py``)."""

from .precision import GradScaler, round_bf16, round_fp16
from .prune import MaskedLinear, input_norms, prune, pruned_layers, sparsity_of
from .quantize import (BLOCK, FORMATS, QuantizedLinear, bits_per_weight, dequantize_weight,
                       quantize, quantize_weight, quantized_layers)

__all__ = ["FORMATS", "BLOCK", "QuantizedLinear", "quantize", "quantize_weight",
           "dequantize_weight", "quantized_layers", "bits_per_weight", "MaskedLinear", "prune",
           "pruned_layers", "sparsity_of", "input_norms", "GradScaler", "round_fp16",
           "round_bf16"]
