"""Fine-tuning: LoRA adapters with their backward written out, in PEFT's layout (``lora.py``),
supervised fine-tuning with the prompt masked out of the loss (``sft.py``), and sequence
classification (``classify.py``). Frozen
parameters themselves are ``Parameter.requires_grad`` (:mod:`scratchlm.nn`).
"""

from .classify import (accuracy, classification_batch, classification_examples,
                       fit_text_classifier, read_labelled_csv)
from .lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRALinear, apply_lora, load_adapter,
                   lora_layers, merge_lora, save_adapter, unmerge_lora)
from .sft import INSTRUCTIONS, eos_id_of, exact_match, fit_sft, instruction_examples, sft_batch

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers",
           "save_adapter", "load_adapter", "ADAPTER_WEIGHTS", "ADAPTER_CONFIG",
           "fit_sft", "sft_batch", "instruction_examples", "exact_match", "eos_id_of",
           "INSTRUCTIONS", "fit_text_classifier", "classification_examples", "read_labelled_csv",
           "classification_batch", "accuracy"]
