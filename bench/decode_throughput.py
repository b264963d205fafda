"""Decode throughput: our cached generation against transformers' `generate`, same weights.

A random model of the issue's shape (RoPE, RMSNorm, SwiGLU, tied embeddings) is saved as
a model directory, exported with `llm.export.export_hf`, and loaded back both ways, so
the two stacks hold identical weights. Both decode greedily at batch size 1 from the
same prompt, exactly `--new-tokens` tokens each (no eos), with the same thread count, in
alternating rounds in one process, so machine noise hits both alike.

Prints, for each stack, the median new tokens/s of a whole `generate` call (prefill
included) and the median time to first token (a call for one new token), then, last,
`ratio=<ours/theirs>` of the tokens/s.

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

from llm.checkpoint import load_model_dir, save_model_dir
from llm.config import ModelConfig
from llm.export import export_hf
from llm.generate import SamplingParams, generate
from llm.model import Transformer

# Generates `n` new tokens from the prompt and returns them.
Generator = Callable[[int], list[int]]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def build_models(args: argparse.Namespace, folder: Path) -> tuple[Transformer, torch.nn.Module]:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    config = ModelConfig(
        vocab_size=args.vocab,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_ff=args.d_ff,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=True,
        max_seq_len=args.prompt_len + args.new_tokens,
    )
    torch.manual_seed(0)
    save_model_dir(folder / "model", Transformer(config))
    ours, _, _ = load_model_dir(folder / "model")
    hf_dir = export_hf(folder / "model", folder / "hf")
    theirs = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa").eval()
    return ours, theirs


def our_generator(model: Transformer, prompt: list[int]) -> Generator:
    def run(n: int) -> list[int]:
        return generate(model, prompt, SamplingParams(max_new_tokens=n, temperature=0.0))

    return run


def their_generator(model: torch.nn.Module, prompt: list[int]) -> Generator:
    input_ids = torch.tensor([prompt])
    attention_mask = torch.ones_like(input_ids)

    def run(n: int) -> list[int]:
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
        return out[0, len(prompt) :].tolist()

    return run


def exactly(run: Generator, n: int) -> list[int]:
    produced = run(n)
    if len(produced) != n:
        raise SystemExit(f"asked for {n} new tokens, got {len(produced)}")
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
        prompt = torch.randint(0, args.vocab, (args.prompt_len,)).tolist()
        generators = {
            "ours": our_generator(ours, prompt),
            "transformers": their_generator(theirs, prompt),
        }
        outputs = {name: exactly(run, args.new_tokens) for name, run in generators.items()}
        rates, first_token = time_rounds(generators, args)  # the run above was the warm-up
    same = agreeing_prefix(outputs["ours"], outputs["transformers"])
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"threads={args.threads} params={params} batch=1 prompt={args.prompt_len} "
        f"new_tokens={args.new_tokens} greedy; identical tokens for the first {same}"
    )
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        ttft_ms = 1000 * statistics.median(first_token[name])
        print(
            f"{name}: median {rate:,.0f} new tokens/s, time to first token {ttft_ms:.1f} ms "
            f"over {args.rounds} rounds"
        )
    print(f"ratio={medians['ours'] / medians['transformers']:.3f}")


def time_rounds(
    generators: dict[str, Generator], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per stack, the tokens/s of each round and the seconds to its first token."""
    rates: dict[str, list[float]] = {name: [] for name in generators}
    first_token: dict[str, list[float]] = {name: [] for name in generators}
    for _ in range(args.rounds):
        for name, run in generators.items():
            first_token[name].append(seconds(run, 1))
            rates[name].append(args.new_tokens / seconds(run, args.new_tokens))
    return rates, first_token


if __name__ == "__main__":
    main()
