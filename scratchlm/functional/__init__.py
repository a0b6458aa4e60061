"""Pure forward/backward pairs: the mathematics of every layer, with nothing hidden.

Each op ``foo`` is two adjacent functions::

    out, cache = foo_forward(*inputs, **hyperparameters)
    grads      = foo_backward(dout, cache)

``grads`` holds one gradient per positional input of the forward, in order (a single array when
the forward takes one input), with ``None`` for inputs that are not differentiable (token ids,
targets, an absent bias) -- the convention of ``torch.autograd.Function``. The backward never
mutates anything; the ``nn`` modules accumulate the returned parameter gradients.

The equation and the paper are in each docstring; shapes are commented on every line that
changes one. Forwards validate their arguments (kernels do no bounds checking).
"""

from .attention import attention_backward, attention_forward
from .conv import (avg_pool1d_backward, avg_pool1d_forward, avg_pool2d_backward,
                   avg_pool2d_forward, conv1d_backward, conv1d_forward, conv2d_backward,
                   conv2d_forward, max_pool1d_backward, max_pool1d_forward,
                   max_pool2d_backward, max_pool2d_forward, max_pool_indices)
from .activation import (gelu_backward, gelu_forward, relu_backward, relu_forward,
                         sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward)
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .linear import linear_backward, linear_forward
from .loss import (bce_with_logits_backward, bce_with_logits_forward, cross_entropy_backward,
                   cross_entropy_forward, gaussian_kl_backward, gaussian_kl_forward,
                   mse_backward, mse_forward, nll_backward, nll_forward)
from .norm import layer_norm_backward, layer_norm_forward
from .rnn import recurrent_backward, recurrent_forward
from .softmax import (log_softmax_backward, log_softmax_forward, softmax_backward,
                      softmax_forward)

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + ["max_pool_indices"]
