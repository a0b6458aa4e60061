"""scratchlm: language models from scratch in NumPy, every forward and backward pass in plain sight.

Layers flow one way: ``kernels`` (Numba loops with NumPy twins) -> ``functional`` (forward/backward
pairs) -> ``nn`` (modules with parameters) -> ``models`` -> training and the CLI. PyTorch is never
imported here; it is only the reference the tests and benchmarks compare against.
"""

__version__ = "0.1.0"

from . import data, decoding, functional, models, nn, optim  # noqa: E402,F401
from .kernels import get_backend, set_backend, use_backend  # noqa: E402,F401
