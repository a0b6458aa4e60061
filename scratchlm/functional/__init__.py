"""Pure forward/backward pairs: the mathematics of every layer, with nothing hidden.

Each op ``foo`` is two adjacent functions::

    out, cache = foo_forward(*inputs, **hyperparameters)
    grads      = foo_backward(dout, cache)

``grads`` holds one gradient per positional input of the forward, in order (a single array when
the forward takes one input), with ``None`` for inputs that are not differentiable (token ids,
targets, an absent bias) -- the convention of ``torch.autograd.Function``.

Everything computed is returned; nothing is mutated. ``cache`` is a ``typing.NamedTuple``
defined beside its pair (``LinearCache``, ``AttentionCache``, ...), each field commented with
its shape -- the saved tensors named, as llm.c names them -- and the backward reads its fields
by name (``cache.x``, ``cache.weights``). Neither the forward nor the backward mutates its
arguments; the ``nn`` modules accumulate the returned parameter gradients. The one exception
is explicit: ``embedding_backward(..., dweight_out=)``, an optional accumulation target the
caller passes on purpose (as torch's ``out=``). :func:`recurrent_backward` returns, after its
gradients, the norm of the gradient reaching each step.

The equation and the paper are in each docstring; shapes are commented on every line that
changes one. Forwards validate their arguments (kernels do no bounds checking).
"""

from .attention import (AttentionCache, GroupedAttentionCache, TiledAttentionCache,
                        attention_backward, attention_forward, attention_weights,
                        grouped_query_attention_backward, grouped_query_attention_forward)
from .conv import (AvgPoolCache, ConvCache, MaxPoolCache, avg_pool1d_backward,
                   avg_pool1d_forward, avg_pool2d_backward, avg_pool2d_forward, conv1d_backward,
                   conv1d_forward, conv2d_backward, conv2d_forward, max_pool1d_backward,
                   max_pool1d_forward, max_pool2d_backward, max_pool2d_forward, max_pool_indices)
from .activation import (GeluCache, ReluCache, SigmoidCache, SiluCache, SwiGLUCache, TanhCache,
                         add_relu_backward, add_relu_forward, gelu_backward, gelu_forward,
                         relu_backward, relu_forward, sigmoid_backward, sigmoid_forward,
                         silu_backward, silu_forward, swiglu_backward, swiglu_forward,
                         tanh_backward, tanh_forward)
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .embedding import EmbeddingCache, embedding_backward, embedding_forward
from .latent import (FreeBitsKLCache, ReparameterizeCache, free_bits_kl_backward,
                     free_bits_kl_forward, reparameterize_backward, reparameterize_forward)
from .linear import LinearCache, linear_backward, linear_forward
from .loss import (BCEWithLogitsCache, CrossEntropyCache, GaussianKLCache, MSECache, NLLCache,
                   bce_with_logits_backward, bce_with_logits_forward, cross_entropy_backward,
                   cross_entropy_forward, gaussian_kl_backward, gaussian_kl_forward,
                   mse_backward, mse_forward, nll_backward, nll_forward)
from .norm import (LayerNormCache, RMSNormCache, layer_norm_backward, layer_norm_forward,
                   rms_norm_backward, rms_norm_forward)
from .rope import RopeCache, check_rope_scaling, rope_backward, rope_cos_sin, rope_forward, rope_inv_freq
from .rnn import RecurrentCache, recurrent_backward, recurrent_forward
from .softmax import (LogSoftmaxCache, SoftmaxCache, log_softmax_backward, log_softmax_forward,
                      softmax_backward, softmax_forward)
from .word_vectors import (GloVeCache, Word2VecCache, glove_backward, glove_forward, glove_weight,
                           word2vec_backward, word2vec_forward)

__all__ = ([name for name in dir() if name.endswith(("_forward", "_backward", "Cache"))]
           + ["max_pool_indices", "attention_weights", "rope_cos_sin", "rope_inv_freq",
              "check_rope_scaling", "glove_weight"])
