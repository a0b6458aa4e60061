"""Models, one readable file each, built from :mod:`scratchlm.nn` (or, for the count-based
models, from NumPy directly).

* :class:`MarkovChain` -- a first-order chain over states (``markov.py``);
* :class:`NGramLM` -- n-gram language model with Kneser-Ney, Witten-Bell, add-k and MLE
  smoothing, perplexity, sampling and ARPA I/O (``ngram.py``);
* :class:`GPT`, :class:`GPTConfig` -- the GPT-2 architecture with nanoGPT's names (``gpt.py``);
* :class:`Llama`, :class:`LlamaConfig` -- the Llama-family decoder (RMSNorm, RoPE, SwiGLU,
  grouped-query attention) with Hugging Face's names and checkpoints (``llama.py``,
  ``hf_llama.py``);
* :class:`RNNLM`, :class:`RNNLMConfig` -- embedding -> RNN/LSTM/GRU -> linear (``rnnlm.py``);
* :class:`CNN` -- conv -> ReLU -> pool stages -> linear image classifier (``cnn.py``);
* :class:`ConvLM`, :class:`ConvLMConfig` -- causal dilated convolutional LM (``convlm.py``);
* :class:`VAE` (images) and :class:`DocumentVAE` (bag-of-words, NVDM) -- variational
  autoencoders with the reparameterization trick, ``elbo``, ``iwae_bound``
  (``vae.py``, ``nvdm.py``);
* :class:`Seq2Seq` -- RNN encoder-decoder with optional dot/additive attention
  (``seq2seq_rnn.py``);
* :class:`Seq2SeqTransformer` -- encoder-decoder Transformer (pre-LN, ``torch.nn.Transformer``'s
  names), greedy and beam decoding via :mod:`scratchlm.decoding` (``seq2seq_transformer.py``);
* :class:`KeyedVectors` -- word vectors by key, gensim's names: cosine neighbours, 3CosAdd and
  3CosMul analogies, evaluation on word-pair and analogy files, word2vec text and binary files
  (``keyed_vectors.py``);
* :class:`Word2Vec` (skip-gram and CBOW, negative sampling, hierarchical softmax) and
  :class:`GloVe` -- word vectors, each with its own trainer (``word2vec.py``, ``glove.py``).

Training any of them is the one loop's job: :mod:`scratchlm.training` (``fit_lm``,
``fit_translation``, ``fit_classifier``, ``fit_vae``).
"""

from .cnn import CNN, CNNConfig
from .cnn import accuracy as classifier_accuracy
from .convlm import ConvLM, ConvLMConfig
from .glove import Cooccurrence, GloVe, GloVeConfig
from .gpt import GPT, GPTConfig, GPTForSequenceClassification
from .keyed_vectors import KeyedVectors
from .llama import Llama, LlamaConfig, LlamaForSequenceClassification
from .markov import MarkovChain
from .ngram import NGramLM
from .nvdm import DocumentVAE, DocumentVAEConfig
from .rnnlm import RNNLM, RNNLMConfig
from .seq2seq_rnn import GlobalAttention, Seq2Seq
from .seq2seq_transformer import Seq2SeqTransformer
from .translation import CharVocab, exact_match, translate
from .vae import VAE, VAEConfig, elbo, iwae_bound
from .word2vec import Word2Vec, Word2VecConfig

__all__ = ["MarkovChain", "NGramLM", "GPT", "GPTConfig", "GPTForSequenceClassification", "Llama",
           "LlamaConfig", "LlamaForSequenceClassification", "RNNLM", "RNNLMConfig", "ConvLM",
           "ConvLMConfig", "CNN", "CNNConfig", "classifier_accuracy", "VAE", "VAEConfig",
           "DocumentVAE", "DocumentVAEConfig", "elbo", "iwae_bound", "Seq2SeqTransformer",
           "Seq2Seq", "GlobalAttention", "CharVocab", "exact_match", "translate", "KeyedVectors",
           "Word2Vec", "Word2VecConfig", "GloVe", "GloVeConfig", "Cooccurrence"]
