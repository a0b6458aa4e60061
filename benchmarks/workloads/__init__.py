"""The workload registry. ``WORKLOADS`` lists the classes in run order (``sgemm`` first: its
speed is the peak the others are compared with). Add a workload by writing a module here and
appending its class below; see ``benchmarks/__init__.py``."""

from __future__ import annotations

from .attention import Attention512, Attention2048, Attention8192
from .base import DEFAULT_IMPLS, TORCH, Unavailable, Workload
from .conv import CNNTrainStep, Conv2dStep, ConvLMTrainStep
from .cross_entropy import CrossEntropy256, CrossEntropy50257
from .distributed import GPTDataParallel
from .finetune import LlamaLoRAStep
from .gpt import GPTGenerate, GPTGenerate1024, GPTTrainStep
from .llama import LlamaGenerate, LlamaTrainStep
from .mlp import MLPBlock
from .ngram import NGramFit, NGramFit5, NGramSample, NGramScore
from .quantize import QuantizedGenerate
from .recompute import GPTRecompute1024
from .rnn import GRUTrainStep, LSTMTrainStep, RNNTrainStep
from .sgemm import Sgemm
from .vae import VAETrainStep
from .word_vectors import Word2VecCBOW, Word2VecSkipGram

WORKLOADS: list[type[Workload]] = [
    Sgemm,
    MLPBlock,
    CrossEntropy256,
    CrossEntropy50257,
    NGramFit,
    NGramFit5,
    NGramScore,
    NGramSample,
    GPTTrainStep,
    GPTGenerate,
    GPTGenerate1024,
    LSTMTrainStep,
    GRUTrainStep,
    RNNTrainStep,
    Conv2dStep,
    CNNTrainStep,
    ConvLMTrainStep,
    VAETrainStep,
    LlamaTrainStep,
    LlamaGenerate,
    LlamaLoRAStep,
    QuantizedGenerate,
    GPTDataParallel,
    GPTRecompute1024,
    Attention512,
    Attention2048,
    Attention8192,
    Word2VecSkipGram,
    Word2VecCBOW,
]

PEAK_WORKLOAD = "sgemm"


def names() -> list[str]:
    return [w.name for w in WORKLOADS]


def get_workload(name: str, quick: bool = False) -> Workload:
    """Instantiate the workload called ``name``."""
    for cls in WORKLOADS:
        if cls.name == name:
            return cls(quick=quick)
    raise KeyError(f"unknown workload {name!r}; known: {', '.join(names())}")


__all__ = ["WORKLOADS", "PEAK_WORKLOAD", "DEFAULT_IMPLS", "TORCH", "Unavailable", "Workload",
           "get_workload", "names"]
