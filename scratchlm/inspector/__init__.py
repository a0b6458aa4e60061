"""See inside a trained language model: :func:`inspect_prompt` computes every view of the
inspector with the model's own forward and backward (:mod:`.analysis`); :mod:`.server` serves
the page that draws them (``python -m scratchlm inspect --checkpoint FILE``)."""

from .analysis import (SUPPORTED, PromptError, encode_prompt, inspect_prompt, model_info,
                       model_kind, sample_step)

__all__ = ["SUPPORTED", "PromptError", "encode_prompt", "inspect_prompt", "model_info",
           "model_kind", "sample_step"]
