"""Tokenizers, corpora, text representations and batching.

Populated by the tokenizer/corpus issue; empty in the foundations release.
"""

__all__: list = []
