"""Training throughput: our Transformer against transformers' LlamaForCausalLM of the same shape.

Both models get the identical architecture (RoPE, RMSNorm, SwiGLU, tied embeddings, no
biases), the same batches, dtype, thread count and optimizer, and are timed in
alternating rounds in one process, so machine noise hits both alike. Prints the median
training tokens/s of each and, last, `ratio=<ours/theirs>`.

    python bench/train_throughput.py                 # the issue's CPU setting
    python bench/train_throughput.py --device cuda --dtype bf16 --batch-size 32 --seq-len 512
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from llama_shape import add_shape_arguments, llama_shaped_config

from llm.loss import next_token_loss
from llm.model import Transformer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    return p.parse_args()


def build_ours(args: argparse.Namespace) -> torch.nn.Module:
    config = llama_shaped_config(args, max_seq_len=args.seq_len)
    return Transformer(config)


def build_theirs(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.d_ff,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def logits_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def make_step(
    model: torch.nn.Module,
    args: argparse.Namespace,
    batches: list[torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[int], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=args.device == "cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def step(i: int) -> None:
        tokens = batches[i % len(batches)]
        autocast = torch.autocast(args.device, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            logits = logits_of(model, tokens[:, :-1])
        loss = loss_fn(logits, tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def timed_round(step: Callable[[int], None], args: argparse.Namespace) -> float:
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if args.device == "cuda":
        torch.cuda.synchronize()
    tokens = args.steps * args.batch_size * args.seq_len
    return tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [
        torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), device=args.device)
        for _ in range(4)
    ]
    models = {"ours": build_ours(args), "transformers": build_theirs(args)}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    if counts["ours"] != counts["transformers"]:
        raise SystemExit(f"shapes differ: parameter counts {counts}")
    # Each stack trains with its own loss: ours the fused one the trainer uses, theirs the
    # plain cross-entropy that transformers' causal-LM loss reduces to.
    losses = {"ours": next_token_loss, "transformers": plain_cross_entropy}
    steps = {
        name: make_step(m.to(args.device).train(), args, batches, losses[name])
        for name, m in models.items()
    }
    for step in steps.values():  # warm-up: allocator, kernels, optimizer state
        for i in range(2):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(timed_round(step, args))
    print(
        f"device={args.device} dtype={args.dtype} threads={args.threads} "
        f"params={counts['ours']} batch={args.batch_size} seq={args.seq_len}"
    )
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, value in medians.items():
        print(f"{name}: median {value:,.0f} train tokens/s over {args.rounds} rounds")
    print(f"ratio={medians['ours'] / medians['transformers']:.3f}")


if __name__ == "__main__":
    main()
