"""Layers and losses with torch.nn's names, arguments, parameter names and shapes.

Each module wraps a forward/backward pair from :mod:`scratchlm.functional`: ``forward`` keeps the
cache, ``backward`` returns the input gradient and accumulates into every ``param.grad``.
"""

from .activation import GELU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .attention import MultiheadAttention, SinusoidalPositionalEncoding, sinusoidal_table
from .conv import AvgPool1d, AvgPool2d, Conv1d, Conv2d, MaxPool1d, MaxPool2d
from .dropout import Dropout, Flatten
from .embedding import Embedding
from .linear import Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, GaussianKLLoss, MSELoss, NLLLoss
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .norm import LayerNorm, RMSNorm
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict",
    "MultiheadAttention", "SinusoidalPositionalEncoding", "sinusoidal_table",
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
    "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "Flatten",
    "ReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "Softmax", "LogSoftmax",
    "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "MSELoss", "GaussianKLLoss",
]
