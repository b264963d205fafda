"""What the model's variants cost: training speed and memory of a mixture of experts, of
sliding-window attention and of latent attention, each against the dense default (with the
same active size, for the mixtures).

Every variant is a `Transformer` of one shape (Llama's, from the command line) with one
change. A mixture of n experts, k per token, each d_ff/k wide, passes every token through
as many MLP weights as the dense model (the same active size) while holding n/k times as
many. All variants train on the same batches, timed in alternating rounds in one
process, so machine noise hits them alike. For each it prints:

- training tokens/s (median over rounds) and its ratio to the dense model's;
- parameters, total and active;
- activation memory: the bytes autograd saves for the backward pass in one training
  forward (counted through `saved_tensors_hooks`, so it is what this batch needs on any
  device, not an allocator's high-water mark);
- the KV cache's bytes when generating `--generate` tokens at batch size 1.

    python bench/variants.py
    python bench/variants.py --seq-len 512 --window 64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from llama_shape import add_shape_arguments, llama_shaped_config

from llm.config import ModelConfig
from llm.loss import next_token_loss
from llm.model import KVCache, Transformer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--window", type=int, default=64, help="attn_window of the windowed variant")
    p.add_argument("--experts", type=int, default=8, help="n_experts of the mixtures")
    p.add_argument("--latent", type=int, default=32, help="kv_latent_dim of latent attention")
    p.add_argument("--generate", type=int, default=None, help="KV cache length (default seq-len)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def variants(args: argparse.Namespace) -> dict[str, ModelConfig]:
    dense = llama_shaped_config(args, max_seq_len=args.seq_len)
    moe = dataclasses.replace(dense, mlp="moe", n_experts=args.experts)
    return {
        "dense": dense,
        f"moe {args.experts} experts, top-1": dataclasses.replace(moe, experts_per_token=1),
        f"moe {args.experts} experts, top-2": dataclasses.replace(
            moe, experts_per_token=2, d_ff=dense.d_ff // 2
        ),
        f"window {args.window}": dataclasses.replace(dense, attn_window=args.window),
        f"latent attention, {args.latent}-wide": dataclasses.replace(
            dense, attention="mla", kv_latent_dim=args.latent
        ),
    }


def make_step(model: Transformer, batches: list[torch.Tensor]) -> Callable[[int], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        tokens = batches[i % len(batches)]
        loss = next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]) + model.aux_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def saved_bytes(model: Transformer, tokens: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        next_token_loss(model(tokens[:, :-1]), tokens[:, 1:])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def cache_bytes(config: ModelConfig, length: int) -> int:
    cache = KVCache(config, batch_size=1, max_len=length)
    return sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))


def timed_round(step: Callable[[int], None], tokens_per_step: int, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * tokens_per_step / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1)) for _ in range(4)]
    configs = variants(args)
    models = {name: Transformer(config).train() for name, config in configs.items()}
    steps = {name: make_step(model, batches) for name, model in models.items()}
    for step in steps.values():  # warm-up: allocator, kernels, optimizer state
        step(0)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(timed_round(step, args.batch_size * args.seq_len, args.steps))
    length = args.generate or args.seq_len
    print(
        f"threads={args.threads} batch={args.batch_size} seq={args.seq_len} "
        f"layers={args.layers} d_model={args.d_model} d_ff={args.d_ff} vocab={args.vocab} "
        f"rounds={args.rounds}×{args.steps} steps"
    )
    dense_rate = statistics.median(rates["dense"])
    dense_saved = saved_bytes(models["dense"], batches[0])
    header = "variant | tokens/s | vs dense | params (active) | activations | KV cache"
    print(header)
    for name, model in models.items():
        rate = statistics.median(rates[name])
        count = configs[name].param_count()
        saved = saved_bytes(model, batches[0])
        print(
            f"{name} | {rate:,.0f} | {rate / dense_rate:.2f} | "
            f"{count.total:,} ({count.active:,}) | {saved / 2**20:.1f} MiB "
            f"({saved / dense_saved:.2f}) | {cache_bytes(configs[name], length) / 2**10:.0f} KiB"
        )


if __name__ == "__main__":
    main()
