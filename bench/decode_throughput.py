"""Decode throughput: our cached generation against transformers' `generate`, same weights.

A random model of the issue's shape (RoPE, RMSNorm, SwiGLU, tied embeddings) is saved as
a model directory, exported with `llm.export.export_hf`, and loaded back both ways, so
the two stacks hold identical weights. Both decode greedily from the same prompts,
exactly `--new-tokens` tokens each (no eos), with the same thread count, in alternating
rounds in one process, so machine noise hits both alike: at batch size 1, and at each
larger `--batch-sizes` (a batch of different prompts of the same length).

Prints, for each stack and batch size, the median new tokens/s of a whole `generate` call
(prefill included; all rows counted) and the median time to first token (a call for one
new token), then, last, `ratio=<ours/theirs>` of the tokens/s at batch size 1.

    python bench/decode_throughput.py                   # the issue's CPU setting
    python bench/decode_throughput.py --rounds 9 --threads 1 --new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llama_shape import add_shape_arguments, llama_shaped_config

from llm.checkpoint import load_model_dir, save_model_dir
from llm.export import export_hf
from llm.generate import SamplingParams, generate_batch
from llm.model import Transformer

# Generates `n` new tokens from each prompt of a batch and returns them.
Generator = Callable[[int], list[list[int]]]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_arguments(p)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    return p.parse_args()


def build_models(args: argparse.Namespace, folder: Path) -> tuple[Transformer, torch.nn.Module]:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    config = llama_shaped_config(args, max_seq_len=args.prompt_len + args.new_tokens)
    torch.manual_seed(0)
    save_model_dir(folder / "model", Transformer(config))
    ours, _, _ = load_model_dir(folder / "model")
    hf_dir = export_hf(folder / "model", folder / "hf")
    theirs = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa").eval()
    return ours, theirs


def our_generator(model: Transformer, prompts: list[list[int]]) -> Generator:
    def run(n: int) -> list[list[int]]:
        return generate_batch(model, prompts, SamplingParams(max_new_tokens=n, temperature=0.0))

    return run


def their_generator(model: torch.nn.Module, prompts: list[list[int]]) -> Generator:
    input_ids = torch.tensor(prompts)
    attention_mask = torch.ones_like(input_ids)

    def run(n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                eos_token_id=None,  # the export has none; say so, so nothing can stop early
                pad_token_id=0,
            )
        return out[:, input_ids.shape[1] :].tolist()

    return run


def exactly(run: Generator, n: int) -> list[list[int]]:
    produced = run(n)
    if any(len(row) != n for row in produced):
        raise SystemExit(f"asked for {n} new tokens, got {[len(row) for row in produced]}")
    return produced


def seconds(run: Generator, n: int) -> float:
    start = time.perf_counter()
    exactly(run, n)
    return time.perf_counter() - start


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    # The folder outlives the run: transformers may map the weights file rather than copy it.
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs = build_models(args, Path(folder))
        params = sum(p.numel() for p in ours.parameters())
        print(
            f"threads={args.threads} params={params} prompt={args.prompt_len} "
            f"new_tokens={args.new_tokens} greedy"
        )
        ratios = {batch: compare(ours, theirs, batch, args) for batch in args.batch_sizes}
    print(f"ratio={ratios[min(ratios)]:.3f}")


def compare(
    ours: Transformer, theirs: torch.nn.Module, batch: int, args: argparse.Namespace
) -> float:
    """Time both stacks on one batch size, print their figures, return ours/theirs."""
    prompts = torch.randint(0, args.vocab, (batch, args.prompt_len)).tolist()
    generators = {
        "ours": our_generator(ours, prompts),
        "transformers": their_generator(theirs, prompts),
    }
    outputs = {name: exactly(run, args.new_tokens) for name, run in generators.items()}
    rates, first_token = time_rounds(generators, batch, args)  # the run above was the warm-up
    same = min(map(agreeing_prefix, outputs["ours"], outputs["transformers"]))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        ttft_ms = 1000 * statistics.median(first_token[name])
        print(
            f"batch={batch} {name}: median {rate:,.0f} new tokens/s, time to first token "
            f"{ttft_ms:.1f} ms over {args.rounds} rounds"
        )
    ratio = medians["ours"] / medians["transformers"]
    print(f"batch={batch}: ours/transformers {ratio:.3f}; identical tokens for the first {same}")
    return ratio


def time_rounds(
    generators: dict[str, Generator], batch: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per stack, the new tokens/s (all rows) of each round and the seconds to its first token."""
    rates: dict[str, list[float]] = {name: [] for name in generators}
    first_token: dict[str, list[float]] = {name: [] for name in generators}
    for _ in range(args.rounds):
        for name, run in generators.items():
            first_token[name].append(seconds(run, 1))
            rates[name].append(batch * args.new_tokens / seconds(run, args.new_tokens))
    return rates, first_token


if __name__ == "__main__":
    main()
