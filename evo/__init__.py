"""Evolutionary search over transformer architectures and hyperparameters, on the llm stack."""
