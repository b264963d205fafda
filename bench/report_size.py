"""How big `evo report --plotly file` is: the page without plotly.js, for a run of the tiny
space's shape (steady-state, rungs of 222k, 666k and 2M tokens, a learning-curve point
every 10 steps) at a few numbers of trials; beside it, the same page with its figures
written by plotly's own `to_html`, each carrying its template (the page's former form).

    python bench/report_size.py [--trials 24 100 400]
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from evo.describe import run_space
from evo.executor import TrialOutcome
from evo.metrics import TrialStatus
from evo.report.page import TEMPLATE, write_report
from evo.storage import Storage
from llm.trial import CurvePoint, TrialEnd, TrialResult

TINY = Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml"
TOKENS_PER_STEP = 16 * 128  # tiny's middle batch size × its sequence length
FIGURE = re.compile(
    r'<div class="figure">.*?<script type="application/json" class="figure-data">(.*?)'
    r"</script></div>",
    flags=re.S,
)


def outcome(tokens: int, value: float) -> TrialOutcome:
    """A trial that trained `tokens` and scored `value` bits per byte, with its curve."""
    steps = tokens // TOKENS_PER_STEP
    curve = [
        CurvePoint(
            step=s,
            tokens=s * TOKENS_PER_STEP,
            seconds=0.1 * s,
            train_loss=value + 3 / s,
            val_loss=None,
            stage="pretrain",
        )
        for s in range(10, steps + 1, 10)
    ]
    metrics = {
        "bits_per_byte": value,
        "val_loss": value * 0.9,
        "perplexity": 7.5,
        "train_tokens_per_s": 9000.0,
        "decode_tokens_per_s": 400.0,
        "params": 600_000,
        "params_non_embedding": 400_000,
        "flops_per_token": 3_000_000,
        "wall_seconds": 30.0,
        "steps": steps,
        "tokens": tokens,
    }
    result = TrialResult(TrialEnd.DONE, metrics=metrics, curve=curve, device="cpu")
    return TrialOutcome(
        result, TrialStatus.DONE, host="box", worker="w1", started=None, finished=None
    )


def make_run(storage: Storage, trials: int) -> None:
    """`trials` trials: two thirds at the lowest rung, then a third of those a rung up each
    time, each continuing its genome's trial below."""
    storage.create_run("size", TINY.read_text(encoding="utf-8"), seed=0)
    space = run_space(storage.require_run("size"))
    budgets = [b["max_tokens"] for b in space.rung_budgets()]
    rng, below = random.Random(0), []
    counts = [trials - trials // 3, trials // 3 - trials // 9, trials // 9]
    for rung, count in enumerate(counts):
        genomes = (
            below[:count]
            if rung
            else [storage.genome_id("size", space.sample(rng)) for _ in range(count)]
        )
        for genome in genomes:
            trial = storage.add_trial("size", genome, rung=rung)
            storage.mark_running(trial, host="box", device="cpu", worker="w1")
            tokens = budgets[rung] - (budgets[rung - 1] if rung else 0)
            storage.finish_trial(trial, outcome(int(tokens), 2.5 - 0.2 * rung - rng.random() / 5))
        below = genomes


def as_plotly_wrote_it(page: str) -> str:
    """The page with each figure as plotly's to_html writes it, its template inside."""

    def former(match: re.Match[str]) -> str:
        fig = go.Figure(pio.from_json(match.group(1)), skip_invalid=True)
        fig.update_layout(template=TEMPLATE)
        return fig.to_html(full_html=False, include_plotlyjs=False)

    return FIGURE.sub(former, page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[24, 100, 400])
    args = parser.parse_args()
    print(f"{'trials':>6} {'page (KB)':>10} {'figures':>8} {'former page (KB)':>17}")
    for trials in args.trials:
        with tempfile.TemporaryDirectory() as folder:
            with Storage(f"sqlite:///{folder}/evo.db") as storage:
                make_run(storage, trials)
                path = write_report(storage, "size", Path(folder) / "r.html", plotly="file")
            page = path.read_text(encoding="utf-8")
            former = as_plotly_wrote_it(page)
            kb = len(page.encode()) / 1000
            print(
                f"{trials:>6} {kb:>10.0f} {len(FIGURE.findall(page)):>8} "
                f"{len(former.encode()) / 1000:>17.0f}"
            )


if __name__ == "__main__":
    main()
