"""Genetic operators: validity after every operator, determinism, selection, repair, records."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
from deap import tools
from hypothesis import given, settings
from hypothesis import strategies as st

from evo import operators
from evo.space import SearchSpace, load_space, space_from_dict
from llm.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "search_spaces"
VOCAB = 256

# A space where many combinations are invalid: odd head counts, GQA, and a size ceiling.
CONSTRAINED: dict[str, Any] = {
    "genes": {
        "n_layers": {"int": [1, 8]},
        "d_model": {"choice": [32, 48, 64, 96]},
        "n_heads": {"choice": [1, 2, 3, 4, 6, 8]},
        "n_kv_heads": {"choice": [1, 2, 3, 4]},
        "d_ff_mult": {"choice": [1, 2, 4]},
        "pos_encoding": {"choice": ["rope", "alibi", "sinusoidal", "none", "learned"]},
        "dropout": {"float": [0.0, 0.2]},
        "learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True},
        "batch_size": {"int": [8, 64], "step": 8},
    },
    "fixed": {"model": {"max_seq_len": 32}, "train": {"seq_len": 32}},
    "constraints": {"max_params": 150_000},
    "data": {"vocab_size": VOCAB},
    "trial": {"max_steps": 5},
    "search": {
        "budget": {"trials": 30},
        "population": 6,
        "objectives": ["bits_per_byte", "train_tokens_per_s"],
    },
}


def make_space(**changes: Any) -> SearchSpace:
    """CONSTRAINED with `changes` to its sections; a `search` change is merged into its."""
    data = copy.deepcopy(CONSTRAINED)
    search = {**data["search"], **changes.pop("search", {})}
    data.update(changes, search=search)
    return space_from_dict(data)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return make_space()


def in_domain(space: SearchSpace, individual: list[Any]) -> bool:
    genome = operators.to_genome(space, individual)
    return all(space.genes[name].contains(value) for name, value in genome.items())


def test_space_has_invalid_genomes(space: SearchSpace) -> None:
    rng = random.Random(0)
    samples = [space.sample(rng) for _ in range(200)]
    assert sum(space.is_valid(g, VOCAB) for g in samples) < 150  # repair has work to do


@pytest.mark.parametrize("name", ["tiny", "small", "architectures"])
def test_population_is_valid_for_shipped_spaces(name: str) -> None:
    shipped = load_space(SHIPPED / f"{name}.yaml")
    toolbox = operators.make_toolbox(shipped, shipped.data.vocab_size)
    random.seed(1)
    population = toolbox.population(n=shipped.search.population)
    assert len(population) == shipped.search.population
    for individual in population:
        genome = operators.to_genome(shipped, individual)
        assert shipped.problems(genome, shipped.data.vocab_size) == []
        assert not individual.fitness.valid


def test_repair_keeps_the_experts_a_token_visits_within_the_mixture() -> None:
    genes = {
        "mlp": {"choice": ["swiglu", "moe"]},
        "n_experts": {"choice": [1, 2, 4]},
        "experts_per_token": {"int": [1, 4]},
        "attn_window": {"choice": [None, 8, 16]},
    }
    mixtures = make_space(genes=genes, constraints={})
    toolbox = operators.make_toolbox(mixtures, VOCAB)
    random.seed(3)
    genomes = [operators.to_genome(mixtures, ind) for ind in toolbox.population(n=60)]
    assert all(mixtures.problems(g, VOCAB) == [] for g in genomes)
    assert all(g["experts_per_token"] <= g["n_experts"] for g in genomes)
    assert {g["mlp"] for g in genomes} == {"swiglu", "moe"}
    assert {g["attn_window"] for g in genomes} == {None, 8, 16}


def test_population_is_valid_and_diverse(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(2)
    population = toolbox.population(n=40)
    assert all(space.is_valid(operators.to_genome(space, ind), VOCAB) for ind in population)
    assert len({tuple(ind) for ind in population}) > 30


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_mate_and_mutate_give_valid_in_domain_genomes(seed: int) -> None:
    space = make_space()
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(seed)
    population = toolbox.population(n=4)
    for _ in range(5):
        a, b = (toolbox.clone(ind) for ind in random.sample(population, 2))
        children = [*toolbox.mate(a, b), *toolbox.mutate(toolbox.clone(population[0]))]
        for child in children:
            assert in_domain(space, child)
            assert space.problems(operators.to_genome(space, child), VOCAB) == []
        population[:3] = children


def test_every_gene_changes_at_gene_prob_one(space: SearchSpace) -> None:
    random.seed(3)
    for _ in range(300):
        individual = operators.to_individual(space, space.sample(random))
        before = list(individual)
        (mutant,) = operators.mutate(individual, space, gene_prob=1.0)
        assert all(new != old for new, old in zip(mutant, before, strict=True))
        assert in_domain(space, mutant)


def test_mutation_always_changes_something(space: SearchSpace) -> None:
    random.seed(4)
    for _ in range(200):
        individual = operators.to_individual(space, space.sample(random))
        before = list(individual)
        (mutant,) = operators.mutate(individual, space, gene_prob=0.01)
        assert mutant != before


def test_mutation_of_ordered_genes_is_mostly_local(space: SearchSpace) -> None:
    domain = space.genes["n_layers"]
    random.seed(5)
    steps = [abs(operators.mutate_value(domain, 4) - 4) for _ in range(1000)]
    assert min(steps) >= 1
    assert steps.count(1) > 400  # neighbours dominate, far jumps still happen
    assert max(steps) >= 3


def test_float_mutation_stays_in_range_and_moves(space: SearchSpace) -> None:
    domain = space.genes["learning_rate"]
    random.seed(6)
    for start in (1.0e-4, 1.0e-2, 1.0e-3):
        values = [operators.mutate_value(domain, start) for _ in range(200)]
        assert all(1.0e-4 <= v <= 1.0e-2 and v != start for v in values)


def test_same_seed_same_search_steps(space: SearchSpace) -> None:
    def run(seed: int) -> list[list[Any]]:
        toolbox = operators.make_toolbox(space, VOCAB)
        random.seed(seed)
        population = toolbox.population(n=6)
        offspring = [toolbox.clone(ind) for ind in population]
        toolbox.mate(offspring[0], offspring[1])
        toolbox.mutate(offspring[2])
        return [list(ind) for ind in population + offspring]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_selection_follows_objective_count() -> None:
    two = make_space()
    one = make_space(search={"objectives": ["val_loss"], "tournament_size": 4})
    toolbox_two = operators.make_toolbox(two, VOCAB)
    assert toolbox_two.select.func is tools.selNSGA2
    assert toolbox_two.select_parents.func is operators.crowded_tournament
    toolbox_one = operators.make_toolbox(one, VOCAB)
    assert toolbox_one.select.func is tools.selBest
    assert toolbox_one.select_parents.func is tools.selTournament
    assert toolbox_one.select_parents.keywords == {"tournsize": 4}
    forced = make_space(search={"objectives": ["val_loss"], "selection": "nsga2"})
    assert operators.make_toolbox(forced, VOCAB).select.func is tools.selNSGA2


def with_fitness(space: SearchSpace, values: list[tuple[float, ...]]) -> list[Any]:
    toolbox = operators.make_toolbox(space, VOCAB)
    population = toolbox.population(n=len(values))
    for individual, fitness in zip(population, values, strict=True):
        individual.fitness.values = fitness
    return population


def test_single_objective_survivors_keep_the_best() -> None:
    one = make_space(search={"objectives": ["val_loss"]})
    random.seed(11)
    population = with_fitness(one, [(float(v),) for v in range(8)])
    survivors = operators.make_toolbox(one, VOCAB).select(population, 4)
    assert sorted(ind.fitness.values[0] for ind in survivors) == [0.0, 1.0, 2.0, 3.0]


def test_crowded_tournament_prefers_the_first_front_and_its_ends(space: SearchSpace) -> None:
    # Bits per byte down, tokens/s up: the first four form the front (its ends are 0 and
    # 3), the fifth is dominated by them, the last by every other.
    front = [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)]
    random.seed(12)
    population = with_fitness(space, [*front, (5.0, 0.5), (6.0, 0.2)])
    picks = [population.index(p) for p in operators.crowded_tournament(population, 3000)]
    assert 5 not in picks  # the worst individual loses every tournament
    counts = [picks.count(i) for i in range(6)]
    assert min(counts[0], counts[3]) > max(counts[1], counts[2]) > counts[4]


def test_initial_population_covers_every_value_of_small_domains() -> None:
    free = make_space(constraints={})
    toolbox = operators.make_toolbox(free, VOCAB)
    for seed in range(5):
        random.seed(seed)
        population = toolbox.population(n=10)
        genomes = [operators.to_genome(free, ind) for ind in population]
        assert all(free.is_valid(g, VOCAB) for g in genomes)
        assert {g["pos_encoding"] for g in genomes} == set(free.genes["pos_encoding"].values())
        assert {g["d_ff_mult"] for g in genomes} == set(free.genes["d_ff_mult"].values())


def test_initial_genomes_come_first_completed_from_the_design() -> None:
    known = {"n_layers": 2, "d_model": 64, "n_heads": 4, "learning_rate": 3.0e-3}
    space = make_space(search={"initial": [known, {"pos_encoding": "alibi"}]})
    random.seed(0)
    population = operators.initial_population(space, VOCAB, 6)
    genomes = [operators.to_genome(space, individual) for individual in population]
    assert len(genomes) == 6 and all(space.is_valid(g, VOCAB) for g in genomes)
    assert {k: genomes[0][k] for k in known} == known
    assert genomes[1]["pos_encoding"] == "alibi"
    # Without initial genomes, the same draws give the same design from the third row on.
    random.seed(0)
    design = operators.initial_population(make_space(), VOCAB, 6)
    assert [list(i) for i in population[2:]] == [list(i) for i in design[2:]]


def test_initial_genomes_beyond_the_population_are_all_kept() -> None:
    given = [{"n_layers": n} for n in range(1, 6)]
    space = make_space(search={"initial": given})
    population = operators.initial_population(space, VOCAB, 3)
    assert [operators.to_genome(space, i)["n_layers"] for i in population] == [1, 2, 3, 4, 5]


def test_an_initial_genome_over_the_ceilings_is_refused_by_its_index() -> None:
    too_big = {"n_layers": 8, "d_model": 96, "d_ff_mult": 4}
    space = make_space(search={"initial": [{"n_layers": 1}, too_big]})
    state = random.getstate()
    with pytest.raises(ConfigError, match=r"search.initial\[1\] is not a valid genome: params"):
        operators.check_initial(space, VOCAB)
    assert random.getstate() == state
    operators.check_initial(make_space(search={"initial": [{"n_layers": 8}]}), VOCAB)


def test_latin_hypercube_puts_one_float_in_each_stratum(space: SearchSpace) -> None:
    random.seed(13)
    genomes = operators.latin_hypercube(space, 8)
    low, high = (math.log(b) for b in space.genes["learning_rate"].bounds)
    strata = sorted(int((math.log(g["learning_rate"]) - low) / (high - low) * 8) for g in genomes)
    assert strata == list(range(8))


def test_distinct_replaces_repeated_genomes_with_new_valid_ones(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(14)
    parent = toolbox.population(n=1)[0]
    parent.fitness.values = (1.0, 1.0)
    seen = {tuple(parent)}
    out = operators.distinct([parent, toolbox.clone(parent), toolbox.clone(parent)], toolbox, seen)
    assert len({tuple(ind) for ind in out}) == 3 and tuple(parent) not in map(tuple, out)
    assert all(space.is_valid(operators.to_genome(space, ind), VOCAB) for ind in out)
    assert not any(ind.fitness.valid for ind in out)
    assert parent.fitness.values == (1.0, 1.0)  # the original is left alone
    assert seen == {tuple(parent), *(tuple(ind) for ind in out)}


def test_distinct_keeps_a_repeat_when_the_space_is_exhausted() -> None:
    single = make_space(
        genes={"n_layers": {"int": [1, 2]}},
        constraints={},
        fixed={"model": {"max_seq_len": 32, "d_model": 32, "n_heads": 2}, "train": {"seq_len": 32}},
    )
    toolbox = operators.make_toolbox(single, VOCAB)
    both = [operators.to_individual(single, {"n_layers": n}) for n in (1, 2)]
    seen = {tuple(ind) for ind in both}
    random.seed(15)
    out = operators.distinct([toolbox.clone(both[0])], toolbox, seen)
    assert tuple(out[0]) in seen and len(seen) == 2


def test_repair_moves_to_a_valid_neighbour(space: SearchSpace) -> None:
    genome = {
        "n_layers": 1,
        "d_model": 64,
        "n_heads": 3,  # 64 is not divisible by 3
        "n_kv_heads": 1,
        "d_ff_mult": 1,
        "pos_encoding": "alibi",
        "dropout": 0.1,
        "learning_rate": 1.0e-3,
        "batch_size": 16,
    }
    assert "divisible by n_heads" in space.problems(genome, VOCAB)[0]
    random.seed(9)
    repaired = operators.to_genome(
        space, operators.repair(operators.to_individual(space, genome), space, VOCAB)
    )
    assert space.is_valid(repaired, VOCAB)
    changed = {k for k in genome if repaired[k] != genome[k]}
    # One gene, one step: d_model precedes n_heads in gene order, and 48 (divisible by 3)
    # is its first neighbour.
    assert changed == {"d_model"} and repaired["d_model"] == 48


def test_repair_steps_warmup_down_to_end_in_the_lowest_rungs_stable_phase() -> None:
    """Every rung continues the lowest one's stable phase: a warmup longer than that is
    invalid, and repair shortens it to the longest that fits."""
    space = space_from_dict(
        {
            "genes": {
                "warmup_steps": {"int": [0, 30], "step": 2},
                "learning_rate": {"float": [1.0e-3, 1.0e-2], "log": True},
            },
            "fixed": {
                "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64},
                "train": {"decay_fraction": 0.5},
            },
            "data": {"vocab_size": VOCAB},
            "trial": {"resources": {"cpus": 1}},
            "search": {
                "target": {"max_steps": 180},
                "rungs": [20, 60, 180],
                "budget": {"trials": 9},
            },
        }
    )
    genome = {"warmup_steps": 30, "learning_rate": 3.0e-3}
    [problem] = space.problems(genome, VOCAB)
    assert "warmup_steps (30) must end before the lowest rung cools down, after 10 steps" in problem
    assert not space.is_valid({**genome, "warmup_steps": 10}, VOCAB)
    random.seed(0)
    repaired = operators.to_genome(
        space, operators.repair(operators.to_individual(space, genome), space, VOCAB)
    )
    assert repaired == {**genome, "warmup_steps": 8}


def test_repair_steps_sizes_down_under_max_params(space: SearchSpace) -> None:
    genome = {
        "n_layers": 8,
        "d_model": 96,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff_mult": 4,
        "pos_encoding": "rope",
        "dropout": 0.0,
        "learning_rate": 1.0e-3,
        "batch_size": 64,
    }
    assert any("max_params" in p for p in space.problems(genome, VOCAB))
    random.seed(10)
    individual = operators.repair(operators.to_individual(space, genome), space, VOCAB)
    repaired = operators.to_genome(space, individual)
    assert space.is_valid(repaired, VOCAB)
    untouched = ("pos_encoding", "dropout", "learning_rate", "batch_size")
    assert all(repaired[k] == genome[k] for k in untouched)
    assert space.model_config(repaired, VOCAB).param_count().total <= 150_000


def test_repair_puts_values_into_their_domains(space: SearchSpace) -> None:
    genome = {
        "n_layers": 20,
        "d_model": 50,
        "n_heads": 2,
        "n_kv_heads": 1,
        "d_ff_mult": 1,
        "pos_encoding": "rotary",
        "dropout": 0.9,
        "learning_rate": 1.0,
        "batch_size": 13,
    }
    random.seed(11)
    individual = operators.repair(operators.to_individual(space, genome), space, VOCAB)
    assert in_domain(space, individual)
    assert space.is_valid(operators.to_genome(space, individual), VOCAB)


def test_repair_leaves_a_valid_individual_alone(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(12)
    individual = toolbox.individual()
    state = random.getstate()
    assert toolbox.repair(toolbox.clone(individual)) == individual
    assert random.getstate() == state


def test_worst_fitness_is_dominated_by_any_real_fitness(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(13)
    population = toolbox.population(n=6)
    worst = operators.worst_fitness(space)
    assert worst == (operators.FAILED, -operators.FAILED)
    real_values = [(0.5, 10.0), (1e6, 1e-9), (12.0, 0.0), (3.0, 5.0)]
    for individual, values in zip(population, [*real_values, worst, worst], strict=True):
        individual.fitness.values = values
    for individual in population[:4]:
        assert individual.fitness.dominates(population[4].fitness)
        assert not population[4].fitness.dominates(individual.fitness)
    chosen = toolbox.select(population, 4)
    assert {id(ind) for ind in chosen} == {id(ind) for ind in population[:4]}


def test_partly_failed_fitness_keeps_crowding_distances_defined(space: SearchSpace) -> None:
    """Why FAILED is finite: with inf, this front's middle member gets a NaN distance."""
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(16)
    population = toolbox.population(n=4)
    values = [(0.4, 5.0), (0.5, 10.0), (operators.FAILED, 20.0), (1.0, 1.0)]
    for individual, fitness in zip(population, values, strict=True):
        individual.fitness.values = fitness
    chosen = toolbox.select(population, 3)
    assert {id(ind) for ind in chosen} == {id(ind) for ind in population[:3]}
    distances = [ind.fitness.crowding_dist for ind in population[:3]]
    assert not any(math.isnan(d) for d in distances)
    assert distances[1] == pytest.approx(1.0)  # half of each objective's range


def test_statistics_ignore_failed_trials(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(14)
    population = toolbox.population(n=4)
    values = [(1.0, 100.0), (3.0, 300.0), (2.0, 50.0), operators.worst_fitness(space)]
    for individual, fitness in zip(population, values, strict=True):
        individual.fitness.values = fitness
    record = operators.make_statistics(space).compile(population)
    assert record == {
        "bits_per_byte": {"min": 1.0, "median": 2.0, "max": 3.0},
        "train_tokens_per_s": {"min": 50.0, "median": 100.0, "max": 300.0},
    }
    logbook = operators.make_logbook(space)
    logbook.record(gen=0, nevals=4, **record)
    assert logbook.chapters["bits_per_byte"].select("median") == [2.0]
    assert "train_tokens_per_s" in str(logbook)
    for individual in population:
        individual.fitness.values = operators.worst_fitness(space)
    failed = operators.make_statistics(space).compile(population)
    assert math.isnan(failed["bits_per_byte"]["min"])


def test_elite_archive_matches_objective_count(space: SearchSpace) -> None:
    assert isinstance(operators.make_elite_archive(space), tools.ParetoFront)
    single = make_space(search={"objectives": ["val_loss"], "population": 5})
    archive = operators.make_elite_archive(single)
    assert isinstance(archive, tools.HallOfFame) and archive.maxsize == 5


def test_individuals_round_trip_and_classes_are_shared(space: SearchSpace) -> None:
    genome = space.sample(random.Random(15))
    individual = operators.to_individual(space, genome)
    assert operators.to_genome(space, individual) == genome
    assert type(individual).__name__ == "Individual_min_max"
    assert type(operators.to_individual(make_space(), genome)) is type(individual)
    assert individual.fitness.weights == (-1.0, 1.0)


def ranked_population(toolbox: Any, n: int) -> list[Any]:
    """A new population whose fitness gets worse down the list."""
    population = toolbox.population(n=n)
    for rank, individual in enumerate(population):
        individual.fitness.values = (float(rank), float(rank))
    return population


def test_breeding_mutates_crossover_children_too(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(21)
    population = ranked_population(toolbox, 6)
    mutated = []
    mutate = toolbox.mutate
    toolbox.register("mutate", lambda ind: mutated.append(tuple(ind)) or mutate(ind))
    seen = {tuple(ind) for ind in population}
    offspring = operators.breed(population, toolbox, 1.0, 1.0, seen)
    # Every pair is crossed and every child then mutated: new values keep entering.
    assert len(offspring) == 6 and len(mutated) >= 6
    assert all(space.is_valid(operators.to_genome(space, ind), VOCAB) for ind in offspring)
    assert not any(tuple(ind) in map(tuple, population) for ind in offspring)


def test_breeding_without_mutation_only_recombines(space: SearchSpace) -> None:
    toolbox = operators.make_toolbox(space, VOCAB)
    random.seed(22)
    population = ranked_population(toolbox, 6)
    offspring = operators.breed(population, toolbox, 1.0, 0.0, set())
    columns = [{ind[i] for ind in population} for i in range(len(space.gene_names))]
    # Without mutation, a gene of a child that needed no repair comes from some parent.
    for child in offspring:
        if space.is_valid(operators.to_genome(space, child), VOCAB):
            assert all(value in columns[i] for i, value in enumerate(child))
