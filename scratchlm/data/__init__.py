"""Data: tokenizers, corpora, synthetic sources with known answers, batching, representations.

* ``tokenizers`` -- :class:`CharTokenizer`, :class:`ByteTokenizer`, :class:`WordTokenizer`,
  :class:`BPETokenizer` (byte-level, trained from scratch), :class:`GPT2Tokenizer` (GPT-2's
  byte-level BPE from local ``vocab.json`` + ``merges.txt``), :class:`HFTokenizer` (byte-level BPE
  from a Hugging Face ``tokenizer.json``: GPT-2, Llama 3, Qwen2, SmolLM), :func:`load_tokenizer`;
* ``corpus`` -- :func:`builtin_corpus` (no download: CPython's ``pydoc_data`` help text, or
  with ``"stdlib"`` the standard library's docstrings and comments; names in
  :data:`BUILTIN_CORPORA`), :func:`load_corpus`, :func:`split_corpus`, :func:`corpus_lines`;
* ``synthetic`` -- :class:`MarkovSource` (exact entropy rate), :class:`TranslationTask`;
* ``batching`` -- :func:`random_windows`, :func:`sequential_batches`, :func:`pad_batch`;
* ``sources`` -- the training loop's batch sources with resumable state: :class:`RandomWindows`,
  :class:`StreamChunks` (truncated BPTT), :class:`ShuffledEpochs`;
* ``representations`` -- :func:`one_hot`, :func:`bag_of_words`, :class:`TfidfTransformer`,
  :class:`CSRMatrix`;
* ``documents`` -- :func:`load_documents_dataset` (bag-of-words paragraphs of the built-in
  corpus, train/test, fixed vocabulary: the document VAE's data), :func:`document_words`;
* ``sentences`` -- :func:`word_sentences` (text -> sentences of lower-cased words) and
  :class:`Vocab` (counted words, most frequent first): what word vectors train on.
"""

from .batching import pad_batch, random_windows, sequential_batches
from .corpus import BUILTIN_CORPORA, builtin_corpus, load_corpus, read_corpus, split_corpus
from .corpus import lines as corpus_lines
from .documents import STOP_WORDS, DocumentSplit, document_words, load_documents_dataset
from .gpt2_tokenizer import GPT2Tokenizer, bytes_to_unicode
from .hf_tokenizer import HFTokenizer
from .images import GLYPHS, ImageSplit, binarize, digit_images, load_digits_dataset, resize_images
from .sentences import Vocab, word_sentences
from .representations import CSRMatrix, TfidfTransformer, bag_of_words, one_hot
from .synthetic import MarkovSource, TranslationTask
from .sources import PoissonWindows, RandomWindows, ShuffledEpochs, StreamChunks
from .tokenizers import (TOKENIZERS, BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer,
                         WordTokenizer, build_tokenizer, encode_lines, load_tokenizer)

__all__ = [
    "Vocab", "word_sentences",
    "GLYPHS", "ImageSplit", "binarize", "digit_images", "load_digits_dataset", "resize_images",
    "Tokenizer", "CharTokenizer", "ByteTokenizer", "WordTokenizer", "BPETokenizer", "load_tokenizer",
    "TOKENIZERS", "build_tokenizer", "encode_lines",
    "GPT2Tokenizer", "bytes_to_unicode", "HFTokenizer",
    "builtin_corpus", "BUILTIN_CORPORA", "load_corpus", "read_corpus", "split_corpus",
    "corpus_lines",
    "MarkovSource", "TranslationTask",
    "random_windows", "sequential_batches", "pad_batch",
    "RandomWindows", "PoissonWindows", "StreamChunks", "ShuffledEpochs",
    "one_hot", "bag_of_words", "TfidfTransformer", "CSRMatrix",
    "load_documents_dataset", "DocumentSplit", "document_words", "STOP_WORDS",
]
