"""The model shape both throughput benchmarks compare: Llama's architecture (RoPE, RMSNorm,
SwiGLU, tied embeddings, no biases), sized from the command line."""

from __future__ import annotations

import argparse

from llm.config import ModelConfig


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=2048)


def llama_shaped_config(args: argparse.Namespace, max_seq_len: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_ff=args.d_ff,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=True,
        bias=False,
        max_seq_len=max_seq_len,
    )
