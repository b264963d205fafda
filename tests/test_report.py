"""The run report and the trials export, on a small hand-made results database."""

from __future__ import annotations

import base64
import html
import json
import random
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import outcome, steady_space_dict, write_corpus
from plotly.offline import get_plotlyjs

from evo.cli import main as evo
from evo.data import prepare_data, unigram_bits_per_byte
from evo.describe import run_space
from evo.export import export_trials
from evo.metrics import EVAL_TOKENS
from evo.report.labels import NOT_MEASURED
from evo.report.markup import format_value
from evo.report.page import write_report
from evo.report.run import NO_SUCCESS
from evo.space import load_space, space_from_dict
from evo.storage import Storage
from evo.summary import STALLED_RULE
from llm.errors import UserError

# The shipped tiny space as a generational search, with a speed objective, whose best
# trial these tests can tell apart from the best in bits per byte.
_TINY = yaml.safe_load((Path(__file__).parents[1] / "search_spaces" / "tiny.yaml").read_text())
_TINY["search"] = {
    "mode": "generational",
    "population": 5,
    "generations": 2,
    "objectives": ["bits_per_byte", "train_tokens_per_s"],
}
_TINY["trial"]["max_steps"] = 150
SPACE_YAML = yaml.safe_dump(_TINY, sort_keys=False)
RUN = "demo"
LIVE = "live"
TINY = Path(__file__).parents[1] / "search_spaces" / "tiny.yaml"
HEADINGS = (
    "Summary",
    "Objectives per generation",
    "Best against compute",
    "Pareto front",
    "Genes",
    "Learning curves",
    "Trials",
    "Workers",
    "Failures",
    "Promotions",
)
# What evo promote stores: the tokens and steps trained, and the tokens scored.
PROMOTED = {"bits_per_byte": 1.9, "steps": 921, "tokens": 3_771_648, EVAL_TOKENS: 50_678}
ERROR = "RuntimeError: shape <b>&mismatch</b> in layer 2\nTraceback (most recent call last)"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    with Storage(f"sqlite:///{tmp_path / 'evo.db'}") as storage:
        yield storage


def curve(steps: int, loss: float, adapt: bool = True) -> list[dict[str, object]]:
    """A pretraining curve, then with `adapt` an adapt one; the last point of each stage
    has a validation loss."""
    points = []
    stages = (("pretrain", steps), ("adapt", steps // 2)) if adapt else (("pretrain", steps),)
    for stage, n in stages:
        for step in range(10, n + 1, 10):
            points.append(
                {
                    "stage": stage,
                    "step": step,
                    "tokens": step * 1024,
                    "seconds": step * 0.1,
                    "train_loss": loss + 3.0 / step,
                    "val_loss": loss + 0.1 if step == n else None,
                }
            )
    return points


def result(bits_per_byte: float, tokens_per_s: float, adapt: bool = True) -> dict[str, object]:
    """A CPU trial's result (no peak memory measured); with `adapt`, of two stages."""
    loss = bits_per_byte * 0.9
    return {
        "status": "ok",
        "val_loss": loss,
        "perplexity": float(np.exp(loss)),
        "bits_per_byte": bits_per_byte,
        "train_tokens_per_s": tokens_per_s,
        "decode_tokens_per_s": tokens_per_s / 20,
        "params": 400_000,
        "params_non_embedding": 250_000,
        "flops_per_token": 2_400_000,
        "wall_seconds": 30.0,
        "steps": 100,
        "tokens": 102_400,
        "device": "cpu",
        "curve": curve(100, loss, adapt),
        "pretrain": {"val_loss": loss + 0.3, "bits_per_byte": bits_per_byte + 0.2}
        if adapt
        else None,
    }


@pytest.fixture
def run(store: Storage) -> dict[str, object]:
    """A two-generation run: eight successes, a failure and a timeout, one promotion.

    Returns what the tests compare against: the successes' metrics by trial id.
    """
    store.create_run(RUN, SPACE_YAML, seed=3)
    space = space_from_dict(yaml.safe_load(SPACE_YAML))
    rng = random.Random(5)
    metrics: dict[int, tuple[float, float]] = {}
    for generation in range(2):
        population = []
        for i in range(5):
            genes = space.sample(rng)
            if generation == 1 and i == 0:
                del genes["batch_size"]  # a genome from before the gene existed
            genome = store.genome_id(RUN, genes)
            population.append(genome)
            trial = store.add_trial(RUN, genome, generation=generation)
            store.mark_running(trial, host="box", device="cpu")
            if generation == 0 and i == 4:
                store.finish_trial(trial, outcome("failed", {"status": "failed", "error": ERROR}))
            elif generation == 1 and i == 4:
                store.finish_trial(trial, outcome("timeout", {"error": "timed out after 180 s"}))
            else:
                value = (2.5 - 0.2 * generation - 0.03 * i, 901.7 + 150 * i - 40 * generation)
                store.finish_trial(trial, outcome("done", result(*value)))
                metrics[trial] = value
        store.save_generation(RUN, generation, population, rng.getstate(), {"evaluated": 5})
    store.record_promotion(RUN, population[1], "runs/promoted-1", "done", PROMOTED)
    return {"metrics": metrics, "promoted": population[1]}


def add_done(store: Storage, genome: int, rung: int, value: float, **where: Any) -> int:
    """A trial of `genome` at `rung` that ran on worker w1 and scored `value`."""
    space = run_space(store.require_run(LIVE))
    budget = space.rung_budgets()[rung]
    trial = store.add_trial(LIVE, genome, rung=rung, budget=budget, seed=100 + genome, **where)
    store.mark_running(trial, host="box", device="cpu", worker="w1")
    tokens = budget["max_tokens"] - (space.rung_budgets()[rung - 1]["max_tokens"] if rung else 0)
    measured = {**result(value, 900.0 + 10 * genome, adapt=False), "tokens": tokens}
    store.finish_trial(trial, outcome("done", measured))
    return trial


def build_live_run(store: Storage) -> dict[str, int]:
    """The tiny space's steady-state search (rungs of 222k, 666k and 2M tokens) caught while
    it runs: at the lowest rung 12 trials done, one failed and one queued; at the middle
    rung three done, each continuing one below, and one running; one done at the top.
    Returns trial ids by what they are."""
    store.create_run(LIVE, TINY.read_text(encoding="utf-8"), seed=0)
    store.start_session(LIVE, workers=2)
    space = run_space(store.require_run(LIVE))
    rng, genomes = random.Random(4), []
    while len(genomes) < 15:
        genome = store.genome_id(LIVE, space.sample(rng))
        genomes += [] if genome in genomes else [genome]
    lowest = [add_done(store, g, 0, 2.0 + 0.037 * i) for i, g in enumerate(genomes[:12])]
    failed = store.add_trial(LIVE, genomes[12], rung=0, seed=1)
    store.mark_running(failed, host="box", device="cpu", worker="w2")
    store.finish_trial(failed, outcome("failed", {"error": "RuntimeError: out of memory"}))
    queued = store.add_trial(LIVE, genomes[13], rung=0, seed=2)
    middle = [
        add_done(store, genomes[i], 1, 1.8 + 0.02 * i, continued_from=lowest[i]) for i in range(3)
    ]
    running = store.add_trial(LIVE, genomes[3], rung=1, continued_from=lowest[3], seed=3)
    store.mark_running(running, host="box", device="cpu", worker="w2")
    top = add_done(store, genomes[0], 2, 1.6, continued_from=middle[0])
    return {"lowest": lowest[0], "failed": failed, "queued": queued, "running": running,
            "middle": middle[0], "top": top, "fresh": genomes[14]}  # fmt: skip


@pytest.fixture
def live(store: Storage) -> dict[str, int]:
    return build_live_run(store)


def section(page: str, heading: str) -> str:
    """The markup of a page's section, without the headings' word-break hints (<wbr>)."""
    start = page.index(f"<h2>{heading}</h2>")
    return page[start : page.index("</section>", start)].replace("<wbr>", "")


def figures(part: str) -> list[dict[str, Any]]:
    """The plotly figures in part of a page, as {"data": [...], "layout": {...}, ...}, read
    from the JSON the page draws them from."""
    found = re.findall(r'<script type="application/json" class="figure-data">(.*?)</script>', part)
    return [json.loads(data) for data in found]


def values(array: Any) -> list[Any]:
    """A plotted array as a list: plotly writes numpy arrays as base64 typed arrays."""
    if isinstance(array, dict):
        raw = base64.b64decode(array["bdata"])
        return np.frombuffer(raw, dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def trace(figure: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [t for t in figure["data"] if t.get("name") == name]
    return found


def tables(part: str) -> list[list[dict[str, str]]]:
    """The HTML tables with a header row in part of a page, each as its rows by header
    (cells as text: links and other markup left out)."""
    found = []
    for table in re.findall(r"<table[^>]*>(.*?)</table>", part, flags=re.S):
        rows = [
            [
                html.unescape(re.sub(r"<[^>]+>", "", cell))
                for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)
            ]
            for row in re.findall(r"<tr>(.*?)</tr>", table)
        ]
        if table.startswith("<thead>"):
            found.append([dict(zip(rows[0], row, strict=True)) for row in rows[1:]])
    return found


def test_report_is_one_self_contained_page(
    store: Storage, run: dict[str, object], tmp_path: Path
) -> None:
    out = write_report(store, RUN, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left
    page = out.read_text(encoding="utf-8")

    assert get_plotlyjs() in page  # plotly.js inline, so it opens offline
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert "https://cdn" not in "".join(re.findall(r"<script[^>]*>", page))
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    assert len(figures(page)) == 6
    # The plotly template is in the page once, not once per figure (about 7 KB each).
    assert page.count('id="plotly-template"') == 1
    assert not any("template" in drawn["layout"] for drawn in figures(page))
    assert "Parcoords".lower() in page.lower()

    genes = section(page, "Genes")
    assert '"ticktext":["learned","sinusoidal","rope","alibi","none"]' in genes
    assert '"ticktext":["8","16","32","(missing)"]' in genes  # one genome lacks batch_size
    curves = section(page, "Learning curves")
    assert curves.count(', pretrain validation"') == 5  # the top five genomes
    assert curves.count(', adapt"') == 5 and '"dash":"dash"' in curves
    assert "solid while pretraining, dashed while adapting" in curves
    assert "dots are validation losses" in curves
    (drawn,) = figures(curves)
    assert drawn["layout"]["yaxis"]["title"]["text"] == "loss (nats per token)"

    summary = section(page, "Summary")
    metrics: dict[int, tuple[float, float]] = run["metrics"]  # type: ignore[assignment]
    best_trial = min(metrics, key=lambda t: metrics[t][0])
    fastest = max(metrics, key=lambda t: metrics[t][1])
    assert f"{metrics[best_trial][0]:.4g} (trial {best_trial}:" in summary
    assert metrics[fastest][1] > 1000
    assert f"{metrics[fastest][1]:,.0f} (trial {fastest}:" in summary
    assert "8 done, 2 failed, 0 queued or running, 0 lost" in summary
    assert "bits_per_byte (min), train_tokens_per_s (max)" in summary

    failures = section(page, "Failures")
    assert html.escape(ERROR.splitlines()[0]) in failures
    assert "<b>&mismatch" not in page
    assert "Traceback" not in failures  # the first line of an error only
    assert "timed out after 180 s" in failures
    promotions = section(page, "Promotions")
    assert "runs/promoted-1" in promotions and "search bits_per_byte" in promotions
    assert NO_SUCCESS not in page
    made = re.search(r"generated at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", page)
    assert made is not None
    when = datetime.strptime(made.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5)


def test_report_of_a_run_without_successes(store: Storage, tmp_path: Path) -> None:
    store.create_run(RUN, SPACE_YAML, seed=0)
    genome = store.genome_id(RUN, {"n_layers": 2})
    store.finish_trial(
        store.add_trial(RUN, genome, generation=0), outcome("invalid", {"error": "bad <genome>"})
    )
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    for heading in HEADINGS[:-1]:
        assert f"<h2>{heading}</h2>" in page
    assert "<h2>Promotions</h2>" not in page
    assert page.count(NO_SUCCESS) == 5
    assert figures(page) == []
    assert "bad &lt;genome&gt;" in section(page, "Failures")

    store.create_run("empty", SPACE_YAML, seed=0)
    empty = write_report(store, "empty", tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "No trials yet." in empty


def test_report_with_one_objective(store: Storage, tmp_path: Path) -> None:
    space = yaml.safe_load(SPACE_YAML)
    space["search"]["objectives"] = ["val_loss"]
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    for i, genes in enumerate([{"n_layers": 1}, {"n_layers": 2}]):
        trial = store.add_trial(RUN, store.genome_id(RUN, genes), generation=i)
        store.finish_trial(trial, outcome("done", {"val_loss": 3.0 - i, "curve": []}))
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "val_loss (min)" in section(page, "Summary")
    # One objective has no front: the history of its values, with the best so far.
    assert "<h2>Pareto front</h2>" not in page
    assert "best so far" in section(page, "Optimisation history")
    assert "No learning curves were recorded." in section(page, "Learning curves")
    assert len(figures(page)) == 4


def test_a_rung_whose_trials_all_stalled_says_so_where_others_learned(
    store: Storage, tmp_path: Path
) -> None:
    space = yaml.safe_load(SPACE_YAML)
    space["search"] = {"objectives": ["bits_per_byte"], "target": {"max_steps": 900},
                       "rungs": [100, 300, 900], "budget": {"trials": 4}}  # fmt: skip
    del space["trial"]["max_steps"]
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    store.set_unigram_baseline(RUN, BASELINE)
    genome = store.genome_id(RUN, {"n_layers": 2})
    for rung, value in enumerate([4.6, 3.2]):  # stalled at rung 1, learned by rung 2
        trial = store.add_trial(RUN, genome, rung=rung)
        store.finish_trial(trial, outcome("done", result(value, 1000.0, adapt=False)))
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    genes = section(page, "Genes")
    assert "No trial has learned at rung 1 yet: 1 succeeded there but stalled" in genes
    assert NO_SUCCESS not in genes
    history = section(page, "Optimisation history")  # drawn at the top rung, still empty
    assert "No successful trial at the top rung yet." in history


# One objective, three generations; generation 1's best (2.6) is worse than generation
# 0's (2.5), so the best so far stays level where the best of each generation rises.
# Against a unigram baseline of 4 bits per byte, 4.7 and 4.75 stalled.
BASELINE = 4.0
VALUES = [[2.5, 3.1, 4.7, 2.9], [2.6, 4.75, 3.0, 2.8], [2.2, 2.4, 2.7, 3.3]]
GPU_PEAK = 123_456_789  # the one trial that trained on a GPU


@pytest.fixture
def one(store: Storage) -> dict[int, float]:
    """A generational run with one objective, two stalled trials and a failure; returns
    the successes' bits per byte by trial id."""
    space = yaml.safe_load(SPACE_YAML)
    space["search"].update(objectives=["bits_per_byte"], generations=3)
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    store.set_unigram_baseline(RUN, BASELINE)
    sampler, rng = space_from_dict(space), random.Random(2)
    scores: dict[int, float] = {}
    for generation, row in enumerate(VALUES):
        population = []
        for value in row:
            population.append(store.genome_id(RUN, sampler.sample(rng)))
            trial = store.add_trial(RUN, population[-1], generation=generation)
            device = "cuda:0" if not scores else "cpu"
            store.mark_running(trial, host="box", device=device)
            measured = {"device": device, "peak_memory_bytes": GPU_PEAK} if not scores else {}
            store.finish_trial(
                trial, outcome("done", {**result(value, 1000.0, adapt=False), **measured})
            )
            scores[trial] = value
        store.save_generation(RUN, generation, population, rng.getstate(), {})
    failed = store.add_trial(RUN, population[0], generation=2)
    store.finish_trial(failed, outcome("diverged", {"error": "pretrain: loss became NaN"}))
    return scores


def many_trials(store: Storage, count: int) -> None:
    """A generational run of `count` successful trials with one objective, which the
    number of layers decides (plus noise)."""
    space = yaml.safe_load(SPACE_YAML)
    space["search"].update(objectives=["bits_per_byte"])
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    sampler, rng = space_from_dict(space), random.Random(7)
    for _ in range(count):
        genes = sampler.sample(rng)
        trial = store.add_trial(RUN, store.genome_id(RUN, genes), generation=0)
        value = 2.0 + 0.1 * genes["n_layers"] + 0.01 * rng.random()
        store.finish_trial(trial, outcome("done", result(value, 1000.0, adapt=False)))


def test_gene_importance_ranks_the_genes_and_slices_the_most_important(
    store: Storage, tmp_path: Path
) -> None:
    many_trials(store, 24)
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    part = section(page, "Gene importance")
    assert "over the 24 successful trials" in part  # how many it rests on
    bars, slices = figures(part)
    (importance,) = bars["data"]
    genes = importance["y"]
    varying = {"n_layers", "n_heads", "d_model", "d_ff_mult", "pos_encoding", "batch_size"}
    varying |= {"warmup_steps", "beta2"}
    assert set(_TINY["genes"]) >= set(genes) >= varying  # every gene that varies
    assert genes[0] == "n_layers" and bars["layout"]["yaxis"]["tickvals"] == genes
    assert bars["layout"]["xaxis"]["title"]["text"] == "importance over 24 trials (sums to 1)"
    assert sum(values(importance["x"])) == pytest.approx(1.0)
    assert [t["name"] for t in slices["data"]] == genes[:4]  # the four most important
    assert "bits_per_byte" in slices["layout"]["yaxis"]["title"]["text"]
    space = space_from_dict(yaml.safe_load(SPACE_YAML))
    for number, trace in enumerate(slices["data"], start=1):
        axis = slices["layout"][f"xaxis{number if number > 1 else ''}"]
        domain = space.genes[trace["name"]]
        if domain.choice is not None:  # in the space's order, integers without ".0"
            order = [format_value(v) for v in domain.values()]
            assert axis["categoryarray"][: len(order)] == order
            assert not any(label.endswith(".0") for label in trace["x"])
        elif domain.kind == "int":  # ticks at whole numbers only
            assert axis["dtick"] >= 1 and float(axis["tick0"]).is_integer()
            assert axis["tickformat"] == ",.0f"


def test_gene_importance_below_its_minimum_shows_the_count(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    part = section(page, "Gene importance")
    assert figures(part) == []  # 10 trials that learned: no bars to mislead
    assert "10 successful trials so far: too few to say which genes matter" in part
    assert "(importance is drawn from 20)" in part


def test_one_objective_is_drawn_as_an_optimisation_history(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Pareto front</h2>" not in page
    (history,) = figures(section(page, "Optimisation history"))
    learned = {t: v for t, v in one.items() if v < BASELINE}
    trials = trace(history, "trial")
    assert values(trials["x"]) == sorted(learned)  # stalled trials are not drawn
    assert values(trials["y"]) == pytest.approx([learned[t] for t in sorted(learned)])
    best = trace(history, "best so far")
    assert best["line"]["shape"] == "hv"
    assert values(best["y"]) == pytest.approx(np.minimum.accumulate(values(trials["y"])))
    assert values(trace(history, "best trial")["y"]) == [min(one.values())]
    layout = history["layout"]
    assert layout["yaxis"]["title"]["text"] == "bits_per_byte (bits/byte)<br>lower is better"
    assert layout["xaxis"]["title"]["text"] == "trial"
    assert layout["xaxis"]["dtick"] >= 1 and layout["xaxis"]["tickformat"] == ",.0f"
    low, high = layout["xaxis"]["range"]
    assert (
        low < min(learned) and high > max(learned) and float(layout["xaxis"]["tick0"]).is_integer()
    )
    # The legend is a row above the plot: it cannot cover the plot, an axis or a colour bar.
    assert layout["legend"]["orientation"] == "h"
    assert layout["legend"]["y"] >= 1 and layout["legend"]["yanchor"] == "bottom"


def test_objectives_per_generation_plot_the_best_so_far(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    (progress,) = figures(section(page, "Objectives per generation"))
    assert values(trace(progress, "best so far")["y"]) == [2.5, 2.5, 2.2]
    learned = [[v for v in row if v < BASELINE] for row in VALUES]
    medians = [float(np.median(row)) for row in learned]
    assert values(trace(progress, "median of the generation")["y"]) == pytest.approx(medians)
    assert progress["layout"]["yaxis"]["title"]["text"] == (
        "bits_per_byte (bits/byte)<br>lower is better"
    )
    assert progress["layout"]["xaxis"]["title"]["text"] == "generation"


def test_stalled_trials_are_listed_as_failures_and_kept_out_of_the_charts(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    stuck = sorted(t for t, v in one.items() if v >= BASELINE)
    assert len(stuck) == 2
    summary = section(page, "Summary")
    assert "12 done (2 of them stalled), 1 failed" in summary
    assert "4 bits/byte (a trial no better than this stalled; see Failures)" in summary

    failures = section(page, "Failures")
    assert html.escape(STALLED_RULE) in failures  # the rule is stated where they are listed
    counts, listed = tables(failures)
    assert {"status": "stalled (of the done)", "trials": "2"} in counts
    assert [(r["trial"], r["status"]) for r in listed] == [
        *((str(t), "stalled") for t in stuck),
        (str(max(one) + 1), "diverged"),
    ]
    reasons = {r["trial"]: r["error or reason"] for r in listed}
    assert reasons[str(stuck[0])] == (
        f"bits per byte {one[stuck[0]]:.4g}, no better than the unigram baseline 4"
    )
    assert reasons[str(max(one) + 1)] == "pretrain: loss became NaN"

    (genes,) = figures(section(page, "Genes"))
    (dimension,) = [d for d in genes["data"][0]["dimensions"] if d["label"] == "bits_per_byte"]
    assert max(values(dimension["values"])) < BASELINE  # no stretched axis
    (anytime,) = figures(section(page, "Best against compute"))
    assert max(values(anytime["data"][0]["y"])) < BASELINE


def test_learning_curves_say_what_they_draw(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    curves = section(page, "Learning curves")
    (drawn,) = figures(curves)
    assert {t["line"]["dash"] for t in drawn["data"] if t["mode"] == "lines"} == {"solid"}
    how = re.search(r'<p class="how">(.*?)</p>', curves).group(1)  # type: ignore[union-attr]
    assert "dash" not in how  # no adapt stage here, so no dashed lines to explain
    assert "Training loss (nats per token" in how and "dots are validation losses" in how
    assert drawn["layout"]["yaxis"]["title"]["text"] == "loss (nats per token)"


def test_the_trials_table_lists_every_trial_best_first(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    (rows,) = tables(section(page, "Trials"))
    ranked = sorted(one, key=lambda t: (one[t], t))
    assert [r["trial"] for r in rows] == [str(t) for t in ranked] + [str(max(one) + 1)]
    assert [r["bits_per_byte (bits/byte)"] for r in rows[:2]] == ["2.2", "2.4"]
    assert rows[-1]["status"] == "diverged" and rows[-1]["bits_per_byte (bits/byte)"] == "—"
    stuck = {str(t) for t, v in one.items() if v >= BASELINE}
    assert {r["trial"] for r in rows if r["status"] == "stalled"} == stuck
    genes = store.genomes(RUN)
    first = rows[0]
    genome = genes[int(first["genome"])]
    assert first["n_layers"] == str(genome["n_layers"])
    assert first["pos_encoding"] == genome["pos_encoding"]
    assert (first["rung"], first["generation"]) == ("1", "2")


def test_peak_memory_is_not_available_on_a_cpu(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    (history,) = figures(section(page, "Optimisation history"))
    trials = trace(history, "trial")
    hover = dict(zip(values(trials["x"]), trials["hovertext"], strict=True))
    gpu = min(one)  # the first trial trained on a GPU, the others on a CPU
    assert f"peak_memory_bytes: {GPU_PEAK:,}" in hover[gpu]
    assert all(f"peak_memory_bytes: {NOT_MEASURED}" in hover[t] for t in hover if t != gpu)
    frame = store.trials_frame(RUN)
    assert frame.loc[frame["device"] == "cpu", "peak_memory_bytes"].isna().all()


def test_parallel_coordinates_label_log_genes_with_values_and_single_out_the_best(
    store: Storage, one: dict[int, float], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    (genes,) = figures(section(page, "Genes"))
    (parcoords,) = genes["data"]
    assert parcoords["labelangle"] != 0  # titles angled, so narrow axes do not overlap
    rate = next(d for d in parcoords["dimensions"] if d["label"] == "learning_rate")
    ticks = [float(t) for t in rate["ticktext"]]
    assert ticks[0] == pytest.approx(3e-4) and ticks[-1] == pytest.approx(2e-2)
    assert [10**v for v in rate["tickvals"]] == pytest.approx(ticks, rel=0.05)

    # Other axes run from one round tick to another: whole numbers for an int gene.
    layers = next(d for d in parcoords["dimensions"] if d["label"] == "n_layers")
    assert layers["range"] == [1, 6] and layers["tickvals"] == [1, 2, 3, 4, 5, 6]
    assert layers["ticktext"] == ["1", "2", "3", "4", "5", "6"]
    bits = next(d for d in parcoords["dimensions"] if d["label"] == "bits_per_byte")
    assert bits["range"] == [bits["tickvals"][0], bits["tickvals"][-1]]
    assert bits["range"][0] <= min(values(bits["values"])) <= max(values(bits["values"]))
    assert max(values(bits["values"])) <= bits["range"][1]
    assert all(len(text.split(".")[-1]) <= 2 for text in bits["ticktext"])  # not 3.93391

    line = parcoords["line"]
    scores = values(line["color"])
    assert scores[-1] == min(scores)  # the best is drawn last, on top
    low, high = min(scores), max(scores)
    red = [position for position, color in line["colorscale"] if color == "#b2182b"]
    runner_up = (sorted(set(scores))[1] - low) / (high - low)
    assert min(red) == 0 and 0 < max(red) < runner_up  # no other line is red
    assert line["colorbar"]["title"]["text"] == "bits_per_byte (bits/byte)"


def test_promotions_show_tokens_trained_and_scored_beside_the_search_score(
    store: Storage, run: dict[str, object], tmp_path: Path
) -> None:
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    (row,) = tables(section(page, "Promotions"))[0]
    genome = run["promoted"]
    frame = store.trials_frame(RUN)
    (searched,) = frame.loc[frame["genome_id"] == genome, "bits_per_byte"]
    assert row["genome"] == str(genome)
    assert row["search bits_per_byte (rung)"] == f"{searched:.4g} (rung 1 of 1)"
    assert row["promoted bits_per_byte"] == "1.9"
    assert row["tokens trained"] == "3,771,648"
    assert row["tokens evaluated"] == "50,678"
    assert row["steps"] == "921"
    assert row["validated bits_per_byte"] == "—"


def test_generations_complete_agree_in_ls_status_and_report(
    store: Storage, run: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<td>generations complete</td><td>2 of 2</td>" in section(page, "Summary")
    assert evo(["status", RUN, "--storage", url]) == 0
    assert "2 of 2 generations complete" in capsys.readouterr().out
    assert evo(["ls", "--storage", url]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if f" {RUN} " in line]
    assert re.search(rf"{RUN}\s*│\s*\w+\s*│\s*2\s*│", line), line


def test_plotly_can_be_written_once_beside_the_page(
    store: Storage, run: dict[str, object], tmp_path: Path
) -> None:
    inline = write_report(store, RUN, tmp_path / "inline" / "report.html")
    beside = write_report(store, RUN, tmp_path / "file" / "report.html", plotly="file")
    (script,) = (tmp_path / "file").glob("plotly-*.min.js")
    assert script.read_text(encoding="utf-8") == get_plotlyjs()
    page = beside.read_text(encoding="utf-8")
    assert re.search(rf'<script type="text/javascript" src="{script.name}"', page)
    assert get_plotlyjs() not in page
    assert inline.stat().st_size - beside.stat().st_size > 0.9 * script.stat().st_size
    written = script.stat().st_mtime_ns
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    out = tmp_path / "file" / "again.html"
    assert evo(["report", RUN, "--plotly", "file", "--out", str(out), "--storage", url]) == 0
    assert script.stat().st_mtime_ns == written  # written once, not again per report
    assert sorted(p.name for p in (tmp_path / "file").iterdir()) == sorted(
        ["again.html", "report.html", script.name]
    )


def test_unknown_run_is_a_user_error(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run named 'nope'"):
        write_report(store, "nope", tmp_path / "report.html")
    with pytest.raises(UserError, match="no run named 'nope'"):
        export_trials(store, "nope", tmp_path / "trials.csv", "csv")
    assert list(tmp_path.glob("*.html")) == [] and list(tmp_path.glob("*.csv")) == []


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(
    store: Storage, run: dict[str, object], tmp_path: Path, fmt: str
) -> None:
    path = export_trials(store, RUN, tmp_path / f"trials.{fmt}", fmt)  # type: ignore[arg-type]
    back = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    frame = store.trials_frame(RUN)
    assert len(back) == len(frame) == 10
    assert back["trial_id"].tolist() == frame["trial_id"].tolist()
    genes = [c for c in frame if c.startswith("gene.")]
    assert len(genes) == len(_TINY["genes"]) and [c for c in back if c.startswith("gene.")] == genes
    for column in [*genes, "bits_per_byte", "status"]:
        if pd.api.types.is_numeric_dtype(frame[column]):
            np.testing.assert_allclose(back[column], frame[column], rtol=1e-12, err_msg=column)
        else:
            assert back[column].tolist() == frame[column].tolist(), column
    assert back["gene.batch_size"].isna().sum() == 1


def test_export_refuses_an_unknown_format(store: Storage, tmp_path: Path) -> None:
    store.create_run(RUN, SPACE_YAML, seed=0)
    with pytest.raises(UserError, match="unknown export format 'xlsx'"):
        export_trials(store, RUN, tmp_path / "trials.xlsx", "xlsx")  # type: ignore[arg-type]


def test_report_of_a_steady_state_search_shows_its_rungs(workdir: Path) -> None:
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    storage = Storage(url)
    data, _ = prepare_data(load_space(workdir / "space.yaml"))  # from the run's cache
    baseline = storage.require_run("space").unigram_bits_per_byte
    assert baseline == pytest.approx(unigram_bits_per_byte(data.pretrain))
    frame = storage.trials_frame("space")
    top = frame[(frame["rung"] == 2) & (frame["status"] == "done")].iloc[0]
    storage.record_promotion("space", int(top["genome_id"]), "p", "finished", PROMOTED)
    page = write_report(storage, "space", workdir / "r.html").read_text(encoding="utf-8")
    (promoted,) = tables(section(page, "Promotions"))[0]
    score = promoted["search bits_per_byte (rung)"]
    assert score == f"{top['bits_per_byte']:.4g} (rung 3 of 3)"
    rungs = section(page, "Rungs")
    assert "<td>3 steps</td>" in rungs and "<td>27 steps</td>" in rungs
    assert "Objectives per generation" not in page
    assert "16 of 16 trials (100%)" in section(page, "Summary")
    assert "best bits_per_byte at the top rung" in section(page, "Summary")
    assert '"line":{"shape":"hv"}' in section(page, "Best against compute")
    assert "rung 3" in section(page, "Workers")


def test_a_live_runs_trials_are_sorted_by_rung_then_score(store: Storage, tmp_path: Path) -> None:
    ids = build_live_run(store)
    page = write_report(store, LIVE, tmp_path / "report.html").read_text(encoding="utf-8")
    part = section(page, "Trials")
    (rows,) = tables(part)
    rungs = [int(row["rung"]) for row in rows]
    assert rungs == sorted(rungs, reverse=True) and rows[0]["trial"] == str(ids["top"])
    middle = [r["bits_per_byte (bits/byte)"] for r in rows if r["rung"] == "2"]
    assert middle == ["1.8", "1.82", "1.84", "—"]  # best first, the running one last
    assert '<th aria-sort="descending">rung</th>' in part
    assert '<th aria-sort="ascending">bits_per_byte (bits/byte)</th>' in part
    assert "generation" not in rows[0]  # a steady-state run has none
    (_, failed) = tables(section(page, "Failures"))
    assert list(failed[0]) == ["trial", "rung", "status", "error or reason"]
    (rungs_chart,) = figures(section(page, "Rungs"))
    axis = rungs_chart["layout"]["yaxis"]
    drawn = [v for trace in rungs_chart["data"] for v in values(trace["y"])]
    assert axis["range"][0] < axis["tick0"] <= min(drawn)  # none below the lowest tick


def test_words_a_live_run_reads_in(store: Storage, tmp_path: Path) -> None:
    build_live_run(store)
    page = write_report(store, LIVE, tmp_path / "report.html").read_text(encoding="utf-8")
    summary = section(page, "Summary")
    rows = dict(_pairs(summary))
    assert rows["mode"] == "steady-state"
    assert rows["created"].endswith(" UTC") and rows["updated"].endswith(" UTC")
    assert "between trials" in rows["worker utilization"]
    assert "after the last trials" not in rows["worker utilization"]  # it still runs
    assert "for the best genome by bits_per_byte" in section(page, "Learning curves")
    (workers,) = figures(section(page, "Workers"))
    assert workers["layout"]["xaxis"]["title"]["text"] == "time (UTC)"
    store.set_run_status(LIVE, "finished")
    done = write_report(store, LIVE, tmp_path / "done.html").read_text(encoding="utf-8")
    assert "after the last trials" in section(done, "Summary")


def _pairs(part: str) -> list[tuple[str, str]]:
    return [
        (html.unescape(a), html.unescape(b))
        for a, b in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", part)
    ]


def test_status_says_queued_or_running(
    store: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_live_run(store)
    assert evo(["status", LIVE, "--storage", f"sqlite:///{tmp_path / 'evo.db'}"]) == 0
    out = capsys.readouterr().out
    assert "in flight" not in out and "queued" in out and "after the last trials" not in out
