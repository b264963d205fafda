"""The in-house LM stack: tokenizers, data, model, LoRA, trainer, evaluation, generation."""

__version__ = "0.1.0"
