"""The replay benchmark (bench/replay.py) and the table it reads (bench/build_table.py):
answers from the table and its nearest-neighbour surrogate, the surrogate's measured
error, and every search method run on simulated workers within its budget."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import steady_space_dict, write_corpus

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import build_table
import replay

from evo.schedule.budget import trial_cost
from evo.space import SearchSpace, space_from_dict
from evo.storage import ForecastRecord, PredictionRecord, genome_hash

RATES = [1.0e-3, 4.0e-3, 1.6e-2]


def smooth_value(genes: dict, rung: int, seed: int) -> float:
    """Better with more layers, a wider model and a rate near 4e-3; lower at higher rungs."""
    rate = (math.log(genes["learning_rate"]) - math.log(4.0e-3)) ** 2
    width = 0.1 * (genes["d_model"] == 32) + 0.02 * (genes["n_heads"] == 2)
    return 3.0 - 0.2 * genes["n_layers"] - width + 0.03 * rate - 0.1 * rung + 0.01 * seed


def make_space(tmp_path: Path) -> SearchSpace:
    corpus = write_corpus(tmp_path / "corpus", documents=4)
    return space_from_dict(steady_space_dict(corpus, budget={"tokens": 40_000}))


def all_configs() -> list[dict]:
    return [
        {"n_layers": layers, "d_model": width, "n_heads": heads, "learning_rate": rate}
        for layers, width, heads, rate in itertools.product([1, 2], [16, 32], [1, 2], RATES)
    ]


def write_table(tmp_path: Path, space: SearchSpace, value=smooth_value, seeds: int = 3) -> str:
    records = []
    for config, genes in enumerate(all_configs()):
        for seed in range(seeds):
            for rung in range(3):
                v = value(genes, rung, seed)
                records.append(
                    {"config": config, "origin": "sobol", **genes, "seed": seed, "rung": rung,
                     "status": "done" if math.isfinite(v) else "diverged",
                     "bits_per_byte": v if math.isfinite(v) else None,
                     "tokens": 1000 * (rung + 1) if math.isfinite(v) else 0,
                     "wall_seconds": 0.5 * (rung + 1)}
                )  # fmt: skip
                if not math.isfinite(v):
                    break  # as build_table: a failed rung ends the chain
    path = tmp_path / "table.parquet"
    meta = {"evo.space": space.canonical_yaml(), "evo.vocab_size": "64"}
    build_table.write_parquet(pd.DataFrame.from_records(records), path, meta)
    return str(path)


@pytest.fixture
def table(tmp_path) -> replay.Table:
    return replay.Table.load(write_table(tmp_path, make_space(tmp_path)))


def test_a_configuration_in_the_table_is_answered_from_the_seed_drawn(table):
    genes = all_configs()[5]
    for rung, seed in itertools.product(range(3), range(3)):
        value, per_token = table.answer(genes, rung, seed)
        assert value == pytest.approx(smooth_value(genes, rung, seed))
        assert per_token == pytest.approx(0.5 / 1000)
    assert table.true_value(genes) == pytest.approx(smooth_value(genes, 2, 1))  # seed mean


def test_a_configuration_outside_the_table_is_answered_by_its_nearest(table):
    inside = {"n_layers": 2, "d_model": 32, "n_heads": 2, "learning_rate": 4.0e-3}
    near = {**inside, "learning_rate": 4.4e-3}  # not in the table, closest to `inside`
    value, _ = table.answer(near, 2, 0)
    own = smooth_value(inside, 2, 0)
    others = [table.answer(table.genes[c], 2, 0)[0] for c in table.neighbours(near)[0]]
    assert genome_hash(near) not in table.keys
    assert min(others) <= value <= max(others)
    assert abs(value - own) < abs(np.mean(others) - own) + 1e-12  # weighted to the nearest


def fails(genes: dict, rung: int, seed: int) -> float:
    """Deep models diverge at the top rung; wide fast ones at the first, on seed 0."""
    if genes["n_layers"] == 2 and rung == 2:
        return math.inf
    if genes["d_model"] == 32 and genes["learning_rate"] > 0.01 and seed == 0:
        return math.inf
    return smooth_value(genes, rung, seed)


def test_failures_in_the_table_are_failures_in_the_replay(tmp_path):
    table = replay.Table.load(write_table(tmp_path, make_space(tmp_path), fails))
    deep = {"n_layers": 2, "d_model": 16, "n_heads": 1, "learning_rate": 1.0e-3}
    assert table.answer(deep, 1, 0)[0] is not None
    assert table.answer(deep, 2, 0)[0] is None
    worst = np.nanmax(table.values[:, :, -1])
    assert table.true_value(deep) == pytest.approx(worst)  # every seed failed: the worst
    fast = {"n_layers": 1, "d_model": 32, "n_heads": 1, "learning_rate": 1.6e-2}
    assert table.answer(fast, 2, 0)[0] is None  # the chain stopped at the first rung
    assert np.isfinite(table.answer(fast, 2, 0)[1])  # its time comes from its other seeds
    # one seed in three failed: worth a third of the way to the worst
    seeds = [smooth_value(fast, 2, 1), smooth_value(fast, 2, 2), worst]
    assert table.true_value(fast) == pytest.approx(np.mean(seeds))


@pytest.mark.parametrize("method", replay.METHODS)
def test_every_method_runs_on_a_table_with_failed_chains(tmp_path, method):
    path = write_table(tmp_path, make_space(tmp_path), fails)
    curve, _ = replay.run_one(path, method, 0, workers=2, limit=20_000)
    assert all(math.isfinite(point[0]) for point in curve)


def test_the_surrogate_error_is_small_on_a_smooth_table_and_large_on_noise(tmp_path):
    space = make_space(tmp_path)
    smooth = replay.surrogate_error(replay.Table.load(write_table(tmp_path, space)))
    assert smooth["configurations"] == 24
    assert smooth["seed_std"] == pytest.approx(0.01)
    assert smooth["mae"] < smooth["spread_std"] / 2
    assert smooth["spearman"] > 0.8

    rng = np.random.default_rng(0)
    noise = {genome_hash(g): rng.normal(3, 0.2) for g in all_configs()}
    table = replay.Table.load(
        write_table(tmp_path, space, lambda g, r, s: noise[genome_hash(g)] + 0.01 * s)
    )
    random_error = replay.surrogate_error(table)
    assert random_error["spearman"] < 0.5
    assert random_error["mae"] > smooth["mae"]


def test_the_incumbent_is_worth_its_mean_over_seeds_not_its_lucky_draw(table):
    incumbent = replay.Incumbent(table)
    genes = all_configs()[0]
    incumbent.offer(genes, 1.0)  # a lucky seed
    assert incumbent.observed == 1.0
    assert incumbent.true == pytest.approx(smooth_value(genes, 2, 1))
    incumbent.offer(all_configs()[1], 1.5)  # observed worse: not the incumbent
    assert incumbent.true == pytest.approx(smooth_value(genes, 2, 1))


@pytest.mark.parametrize("method", replay.METHODS)
def test_every_method_searches_within_its_budget(tmp_path, method):
    space = make_space(tmp_path)
    path = write_table(tmp_path, space)
    limit = 40_000
    runs = [replay.run_one(path, method, 3, workers=2, limit=limit) for _ in range(2)]
    assert runs[0] == runs[1]  # a repetition is reproducible
    curve, exact = runs[0]
    assert 0 <= exact <= 1
    spent = [point[0] for point in curve]
    observed = [point[2] for point in curve]
    assert spent == sorted(spent)
    assert observed == sorted(observed, reverse=True)
    assert math.isfinite(curve[-1][1]), "no top-rung result at all"
    assert spent[-1] <= limit  # a generation's trials started past the budget are left out
    table = replay.load_table(path)
    assert curve[-1][1] >= table.top_mean.min()


def test_the_report_ranks_a_better_method_first(tmp_path, capsys):
    space = make_space(tmp_path)
    table = replay.Table.load(write_table(tmp_path, space))
    best, worst = table.top_mean.min(), np.median(table.top_mean)
    good = [[(1000.0, worst, worst), (2000.0, best, best)] for _ in range(5)]
    bad = [[(1000.0, worst, worst), (2000.0, worst, worst)] for _ in range(5)]
    args = type("Args", (), {"repetitions": 5, "html": str(tmp_path / "r.html")})()
    replay.report(args, table, {"evo": good, "random": bad}, 2000.0)
    out = capsys.readouterr().out
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():  # the first row of each method: the final figures
        if line.strip():
            rows.setdefault(line.split()[0], line.split())
    assert float(rows["evo"][1]) == pytest.approx(0.0)  # IQM regret: the table's best
    assert float(rows["random"][1]) == pytest.approx(1.0)  # the median configuration
    assert "intervals apart from evo's: random" in out
    assert (tmp_path / "r.html").stat().st_size > 0


def test_a_chain_trains_every_rung_each_continuing_the_one_below(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus")
    space_path = tmp_path / "space.yaml"
    space_path.write_text(json.dumps(steady_space_dict(corpus)))
    genes = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 1.0e-2}
    rows = build_table.run_chain(str(space_path), (), 0, genes)
    assert [row["rung"] for row in rows] == [0, 1, 2]
    assert all(row["status"] == "done" for row in rows)
    # each rung trains from the stable checkpoint of the one below, not from scratch
    space = space_from_dict(steady_space_dict(corpus))
    assert [row["tokens"] for row in rows] == [trial_cost(space, genes, r).tokens for r in range(3)]
    assert rows[2]["steps"] < 27
    other_seed = build_table.run_chain(str(space_path), (), 1, genes)
    assert other_seed[-1]["bits_per_byte"] != rows[-1]["bits_per_byte"]


def test_the_journal_resumes_past_a_torn_line_and_refuses_another_space(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = build_table.Journal(path, "space-a")
    genes = {"n_layers": 1}
    journal.add({"origin": "sobol", "genes": genes, "seed": 0, "rows": [{"rung": 0}]})
    with path.open("a") as f:
        f.write('{"space": "space-a", "genes"')  # killed mid-write
    again = build_table.Journal(path, "space-a")
    assert list(again.done) == [(genome_hash(genes), 0)]
    with pytest.raises(SystemExit, match="another space"):
        build_table.Journal(path, "space-b")


@pytest.mark.parametrize("method", ["random", "evo-generational"])
def test_a_method_with_one_rung_is_scored_at_the_tables_top_rung(tmp_path, method):
    path = write_table(tmp_path, make_space(tmp_path))
    table = replay.load_table(path)
    space = replay.method_space(table, method, repetition=0, limit=40_000)
    genes = all_configs()[7]
    assert len(space.rung_budgets()) == 1
    outcome = replay.simulated_outcome(table, space, genes, 0, repetition=0, now=0.0)
    seed = replay.seed_of(0, genes, table.seeds)
    assert outcome.result.metric("bits_per_byte") == pytest.approx(smooth_value(genes, 2, seed))
    assert outcome.result.metric("tokens") == trial_cost(space, genes, 0).tokens


def test_hypervolume_of_a_known_front():
    reference = np.array([3.0, 3.0])
    assert replay.hypervolume([(1.0, 2.0), (2.0, 1.0)], reference) == pytest.approx(3.0)
    assert replay.hypervolume([(1.0, 2.0), (1.5, 2.5)], reference) == pytest.approx(2.0)
    assert replay.hypervolume([(4.0, 1.0)], reference) == 0.0  # beyond the reference


def test_the_front_regret_is_zero_with_every_configuration_and_one_with_none(table):
    front = replay.Front(table)
    assert front.true == 1.0
    for genes in table.genes:
        front.offer(genes, 0.0)  # observed values do not count towards `true`
    assert front.true == pytest.approx(0.0)
    assert front.observed < 0  # observed values better than the truth: negative regret


@pytest.mark.parametrize("method", [m for m in replay.METHODS if m != "tpe+hyperband"])
def test_every_method_searches_two_objectives(tmp_path, method):
    path = write_table(tmp_path, make_space(tmp_path))
    curve, _ = replay.run_one(path, method, 1, workers=2, limit=40_000, objectives=2)
    true = [point[1] for point in curve]
    assert true[-1] < 1.0  # some of the front was found
    assert true == sorted(true, reverse=True)  # a front only grows


def test_overrides_reach_every_methods_space(table):
    space = replay.method_space(table, "evo", 0, 40_000, overrides=("search.population=6",))
    assert space.search.population == 6
    assert replay.method_space(table, "tpe", 0, 40_000).search.population == 4


def test_the_table_configurations_are_valid_new_and_reproducible(tmp_path):
    space = make_space(tmp_path)
    sobol = build_table.sobol_configs(space, 64, 8)
    assert sobol == build_table.sobol_configs(space, 64, 8)
    assert all(space.is_valid(genes, 64) for genes in sobol)
    assert len({genome_hash(g) for g in sobol}) >= 6  # a few may repair to the same genome
    seen = {genome_hash(g) for g in sobol}
    best = sobol[:2]
    neighbours = build_table.neighbour_configs(space, 64, best, 4, set(seen))
    assert neighbours == build_table.neighbour_configs(space, 64, best, 4, set(seen))
    assert len(neighbours) == 4 and not {genome_hash(g) for g in neighbours} & seen
    assert all(space.is_valid(genes, 64) for genes in neighbours)
    for genes in neighbours:  # one mutation away from a parent: most genes kept
        assert max(sum(genes[k] == p[k] for k in genes) for p in best) >= len(genes) - 2


def forecast_of(means: dict[int, float]) -> ForecastRecord:
    predictions = {g: PredictionRecord(m, m - 0.1, m + 0.1, 0.05, False) for g, m in means.items()}
    return ForecastRecord(
        "bits_per_byte", {"max_steps": 81}, 0.8, 0.3, 0.5, 0.02, "residuals", None, predictions
    )


def test_the_predicted_pick_follows_the_forecast_not_the_top_rung_score(table):
    genes = all_configs()
    pick = replay.PredictedPick(
        table,
        {
            1: forecast_of({1: 2.0}),
            2: forecast_of({1: 2.0, 2: 1.5}),
            3: forecast_of({1: 1.0, 2: 1.5}),
        },
    )
    pick.result(1, genes[1], 2.4, 1)  # a top-rung score
    assert (pick.genome, pick.observed) == (1, 2.4)
    pick.result(2, genes[2], 2.6, 2)  # worse at the top rung, better predicted
    assert (pick.genome, pick.observed, pick.true) == (2, 2.6, table.true_value(genes[2]))
    pick.result(3, genes[3], None, 3)  # a lower rung's result refits: genome 1 comes first
    assert pick.genome == 1 and pick.true == table.true_value(genes[1])


@pytest.mark.parametrize("method", replay.PREDICTED)
def test_a_search_towards_a_target_beyond_its_rungs_picks_by_prediction(tmp_path, method):
    space = make_space(tmp_path)
    path = write_table(tmp_path, space)
    far = ("search.rungs=[3, 9]",)  # the table's top rung, 27 steps, is the target
    curve, _ = replay.run_one(path, method, 1, 1, 20_000, overrides=far)
    assert math.isfinite(curve[-1][1])
    table = replay.load_table(path)
    assert curve[-1][1] >= table.top_mean.min()
