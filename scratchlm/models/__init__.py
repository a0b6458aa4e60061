"""Models, one readable file each, built from :mod:`scratchlm.nn`.

Populated by the model issues (n-gram, RNN, CNN, GPT, VAE); empty in the foundations release.
"""

__all__: list = []
