"""Evolutionary operators on genomes, built on DEAP.

An individual is a DEAP individual: a list of gene values in the space's gene order,
with a fitness whose weights come from the space's objectives. `make_toolbox` registers
what the driver calls: individual, population, mate, mutate, select (survivors),
select_parents (the mating pool), repair (and DEAP's clone). mate and mutate are
decorated with repair, so every individual they return is valid. Like DEAP's own
tools, everything draws from the global `random` module, so seeding it makes a search
reproducible and `random.getstate()` captures it.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from deap import algorithms, base, creator, tools

from evo.space import Domain, SearchSpace
from llm.errors import ConfigError

CROSSOVER_SWAP_PROB = 0.5  # uniform crossover: each gene comes from either parent
RESAMPLE_PROB = 0.2  # int and ordered-choice mutation: jump anywhere instead of stepping
FLOAT_SIGMA = 0.1  # float mutation: standard deviation as a fraction of the (log) range
INIT_TRIES = 100  # random samples tried for a valid new individual before repairing one
REPAIR_STEPS = 50  # greedy repair moves before falling back to sampling
REPAIR_SAMPLES = 1000  # random samples tried when greedy repair is stuck
DISTINCT_TRIES = 20  # mutations tried to turn a repeated genome into a new one

# The objective value of a failed trial. Finite on purpose: DEAP's NSGA-II crowding
# distance divides differences of objective values by their range, which gives NaN when a
# front mixes infinite and finite values (possible when only some objectives failed), and
# NaN distances make the selection order arbitrary. 1e300 is beyond any real metric, yet
# differences and doubled ranges of such values stay finite.
FAILED = 1e300

Individual = list[Any]  # a creator class derived from list, with a `fitness` attribute


def fitness_class(weights: tuple[float, ...]) -> type[base.Fitness]:
    """The DEAP fitness class for these weights, created once (creator classes are global)."""
    name = "Fitness_" + "_".join("min" if w < 0 else "max" for w in weights)
    if not hasattr(creator, name):
        creator.create(name, base.Fitness, weights=weights)
    return getattr(creator, name)


def individual_class(space: SearchSpace) -> type[Individual]:
    fitness = fitness_class(space.objective_weights())
    name = "Individual" + fitness.__name__.removeprefix("Fitness")
    if not hasattr(creator, name):
        creator.create(name, list, fitness=fitness)
    return getattr(creator, name)


def to_individual(space: SearchSpace, genome: dict[str, Any]) -> Individual:
    return individual_class(space)(genome[name] for name in space.gene_names)


def to_genome(space: SearchSpace, individual: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(space.gene_names, individual, strict=True))


def worst_fitness(space: SearchSpace) -> tuple[float, ...]:
    """The fitness a failed trial gets: dominated by any real fitness (see FAILED)."""
    return tuple(-weight * FAILED for weight in space.objective_weights())


# Mutation


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _step_index(index: int, n: int) -> int:
    """A different index in range(n): mostly a step or two away, sometimes anywhere."""
    if random.random() < RESAMPLE_PROB:
        other = random.randrange(n - 1)
        return other + (other >= index)
    stride = 1
    while random.random() < 0.5:
        stride += 1
    sign = random.choice((-1, 1))
    moved = int(_clamp(index + sign * stride, 0, n - 1))
    # At an end of the range the step is taken the other way, so the value always changes.
    return moved if moved != index else int(_clamp(index - sign * stride, 0, n - 1))


def _mutate_float(domain: Domain, value: float) -> float:
    low, high = domain.bounds
    to_axis, from_axis = (math.log, math.exp) if domain.log else (float, float)
    x, lo, hi = to_axis(value), to_axis(low), to_axis(high)
    delta = random.gauss(0.0, FLOAT_SIGMA * (hi - lo))
    y = _clamp(x + delta, lo, hi)
    if y == x:
        y = _clamp(x - delta, lo, hi)
    return _clamp(from_axis(y), low, high)


def mutate_value(domain: Domain, value: Any) -> Any:
    """A different value from the domain, near the old one where the domain has an order.
    The domain must have more than one value."""
    if domain.kind == "float":
        return _mutate_float(domain, value)
    if domain.kind == "choice" and not domain.is_numeric_choice:
        others = [c for c in domain.values() if c != value]
        return random.choice(others)
    return _value_at(domain, _step_index(_index_of(domain, value), int(domain.size)))


def mutate(individual: Individual, space: SearchSpace, gene_prob: float) -> tuple[Individual]:
    """Mutate each gene with probability gene_prob, in place; at least one gene always
    changes, so no evaluation is spent on an unchanged genome. Returns a 1-tuple, DEAP style."""
    domains = list(space.genes.values())
    varying = [i for i, domain in enumerate(domains) if domain.size > 1]
    chosen = [i for i in varying if random.random() < gene_prob]
    if not chosen and varying:
        chosen = [random.choice(varying)]
    for i in chosen:
        individual[i] = mutate_value(domains[i], individual[i])
    return (individual,)


# Repair


def _index_of(domain: Domain, value: Any) -> int:
    """The position of a value of an int or numeric-choice domain in its sorted values."""
    if domain.choice is not None:
        return domain.values().index(value)
    return (value - int(domain.bounds[0])) // (domain.step or 1)


def _value_at(domain: Domain, index: int) -> Any:
    if domain.choice is not None:
        return domain.values()[index]
    return int(domain.bounds[0]) + index * (domain.step or 1)


def _into_domain(domain: Domain, value: Any) -> Any:
    """The value itself if the domain has it, else the nearest value it has (a random one
    when nearness means nothing)."""
    if domain.contains(value):
        return value
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and domain.kind == "float":
        return _clamp(value, *domain.bounds)
    if numeric and domain.kind == "int":
        index = round((value - domain.bounds[0]) / (domain.step or 1))
        return _value_at(domain, int(_clamp(index, 0, domain.size - 1)))
    if numeric and domain.is_numeric_choice:
        return min(domain.values(), key=lambda c: abs(c - value))
    return domain.sample(random)


def _nearby(domain: Domain, value: Any) -> list[tuple[Any, int]]:
    """Other values of the domain with their distance from `value` in steps: every value
    of a small ordered domain, ever sparser ones further out in a large one."""
    if domain.kind == "float":
        return [(v, 1) for v in domain.grid() if v != value]
    if domain.kind == "choice" and not domain.is_numeric_choice:
        return [(c, 1) for c in domain.values() if c != value]
    n, index = int(domain.size), _index_of(domain, value)
    if n <= 16:
        offsets: Sequence[int] = range(1, n)
    else:
        offsets = sorted({round(1.5**k) for k in range(math.ceil(math.log(n, 1.5)) + 1)})
    return [
        (_value_at(domain, j), offset)
        for offset in offsets
        for j in (index - offset, index + offset)
        if 0 <= j < n
    ]


def _best_neighbour(
    space: SearchSpace, genome: dict[str, Any], vocab_size: int
) -> dict[str, Any] | None:
    """The genome one gene away that is closest to valid (ties: the smaller change, then
    the earlier gene), if it is closer to valid than `genome`; else None."""
    best_key, best = (space.violation(genome, vocab_size), 0, 0), None
    for position, (name, domain) in enumerate(space.genes.items()):
        for value, distance in _nearby(domain, genome[name]):
            candidate = {**genome, name: value}
            key = (space.violation(candidate, vocab_size), distance, position)
            # Distances are at least 1, so a candidate no closer to valid never wins.
            if key < best_key:
                best_key, best = key, candidate
    return best


def _sample_valid(space: SearchSpace, vocab_size: int) -> dict[str, Any]:
    for _ in range(REPAIR_SAMPLES):
        genome = space.sample(random)
        if space.is_valid(genome, vocab_size):
            return genome
    raise ConfigError(
        f"found no valid genome in {REPAIR_SAMPLES} random samples: the constraints leave "
        "too small a part of the space valid; widen the genes or loosen the constraints"
    )


def repair(individual: Individual, space: SearchSpace, vocab_size: int) -> Individual:
    """Move an individual to a valid genome near it, in place, and return it.

    Values are first put into their domains; then, while the genome is invalid, the one-gene
    change that brings it closest to valid is made (this fixes n_heads to a divisor of
    d_model, or steps sizes down under max_params); when no such change helps, a random
    gene is resampled. If that does not succeed, a valid genome is sampled afresh. A valid
    individual is returned unchanged. Deterministic given the state of `random`.
    """
    genome = {
        name: _into_domain(domain, value)
        for (name, domain), value in zip(space.genes.items(), individual, strict=True)
    }
    varying = [name for name, domain in space.genes.items() if domain.size > 1]
    for _ in range(REPAIR_STEPS):
        if space.is_valid(genome, vocab_size) or not varying:
            break
        neighbour = _best_neighbour(space, genome, vocab_size)
        if neighbour is None:
            name = random.choice(varying)
            neighbour = {**genome, name: space.genes[name].sample(random)}
        genome = neighbour
    if not space.is_valid(genome, vocab_size):
        genome = _sample_valid(space, vocab_size)
    individual[:] = [genome[name] for name in space.gene_names]
    return individual


def new_individual(space: SearchSpace, vocab_size: int) -> Individual:
    """A random valid individual: sampled until valid (so uniform over the valid genomes),
    and the last sample repaired when INIT_TRIES samples were all invalid."""
    for _ in range(INIT_TRIES):
        genome = space.sample(random)
        if space.is_valid(genome, vocab_size):
            break
    return repair(to_individual(space, genome), space, vocab_size)


def value_at(domain: Domain, position: float) -> Any:
    """The domain's value at `position` in [0, 1) along its (log) axis or its list of values."""
    if domain.kind == "float":
        low, high = domain.bounds
        if not domain.log:
            return _clamp(low + position * (high - low), low, high)
        log_low, log_high = math.log(low), math.log(high)
        return _clamp(math.exp(log_low + position * (log_high - log_low)), low, high)
    values = domain.values()
    return values[min(int(position * len(values)), len(values) - 1)]


def latin_hypercube(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """n genomes that cover every gene's domain evenly: each gene's axis is cut into n
    equal strata, each genome takes its value from a different stratum (with fewer values
    than genomes, every value goes to about n / size genomes), and the genes are paired
    at random. Uniform sampling often leaves a value out of a small population entirely
    (one of four LoRA ranks is missing from 8 draws a third of the time). Not
    necessarily valid."""
    columns = []
    for domain in space.genes.values():
        column = [value_at(domain, (k + random.random()) / n) for k in range(n)]
        random.shuffle(column)
        columns.append(column)
    return [
        dict(zip(space.gene_names, values, strict=True)) for values in zip(*columns, strict=True)
    ]


def initial_population(space: SearchSpace, vocab_size: int, n: int) -> list[Individual]:
    """Generation 0: a Latin hypercube of n genomes, each repaired to the valid genome
    nearest it. The space's `search.initial` genomes come first, in place of the design's
    first rows (all of them are kept, even beyond n); genes they leave out come from those
    rows."""
    given = space.search.initial
    design = latin_hypercube(space, max(n, len(given)))
    population = [repair(to_individual(space, g), space, vocab_size) for g in design[len(given) :]]
    return [
        _completed(space, wanted, fill, vocab_size, f"search.initial[{i}]")
        for i, (wanted, fill) in enumerate(zip(given, design, strict=False))
    ] + population


def check_initial(space: SearchSpace, vocab_size: int) -> list[dict[str, Any]]:
    """The first genomes a search trains (its initial ones, or a Latin hypercube's first
    rows); ConfigError when one of the space's initial genomes cannot be made valid.
    Leaves the state of `random` as it was."""
    state = random.getstate()
    try:
        first = initial_population(space, vocab_size, space.search.population)
        return [to_genome(space, individual) for individual in first]
    finally:
        random.setstate(state)


def _completed(
    space: SearchSpace, wanted: dict[str, Any], fill: dict[str, Any], vocab_size: int, where: str
) -> Individual:
    """A valid individual with the `wanted` genes, the others from `fill` where that makes
    a valid genome, else from random samples; ConfigError naming `where` when none does."""
    samples = (space.sample(random) for _ in range(INIT_TRIES))  # drawn only when needed
    closest = {**fill, **wanted}
    for other in itertools.chain([fill], samples):
        individual = repair(to_individual(space, {**other, **wanted}), space, vocab_size)
        genome = to_genome(space, individual)
        if all(genome[name] == value for name, value in wanted.items()):
            return individual
        if other is fill:
            # The other genes as repair left them: what is still wrong is the wanted genes'
            # doing, not the filler's.
            closest = {**genome, **wanted}
    problems = "; ".join(space.problems(closest, vocab_size))
    raise ConfigError(f"{where} is not a valid genome: {problems}")


def distinct(
    individuals: Sequence[Individual], toolbox: base.Toolbox, seen: set[tuple[Any, ...]]
) -> list[Individual]:
    """The individuals, each one whose genome is in `seen` (or repeats an earlier one of
    the list) replaced by a mutant of it that is new, and `seen` updated. Without this,
    crossover of similar parents and selection of copies refill a generation with genomes
    already trained: they cost no trial, but the generation explores fewer new points. In
    a small space every mutant may be taken; after DISTINCT_TRIES the repeat is kept."""
    out = []
    for individual in individuals:
        for _ in range(DISTINCT_TRIES):
            if tuple(individual) not in seen:
                break
            (individual,) = toolbox.mutate(toolbox.clone(individual))
            del individual.fitness.values
        seen.add(tuple(individual))
        out.append(individual)
    return out


def breed(
    population: Sequence[Individual],
    toolbox: base.Toolbox,
    crossover_prob: float,
    mutation_prob: float,
    seen: set[tuple[Any, ...]],
) -> list[Individual]:
    """As many offspring as the population: parents chosen by `toolbox.select_parents`,
    each pair crossed with `crossover_prob`, then each child mutated with `mutation_prob`
    (DEAP's varAnd), and any repeat of a genome in `seen` made new (see `distinct`).
    Mutating crossover children too is what keeps new values coming into a small
    population: crossover alone only reshuffles the values it already has."""
    parents = toolbox.select_parents(population, len(population))
    offspring = algorithms.varAnd(parents, toolbox, crossover_prob, mutation_prob)
    return distinct(offspring, toolbox, seen)


def crowded_tournament(individuals: Sequence[Individual], k: int) -> list[Individual]:
    """k parents by Deb's binary tournament for NSGA-II: of two random individuals, the
    one on the better non-dominated front, on the same front the one in the less crowded
    region (the ends of a front always win). Ranks and crowding distances are computed
    here from `individuals` alone, so the choice depends only on the population."""
    rank: dict[int, int] = {}
    for number, front in enumerate(tools.sortNondominated(individuals, len(individuals))):
        tools.emo.assignCrowdingDist(front)
        rank.update((id(individual), number) for individual in front)

    def key(individual: Individual) -> tuple[int, float]:
        return rank[id(individual)], -individual.fitness.crowding_dist

    return [min(random.sample(list(individuals), 2), key=key) for _ in range(k)]


def _repairing(repair_one: Callable[[Individual], Individual]) -> Callable[..., Any]:
    """A toolbox decorator: repair every individual an operator returns."""

    def decorator(operator: Callable[..., tuple[Individual, ...]]) -> Callable[..., Any]:
        @functools.wraps(operator)
        def wrapper(*args: Any, **kwargs: Any) -> tuple[Individual, ...]:
            offspring = operator(*args, **kwargs)
            for individual in offspring:
                repair_one(individual)
            return offspring

        return wrapper

    return decorator


def make_toolbox(space: SearchSpace, vocab_size: int) -> base.Toolbox:
    """The DEAP toolbox of a search; `vocab_size` is the tokenizer's real vocabulary."""
    toolbox = base.Toolbox()
    toolbox.register("repair", repair, space=space, vocab_size=vocab_size)
    toolbox.register("individual", new_individual, space, vocab_size)
    toolbox.register("population", initial_population, space, vocab_size)
    toolbox.register("mate", tools.cxUniform, indpb=CROSSOVER_SWAP_PROB)
    toolbox.register("mutate", mutate, space=space, gene_prob=space.search.mutation_gene_prob)
    toolbox.decorate("mate", _repairing(toolbox.repair))
    toolbox.decorate("mutate", _repairing(toolbox.repair))
    # Survivors are always the best of parents and offspring (elitism: the best genome
    # found is never lost); parents are chosen by tournaments, so better genomes breed more.
    if space.search.selection == "nsga2":
        toolbox.register("select", tools.selNSGA2)
        toolbox.register("select_parents", crowded_tournament)
    else:
        toolbox.register("select", tools.selBest)
        toolbox.register(
            "select_parents", tools.selTournament, tournsize=space.search.tournament_size
        )
    return toolbox


# Records


def _objective(individual: Any, index: int) -> float:
    return individual.fitness.values[index]


def _over_successes(reduce: Callable[[list[float]], float]) -> Callable[[list[float]], float]:
    """A statistic over the values of successful trials only; NaN when there are none."""

    def statistic(values: list[float]) -> float:
        real = [v for v in values if abs(v) < FAILED]
        return float(reduce(real)) if real else math.nan

    return statistic


def make_statistics(space: SearchSpace) -> tools.MultiStatistics:
    """Per-generation statistics: one chapter per objective metric with min, median and
    max over the successful trials. `compile(population)` gives a dict of plain floats."""
    chapters = {}
    for index, objective in enumerate(space.search.objectives):
        stats = tools.Statistics(key=functools.partial(_objective, index=index))
        for name, reduce in (("min", min), ("median", statistics.median), ("max", max)):
            stats.register(name, _over_successes(reduce))
        chapters[objective.metric] = stats
    return tools.MultiStatistics(**chapters)


def make_logbook(space: SearchSpace) -> tools.Logbook:
    """A logbook for `logbook.record(gen=..., nevals=..., **statistics.compile(population))`."""
    logbook = tools.Logbook()
    metrics = [objective.metric for objective in space.search.objectives]
    logbook.header = ["gen", "nevals", *metrics]
    for metric in metrics:
        logbook.chapters[metric].header = ["min", "median", "max"]
    return logbook


def make_elite_archive(space: SearchSpace) -> tools.ParetoFront | tools.HallOfFame:
    """The best individuals seen: the Pareto front for several objectives, else the
    `population` best."""
    if len(space.search.objectives) > 1:
        return tools.ParetoFront()
    return tools.HallOfFame(space.search.population)
