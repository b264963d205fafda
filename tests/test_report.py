"""The run report and the trials export, on a small hand-made results database."""

from __future__ import annotations

import html
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import steady_space_dict, write_corpus
from plotly.offline import get_plotlyjs

from evo.cli import main as evo
from evo.report import NO_SUCCESS, export_trials, pareto_front, write_report
from evo.space import Objective, space_from_dict
from evo.storage import Storage
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
HEADINGS = (
    "Summary",
    "Objectives per generation",
    "Best against compute",
    "Pareto front",
    "Genes",
    "Learning curves",
    "Workers",
    "Failures",
    "Promotions",
)
ERROR = "RuntimeError: shape <b>&mismatch</b> in layer 2\nTraceback (most recent call last)"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    with Storage(f"sqlite:///{tmp_path / 'evo.db'}") as storage:
        yield storage


def curve(steps: int, loss: float) -> list[dict[str, object]]:
    """A pretraining then adapt curve whose last point of each stage has a validation loss."""
    points = []
    for stage, n in (("pretrain", steps), ("adapt", steps // 2)):
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


def result(bits_per_byte: float, tokens_per_s: float) -> dict[str, object]:
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
        "curve": curve(100, loss),
        "pretrain": {"val_loss": loss + 0.3, "bits_per_byte": bits_per_byte + 0.2},
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
                store.finish_trial(trial, "failed", {"status": "failed", "error": ERROR})
            elif generation == 1 and i == 4:
                store.finish_trial(trial, "timeout", {"error": "timed out after 180 s"})
            else:
                value = (2.5 - 0.2 * generation - 0.03 * i, 901.7 + 150 * i - 40 * generation)
                store.finish_trial(trial, "done", result(*value))
                metrics[trial] = value
        store.save_generation(RUN, generation, population, rng.getstate(), {"evaluated": 5})
    store.record_promotion(RUN, population[1], "runs/promoted-1", "done", {"bits_per_byte": 1.9})
    return {"metrics": metrics}


def section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    return page[start : page.index("</section>", start)]


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
    assert page.count("Plotly.newPlot(") == 6
    assert "Parcoords".lower() in page.lower()

    genes = section(page, "Genes")
    assert '"ticktext":["learned","sinusoidal","rope","alibi","none"]' in genes
    assert '"ticktext":["8","16","32","(missing)"]' in genes  # one genome lacks batch_size
    curves = section(page, "Learning curves")
    assert curves.count(', pretrain validation"') == 5  # the top five genomes
    assert curves.count(', adapt"') == 5 and '"dash":"dash"' in curves

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
    assert "made 20" in page  # when the report was made


def test_report_of_a_run_without_successes(store: Storage, tmp_path: Path) -> None:
    store.create_run(RUN, SPACE_YAML, seed=0)
    genome = store.genome_id(RUN, {"n_layers": 2})
    store.finish_trial(
        store.add_trial(RUN, genome, generation=0), "invalid", {"error": "bad <genome>"}
    )
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    for heading in HEADINGS[:-1]:
        assert f"<h2>{heading}</h2>" in page
    assert "<h2>Promotions</h2>" not in page
    assert page.count(NO_SUCCESS) == 5
    assert "Plotly.newPlot(" not in page
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
        store.finish_trial(trial, "done", {"val_loss": 3.0 - i, "curve": []})
    page = write_report(store, RUN, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "val_loss (min)" in section(page, "Summary")
    # One objective has no front: the history of its values, with the best so far.
    assert "<h2>Pareto front</h2>" not in page
    assert "best so far" in section(page, "History")
    assert "No learning curves were recorded." in section(page, "Learning curves")
    assert page.count("Plotly.newPlot(") == 4


def test_unknown_run_is_a_user_error(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run named 'nope'"):
        write_report(store, "nope", tmp_path / "report.html")
    with pytest.raises(UserError, match="no run named 'nope'"):
        export_trials(store, "nope", tmp_path / "trials.csv", "csv")
    assert list(tmp_path.glob("*.html")) == [] and list(tmp_path.glob("*.csv")) == []


def frame_of(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(i, status, a, b) for i, (status, a, b) in enumerate(rows)],
        columns=["trial_id", "status", "bits_per_byte", "train_tokens_per_s"],
    )


PARETO_ROWS = [
    ("done", 1.0, 1.0),
    ("done", 2.0, 3.0),
    ("done", 2.0, 2.0),
    ("done", 1.0, 1.0),  # equal to trial 0: neither dominates the other
    ("done", 3.0, 3.0),
    ("failed", 0.5, 10.0),  # would dominate all, but did not succeed
    ("done", float("nan"), 5.0),  # lacks an objective
]


def test_pareto_front_follows_each_objectives_direction() -> None:
    frame = frame_of(PARETO_ROWS)
    low_fast = [Objective(metric="bits_per_byte"), Objective(metric="train_tokens_per_s")]
    assert low_fast[1].direction == "max"
    assert pareto_front(frame, low_fast)["trial_id"].tolist() == [0, 3, 1]

    high_slow = [
        Objective(metric="bits_per_byte", direction="max"),
        Objective(metric="train_tokens_per_s", direction="min"),
    ]
    assert pareto_front(frame, high_slow)["trial_id"].tolist() == [4, 2, 0, 3]

    assert pareto_front(frame, low_fast[:1])["trial_id"].tolist() == [0, 3]
    assert pareto_front(frame[frame["status"] == "failed"], low_fast).empty


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
    assert len(genes) == 7 and [c for c in back if c.startswith("gene.")] == genes
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
    page = write_report(Storage(url), "space", workdir / "r.html").read_text(encoding="utf-8")
    rungs = section(page, "Rungs")
    assert "<td>3 steps</td>" in rungs and "<td>27 steps</td>" in rungs
    assert "Objectives per generation" not in page
    assert "16 of 16 trials (100%)" in section(page, "Summary")
    assert "best bits_per_byte at the top rung" in section(page, "Summary")
    assert '"line":{"shape":"hv"}' in section(page, "Best against compute")
    assert "rung 3" in section(page, "Workers")
