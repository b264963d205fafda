"""The fidelity ladder: who advances, who is dropped, and how a trial continues from the
checkpoint of the rung below."""

from __future__ import annotations

import random

import yaml
from conftest import steady_space_dict, write_corpus
from deap import tools

from evo.checkpoints import CheckpointStore
from evo.data import prepare_data
from evo.executor import execute_job
from evo.operators import FAILED, fitness_class
from evo.schedule.rungs import Ladder, RungResults
from evo.search.trials import make_job
from evo.space import Objective, load_space
from llm.optim import planned_steps


def objectives(*metrics: str) -> list[Objective]:
    return [Objective(metric=metric) for metric in metrics]


def ladder(slack: int = 0) -> Ladder:
    return Ladder([{"max_steps": 3}, {"max_steps": 9}, {"max_steps": 27}], eta=3, slack=slack)


def test_the_top_third_of_a_rung_advances_best_first() -> None:
    results = RungResults(objectives("bits_per_byte"))
    for genome, value in enumerate([5.0, 3.0, 4.0, 1.0, 2.0, 6.0]):
        results.add(genome, (value,))
    assert results.quota(3) == 2 and results.best(2) == [3, 4]
    everyone = set(range(6))
    assert ladder().to_advance(results, everyone) == 3
    assert ladder().to_advance(results, everyone - {3}) == 4
    assert ladder().to_advance(results, everyone - {3, 4}) is None  # only two may go on
    results.add(6, (0.5,))
    assert ladder().to_advance(results, everyone - {3, 4} | {6}) == 6


def test_an_empty_top_third_is_asked_for_before_a_rung_has_three_results() -> None:
    results = RungResults(objectives("bits_per_byte", "params"))
    for genome, value in enumerate([(2.0, 3.0), (3.0, 2.0), (1.0, 9.0)]):
        assert results.best(results.quota(3)) == ([] if genome < 3 else [0])
        results.add(genome, value)
    assert len(results.best(results.quota(3))) == 1


def test_a_maximised_objective_and_failures_rank_the_right_way() -> None:
    results = RungResults(objectives("accuracy"))
    for genome, value in enumerate([0.2, None, 0.9, 0.5]):
        results.add(genome, None if value is None else (value,))
    assert results.best(4) == [2, 3, 0, 1]
    assert results.values(1) == (-FAILED,)  # a failure is the worst accuracy there is


def test_several_objectives_advance_by_front_then_crowding() -> None:
    # Bits per byte and parameters, both minimised: three genomes make the first front,
    # its two ends (0 and 2) first; 3 and 4 are dominated.
    results = RungResults(objectives("bits_per_byte", "params"))
    for genome, value in enumerate([(1.0, 9.0), (2.0, 5.0), (9.0, 1.0), (3.0, 6.0), (4.0, 7.0)]):
        results.add(genome, value)
    assert sorted(results.best(2)) == [0, 2]
    assert results.best(3)[2] == 1 and results.best(5)[3:] == [3, 4]


class Point(list):  # type: ignore[type-arg]
    fitness: object


def test_multi_objective_ranking_agrees_with_deaps_plain_sort() -> None:
    rng = random.Random(3)
    results = RungResults(objectives("bits_per_byte", "train_tokens_per_s"))
    points = [(rng.random(), rng.random()) for _ in range(200)]
    for genome, point in enumerate(points):
        results.add(genome, point)
    order = results.best(120)
    # DEAP's plain O(MN²) sort of the same points gives the same fronts in the same order.
    individuals = []
    for genome, point in enumerate(points):
        individual = Point([genome])
        individual.fitness = fitness_class((-1.0, 1.0))(point)
        individuals.append(individual)
    position = 0
    for front in tools.sortNondominated(individuals, 120):
        size = min(len(front), 120 - position)
        assert set(order[position : position + size]) <= {ind[0] for ind in front}
        position += size
        if position == 120:
            break
    assert len(order) == 120


def test_a_kept_ranking_equals_one_made_afresh_after_every_result() -> None:
    rng = random.Random(4)
    kept = RungResults(objectives("bits_per_byte", "params"))
    points = []
    for genome in range(300):
        # Coarse values, so that ties and duplicates occur too.
        point = None if genome % 17 == 0 else (rng.randint(0, 30), rng.randint(0, 30))
        points.append(point)
        kept.add(genome, None if point is None else (float(point[0]), float(point[1])))
        afresh = RungResults(objectives("bits_per_byte", "params"))
        for other, value in enumerate(points):
            afresh.add(other, None if value is None else (float(value[0]), float(value[1])))
        k = len(points) // 3 + 5
        assert kept.best(k) == afresh.best(k), genome


def test_genomes_far_below_the_top_third_are_dropped_for_good() -> None:
    results = RungResults(objectives("bits_per_byte"))
    for genome, value in enumerate([5.0, 3.0, 4.0, 1.0, 2.0, 6.0]):
        results.add(genome, (value,))
    # The top two (3, 4) may advance and one more (1) keeps its checkpoint; the rest go.
    assert ladder(slack=1).to_drop(results, set(range(6))) == [0, 2, 5]
    assert ladder(slack=1).to_drop(results, {1, 4}) == []


def test_a_genome_continued_rung_by_rung_equals_one_trained_straight(workdir) -> None:
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    space = load_space(workdir / "space.yaml")
    data, vocab = prepare_data(space)
    genes = {"n_layers": 2, "d_model": 32, "n_heads": 2, "learning_rate": 0.005}
    store = CheckpointStore(workdir / "checkpoints")
    first = execute_job(make_job(space, vocab, 1, genes, 0, None, store), data)
    second = execute_job(make_job(space, vocab, 1, genes, 1, first.checkpoint, store), data)
    third = execute_job(make_job(space, vocab, 1, genes, 2, second.checkpoint, store), data)
    straight = execute_job(make_job(space, vocab, 1, genes, 2), data)
    assert store.names() == ["genome-1/rung-0", "genome-1/rung-1"]  # the driver deletes them
    assert third.result.metric("bits_per_byte") == straight.result.metric("bits_per_byte")
    assert third.result.metric("val_loss") == straight.result.metric("val_loss")
    assert third.checkpoint is None  # nothing continues from the top rung
    # Each rung trains on from where the one below cooled down: its own steps only,
    # and a learning curve that starts there instead of at step 0.
    stable = [planned_steps(make_job(space, vocab, 1, genes, r).train) for r in range(3)]
    assert [o.result.metric("steps") for o in (first, second, third)] == [
        3,
        9 - stable[0][0],
        27 - stable[1][0],
    ]
    assert third.result.curve[0].step > stable[1][0]
    assert {p.step for p in straight.result.curve} >= {p.step for p in third.result.curve}
