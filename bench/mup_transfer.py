"""Does the best learning rate stay put as the model widens? Tensor Programs V's Figure 1
on our stack: learning-rate sweeps at several widths, under the standard parametrization
and under μP (`model.parametrization: mup`, base width the narrowest), side by side.

Each run is a 2-layer model (`--layers`; SwiGLU, d_ff 3·d_model, head size 16: more heads as it
widens, as `evo promote --width` widens a genome) trained by the stack's Trainer for the
same tokens, batch and cosine schedule on builtin:python-code (BPE, 1024 tokens), scored
on the first 16k validation tokens in nats per token. Every (parametrization, width,
rate, seed) is one run; runs are spread over `--workers` processes of one thread each.

Prints the mean loss over seeds for each width and rate, then per parametrization: the
best rate per width, the shift of the best rate across widths in grid steps, and the
widest model's loss at the narrowest model's best rate against its own best (the gap in
%), beside the seed noise (the median over the widest model's rates of the seeds'
standard deviation, in %). Writes the curves as an HTML plot (plotly; a PNG beside it
where kaleido is installed) and every loss as JSON under `--out`.

    python bench/mup_transfer.py            # 4 widths x 7 rates x 2 seeds x 2, about 1 h on 2 cores
    python bench/mup_transfer.py --quick    # 3 rates, 1 seed, 40k tokens: a sanity run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from evo.data import in_memory
from llm.atomic import atomic_path, write_json
from llm.config import DataConfig, ModelConfig, Parametrization, TrainConfig
from llm.data import TokenSplits, prepare
from llm.model import Transformer
from llm.train import Trainer

PARAMETRIZATIONS: tuple[Parametrization, ...] = ("standard", "mup")
LABELS = {"standard": "standard", "mup": "μP"}
HEAD_DIM = 16
VAL_TOKENS = 16_384
DATA = DataConfig(corpus="builtin:python-code", tokenizer="bpe", vocab_size=1024)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--rates", type=int, default=7, help="rates on the grid")
    p.add_argument("--lowest-rate", type=float, default=2**-11)
    p.add_argument("--factor", type=float, default=2.0, help="between neighbouring rates")
    p.add_argument("--tokens", type=int, default=300_000, help="training tokens per run")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--layers", type=int, default=2, help="of every model")
    p.add_argument(
        "--base-width",
        type=int,
        help="μP's base width, where it is the standard model (default: the narrowest)",
    )
    p.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    p.add_argument("--out", type=Path, default=Path("results/mup_transfer"))
    p.add_argument(
        "--quick",
        action="store_true",
        help="a sanity run: 3 rates a factor 4 apart (2^-9, 2^-7, 2^-5), 1 seed, 40k tokens",
    )
    args = p.parse_args()
    args.widths = sorted(args.widths)
    args.base_width = args.base_width or args.widths[0]
    if args.quick:
        args.rates, args.lowest_rate, args.factor = 3, 2**-9, 4.0
        args.seeds, args.tokens = 1, 40_000
    return args


@dataclass(frozen=True)
class Run:
    parametrization: Parametrization
    width: int
    rate: float
    seed: int


def model_config(run: Run, vocab_size: int, base_width: int, layers: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        n_layers=layers,
        d_model=run.width,
        n_heads=run.width // HEAD_DIM,
        d_ff=3 * run.width,
        max_seq_len=64,
        parametrization=run.parametrization,
        mup_base_width=base_width,
    )


def train_config(run: Run, tokens: int) -> TrainConfig:
    return TrainConfig(
        batch_size=16,
        seq_len=64,
        learning_rate=run.rate,
        warmup_steps=20,
        max_tokens=tokens,
        eval_interval=0,
        log_interval=10**9,
        compile=False,
        device="cpu",
        threads=1,
        seed=run.seed,
    )


_DATA: tuple[TokenSplits, int] | None = None  # a worker's splits and vocabulary size


def load_data() -> None:
    """A worker's copy of the data (prepared once by the parent, read from its cache)."""
    global _DATA
    prepared = prepare(DATA, progress=False)
    tokenizer = prepared.tokenizer
    _DATA = in_memory(prepared.splits(), tokenizer, VAL_TOKENS), int(tokenizer.vocab_size)


def train(run: Run, tokens: int, base_width: int, layers: int) -> float:
    """The run's final validation loss; infinite if it diverged."""
    assert _DATA is not None, "load_data runs first in every worker"
    splits, vocab_size = _DATA
    torch.manual_seed(run.seed)
    model = Transformer(model_config(run, vocab_size, base_width, layers))
    outcome = Trainer(model, train_config(run, tokens), splits).fit()
    return outcome.final.loss if outcome.final is not None else math.inf


def sweep(args: argparse.Namespace, rates: list[float]) -> dict[Run, float]:
    runs = [
        Run(parametrization, width, rate, seed)
        for parametrization, width, rate, seed in itertools.product(
            PARAMETRIZATIONS, args.widths, rates, range(args.seeds)
        )
    ]
    # The widest first, so that the longest runs do not start last.
    runs.sort(key=lambda run: -run.width)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=load_data
    ) as pool:
        futures = {
            pool.submit(train, run, args.tokens, args.base_width, args.layers): run for run in runs
        }
        return {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}


@dataclass(frozen=True)
class Transfer:
    """One parametrization's sweep: mean loss [width][rate index], and what it says."""

    losses: dict[int, list[float]]
    best: dict[int, int]  # width -> index of its best rate
    shift: int  # grid steps between the best rates of any two widths
    gap: float  # %, the widest at the narrowest's best rate over its own best
    noise: float  # %, the widest model's seed standard deviation (median over rates)


def transfer(
    losses: dict[Run, float],
    parametrization: Parametrization,
    widths: list[int],
    rates: list[float],
    seeds: int,
) -> Transfer:
    def seeds_of(width: int, rate: float) -> list[float]:
        return [losses[Run(parametrization, width, rate, s)] for s in range(seeds)]

    mean = {w: [statistics.fmean(seeds_of(w, r)) for r in rates] for w in widths}
    best = {w: min(range(len(rates)), key=mean[w].__getitem__) for w in widths}
    narrow, wide = widths[0], widths[-1]
    own = mean[wide][best[wide]]
    gap = 100 * (mean[wide][best[narrow]] / own - 1)
    spreads = [
        100 * statistics.stdev(seeds_of(wide, r)) / statistics.fmean(seeds_of(wide, r))
        for r in rates
        if seeds > 1 and all(math.isfinite(x) for x in seeds_of(wide, r))
    ]
    noise = statistics.median(spreads) if spreads else math.nan
    return Transfer(mean, best, max(best.values()) - min(best.values()), gap, noise)


def report(results: dict[str, Transfer], widths: list[int], rates: list[float]) -> None:
    header = "".join(f"{f'2^{math.log2(r):.0f}':>9}" for r in rates)
    for name, result in results.items():
        print(f"\n{LABELS[name]}: mean validation loss (nats/token) by width and rate")
        print(f"{'width':>7}{header}")
        for w in widths:
            cells = "".join(f"{x:9.4f}" for x in result.losses[w])
            print(f"{w:>7}{cells}")
    print(f"\n{'':34}" + "".join(f"{LABELS[name]:>16}" for name in results))
    edges = {0, len(rates) - 1}
    for w in widths:
        cells = "".join(
            f"{rates[r.best[w]]:15.2e}{'*' if r.best[w] in edges else ' '}"
            for r in results.values()
        )
        print(f"{f'best rate, width {w}':34}{cells}")
    rows = {
        "shift of the best rate (grid steps)": [f"{r.shift:16d}" for r in results.values()],
        f"width {widths[-1]} at width {widths[0]}'s best (%)": [
            f"{r.gap:+16.2f}" for r in results.values()
        ],
        f"width {widths[-1]}'s seed noise (%)": [f"{r.noise:16.2f}" for r in results.values()],
    }
    for label, cells in rows.items():
        print(f"{label:34}" + "".join(cells))
    if any(r.best[w] in edges for r in results.values() for w in widths):
        print("* at an end of the grid: the best rate may lie beyond it")


def plot(results: dict[str, Transfer], widths: list[int], rates: list[float], out: Path) -> str:
    """The curves side by side as HTML, and as PNG where kaleido is installed; says which."""
    fig = make_subplots(
        rows=1, cols=len(results), shared_yaxes=True, subplot_titles=[LABELS[n] for n in results]
    )
    log_rates = [math.log2(r) for r in rates]
    for col, result in enumerate(results.values(), start=1):
        for i, w in enumerate(widths):
            fig.add_trace(
                go.Scatter(
                    x=log_rates,
                    y=result.losses[w],
                    name=f"width {w}",
                    legendgroup=str(w),
                    showlegend=col == 1,
                    line={"color": f"hsl({220 - 60 * i}, 70%, {30 + 12 * i}%)"},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="log2 learning rate")
    fig.update_yaxes(title_text="validation loss (nats/token)", row=1, col=1)
    fig.update_layout(
        title="Learning-rate sweeps by width: standard parametrization and μP",
        template="plotly_white",
    )
    with atomic_path(out / "mup_transfer.html") as tmp:
        fig.write_html(tmp, include_plotlyjs=True)
    if importlib.util.find_spec("kaleido") is None:
        return f"wrote {out / 'mup_transfer.html'} (no PNG: kaleido is not installed)"
    with atomic_path(out / "mup_transfer.png") as tmp:
        fig.write_image(tmp, format="png", width=1000, height=450)
    return f"wrote {out / 'mup_transfer.html'} and {out / 'mup_transfer.png'}"


def main() -> None:
    args = parse_args()
    rates = [args.lowest_rate * args.factor**i for i in range(args.rates)]
    started = time.perf_counter()
    prepare(DATA, progress=True)  # once, before the workers read it from the cache
    losses = sweep(args, rates)
    results = {p: transfer(losses, p, args.widths, rates, args.seeds) for p in PARAMETRIZATIONS}
    minutes = (time.perf_counter() - started) / 60
    print(
        f"{args.layers} layers, head size {HEAD_DIM}, widths {args.widths}, "
        f"{args.tokens:,} tokens per run, "
        f"{args.seeds} seed(s), μP base width {args.base_width}; "
        f"{len(losses)} runs in {minutes:.1f} min on {args.workers} worker(s)"
    )
    report(results, args.widths, rates)
    write_json(
        args.out / "losses.json",
        [
            {**vars(run), "loss": loss if math.isfinite(loss) else None}
            for run, loss in sorted(losses.items(), key=str)
        ],
    )
    print(plot(results, args.widths, rates, args.out))


if __name__ == "__main__":
    main()
