"""Search space files: loading, every kind of error, overrides, and genome -> configs."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from evo.search.trials import make_job
from evo.space import SearchSpace, load_space, space_from_dict
from llm.config import load_run_config
from llm.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "search_spaces"

BASE: dict[str, Any] = {
    "genes": {
        "n_layers": {"int": [1, 3]},
        "n_heads": {"choice": [1, 2, 4]},
        "d_model": {"choice": [32, 64]},
        "pos_encoding": {"choice": ["rope", "alibi"]},
        "learning_rate": {"float": ["1e-4", "1e-2"], "log": True},
    },
    "data": {"vocab_size": 256},
    "trial": {"max_steps": 10},
    "search": {"budget": {"trials": 20}},
}


def make_space(**changes: Any) -> SearchSpace:
    """BASE with `changes` to its sections; a `search` change is merged into BASE's."""
    data = copy.deepcopy(BASE)
    search = {**data["search"], **changes.pop("search", {})}
    data.update(copy.deepcopy(changes), search=search)
    return space_from_dict(data)


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_shipped_spaces_load_and_round_trip(name: str) -> None:
    space = load_space(SHIPPED / f"{name}.yaml")
    assert space.gene_names[:2] == ["n_layers", "n_heads" if name == "tiny" else "d_model"]
    assert space_from_dict(yaml.safe_load(space.canonical_yaml())) == space
    assert space.search.mode == "steady_state" and len(space.rung_budgets()) > 1
    # tiny looks for quality alone, small trades it against training speed.
    assert space.objective_weights() == ((-1.0,) if name == "tiny" else (-1.0, 1.0))


def test_tiny_is_the_documented_default() -> None:
    space = load_space(SHIPPED / "tiny.yaml")
    assert space.data.corpus == "builtin:python-code" and space.data.adapt is None
    assert space.genes["pos_encoding"].values() == [
        "learned",
        "sinusoidal",
        "rope",
        "alibi",
        "none",
    ]
    assert space.search.target is not None and space.search.target.budget() == {
        "max_tokens": 2_000_000
    }
    rungs = (222_000, 666_000, 2_000_000)
    assert space.rung_budgets() == [{"max_tokens": t} for t in rungs]  # the top is the target
    assert space.trial.resources.cpus == 1 and space.search.budget.limits() == {"tokens": 15e6}
    # The schedule and the optimizer are searched too, not only the shape and the rate.
    assert {"warmup_steps", "decay_fraction", "weight_decay", "beta2"} <= set(space.genes)
    assert "warmup_steps" not in space.fixed.train


def test_tiny_starts_from_the_hand_picked_config() -> None:
    (start,) = load_space(SHIPPED / "tiny.yaml").search.initial
    config = load_run_config(SHIPPED.parent / "configs" / "tiny.yaml")
    settings = {**dataclasses.asdict(config.model), **dataclasses.asdict(config.train)}
    assert {k: v for k, v in start.items() if k != "d_ff_mult"} == {
        k: settings[k] for k in start if k != "d_ff_mult"
    }
    assert round(config.model.d_ff / config.model.d_model) == start["d_ff_mult"]


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


ERRORS = [
    ({"genes.n_wizards": {"int": [1, 2]}}, "genes.n_wizards", "unknown gene"),
    ({"genes.vocab_size": {"int": [256, 512]}}, "genes.vocab_size", "data.vocab_size"),
    ({"genes.n_layers": [1, 3]}, "genes.n_layers", "expected one of {int"),
    ({"genes.n_layers": {"int": [1, 3], "log": True}}, "genes.n_layers.log", "float"),
    ({"genes.n_layers": {"float": [1, 3]}}, "genes.n_layers.float", "no fractional"),
    ({"genes.n_heads": {"int": [1, "four"]}}, "genes.n_heads.int[1]", "valid integer"),
    ({"genes.tie_embeddings": {"int": [0, 1]}}, "genes.tie_embeddings.int[0]", "boolean"),
    (
        {"genes.pos_encoding": {"choice": ["rope", "rotary"]}},
        "genes.pos_encoding.choice[1]",
        "'rotary' is not a valid pos_encoding",
    ),
    ({"genes.n_heads": {"choice": [1, 2.5]}}, "genes.n_heads.choice[1]", "integer"),
    ({"genes.n_heads": {"choice": [2, 2]}}, "genes.n_heads.choice[1]", "listed twice"),
    ({"genes.n_layers": {"int": [4, 1]}}, "genes.n_layers.int", "low (4) is above high (1)"),
    (
        {"genes.learning_rate": {"float": [0, 0.1], "log": True}},
        "genes.learning_rate.float",
        "low > 0",
    ),
    (
        {"genes.d_ff_mult": {"choice": [2, 4]}, "genes.d_ff": {"choice": [64, 128]}},
        "genes.d_ff_mult",
        "d_ff or d_ff_mult, not both",
    ),
    (
        {"genes.d_ff_mult": {"choice": [2, 4]}, "fixed.model.d_ff": 128},
        "genes.d_ff_mult",
        "d_ff or d_ff_mult, not both",
    ),
    ({"genes.lora_rank": {"choice": [0, 8]}}, "genes.lora_rank", "data.adapt"),
    ({"fixed.model.n_heads": 4}, "fixed.model.n_heads", "also a gene"),
    ({"fixed.model.widht": 4}, "fixed.model.widht", "unknown setting"),
    ({"fixed.model.vocab_size": 512}, "fixed.model.vocab_size", "data.vocab_size"),
    ({"fixed.train.max_steps": 5}, "fixed.train.max_steps", "budgets are set by search.target"),
    ({"fixed.train.batch_size": "many"}, "fixed.train.batch_size", "valid integer"),
    (
        {"search.objectives": ["bits_per_byte", "speed"]},
        "search.objectives[1].metric",
        "unknown metric 'speed'",
    ),
    ({"search.objectives": ["params", "params"]}, "search.objectives[1]", "listed twice"),
    (
        {"search.objectives": ["bits_per_byte", "params"], "search.selection": "tournament"},
        "search.selection",
        "single objective",
    ),
    ({"search.population": 1}, "search.population", "greater than or equal to 2"),
    ({"search.mutation_prob": 1.5}, "search.mutation_prob", "less than or equal to 1"),
    ({"trial": {"resources": {"cpus": 1}}}, "trial", "set a budget"),
    ({"trial.resources.gpus": 1.5}, "trial.resources.gpus", "whole number"),
    ({"data.adapt": {"corpus": "c.txt"}}, "data.adapt", "set a budget"),
    ({"constraints.min_params": 10}, "constraints.min_params", "unknown key"),
    ({"extra": 1}, "extra", "unknown key"),
    ({"search.generations": 3}, "search.generations", "mode: generational"),
    ({"search.budget": {}}, "search.budget", "what the search may spend"),
    ({"search.rungs": [3, 9]}, "search.target", "rungs need a target"),
    ({"search.mode": "generational", "search.rungs": [3, 9]}, "search.rungs", "steady_state"),
    (
        {"search.target": {"max_steps": 30}, "search.rungs": [9, 3, 27]},
        "search.rungs[1]",
        "must increase",
    ),
    (
        {"search.target": {"max_steps": 20}, "search.rungs": [9, 27]},
        "search.rungs[1]",
        "above the target",
    ),
    ({"search.target": {"max_steps": 9, "max_tokens": 9}}, "search.target", "not several"),
    (
        {"search.target": {"max_steps": 90}, "search.min_budget": 100},
        "search.min_budget",
        "above the top rung",
    ),
    ({"search.max_budget": 90}, "search.max_budget", "needs min_budget"),
    ({"search.initial": [{"n_layers": 2}, {"depth": 2}]}, "search.initial[1].depth", "not a gene"),
    ({"search.initial": [{"n_layers": 9}]}, "search.initial[0].n_layers", "outside the domain"),
    ({"search.initial": [{"n_heads": "two"}]}, "search.initial[0].n_heads", "valid integer"),
    (
        {"search.target": {"max_steps": 90}, "search.rungs": [10, 90]},
        "trial.max_steps",
        "set each trial's budget",
    ),
]


RUNGS = {"trial": {"resources": {"cpus": 1}}, "search.target": {"max_steps": 90}}
RUNG_ERRORS = [
    (
        {"search.rungs": [10, 90], "fixed.train.schedule": "cosine"},
        "fixed.train.schedule",
        "needs schedule: wsd",
    ),
    (
        {"search.rungs": [10, 90], "fixed.train.warmup_steps": 8},
        "search.rungs",
        "before warmup (8 steps) ends",
    ),
    ({"search.rungs": [10, 90], "genes.schedule": {"choice": ["wsd"]}}, "genes.schedule", "vary"),
    (
        {
            "search.target": {"max_tokens": 90 * 2048},
            "search.rungs": [10 * 2048, 90 * 2048],
            "fixed.train": {"batch_size": 16, "seq_len": 128, "warmup_steps": 8},
        },
        "search.rungs",
        "the lowest rung (10 steps)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "where", "phrase"),
    ERRORS + [({**RUNGS, **changes}, where, phrase) for changes, where, phrase in RUNG_ERRORS],
)
def test_errors_name_the_file_and_key_path(
    tmp_path: Path, changes: dict[str, Any], where: str, phrase: str
) -> None:
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        set_path(data, path, value)
    file = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_space(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {where}: "), message
    assert phrase in message and "\n" not in message


def test_a_trial_budget_or_a_target_is_required(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["trial"]
    with pytest.raises(ConfigError, match=r"space\.yaml: trial: set a budget"):
        load_space(write(tmp_path, data))
    data["search"]["target"] = {"max_tokens": 5000}
    space = load_space(write(tmp_path, data))
    assert space.rung_budgets() == [{"max_tokens": 5000}]


def test_rungs_are_explicit_or_geometric_up_to_the_target() -> None:
    trial = {"resources": {"cpus": 1}}
    explicit = make_space(
        trial=trial,
        fixed={"train": {"warmup_steps": 2}},
        search={"target": {"max_steps": 90}, "rungs": [10, 30, 90]},
    )
    assert explicit.rung_budgets() == [{"max_steps": 10}, {"max_steps": 30}, {"max_steps": 90}]
    geometric = make_space(trial=trial, search={"target": {"max_steps": 2000}, "min_budget": 25})
    assert geometric.rung_budgets()[-1] == {"max_steps": 2000}
    # As many rungs as fit above min_budget, each a third of the next.
    assert [r["max_steps"] for r in geometric.rung_budgets()] == [74, 222, 667, 2000]
    fraction = {"target": {"max_steps": 2000}, "min_budget": 25, "max_budget": 700}
    part = make_space(trial=trial, search=fraction)
    assert [r["max_steps"] for r in part.rung_budgets()] == [26, 78, 233, 700]
    assert part.target_budget() == {"max_steps": 2000}
    # Several rungs continue trials, so they train with the wsd schedule; one rung need not.
    genome = part.sample(random.Random(0))
    assert part.train_config(genome, {"max_steps": 26}).schedule == "wsd"
    assert make_space().train_config(genome).schedule == "cosine"
    # The resolved rungs are not stored: the recorded space loads back to the same one.
    assert space_from_dict(yaml.safe_load(part.canonical_yaml())) == part


def test_generational_mode_keeps_its_generations() -> None:
    space = make_space(search={"mode": "generational", "budget": {}})
    assert space.search.generations == 5
    assert space.rung_budgets() == [{"max_steps": 10}]


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("genes:\n  n_layers: {int: [1, 3]}\n  n_heads: {choice: [1, 2\ntrial: {}\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: malformed YAML at line 4"):
        load_space(file)


def test_a_gene_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    file = write(tmp_path, BASE)
    text = file.read_text().replace("genes:\n", "genes:\n  n_layers: {int: [1, 9]}\n", 1)
    file.write_text(text)
    with pytest.raises(
        ConfigError, match=r"space\.yaml: key 'n_layers' is given twice, at lines 2 and 3"
    ):
        load_space(file)


def test_impossible_space_is_refused_naming_the_constraint() -> None:
    genes = {"d_model": {"choice": [66]}, "n_heads": {"choice": [4]}}
    with pytest.raises(ConfigError) as caught:
        make_space(genes=genes)
    message = str(caught.value)
    assert "genes: no valid genome" in message
    assert "'d_model must be divisible by n_heads'" in message


def test_space_killed_by_max_params_is_refused() -> None:
    with pytest.raises(ConfigError, match="'params is above max_params'"):
        make_space(constraints={"max_params": 1000})


def test_large_impossible_space_is_refused_by_sampling() -> None:
    genes = {
        "d_model": {"int": [1, 1001], "step": 2},  # odd widths only
        "n_heads": {"choice": [2]},
        "n_layers": {"int": [1, 100]},
    }
    with pytest.raises(ConfigError, match=r"random genomes checked.*divisible by n_heads"):
        make_space(genes=genes)


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    file = write(tmp_path, BASE)
    space = load_space(
        file,
        ["search.population=4", "genes.n_layers.int=[2, 2]", "search.objectives=[val_loss]"],
    )
    assert space.search.population == 4
    assert space.genes["n_layers"].values() == [2]
    assert space.search.selection == "tournament"
    assert "population: 4" in space.canonical_yaml()
    with pytest.raises(ConfigError, match=r"search\.population"):
        load_space(file, ["search.population=0"])


def test_defaults_are_resolved_and_recorded() -> None:
    space = make_space(data={"adapt": {"corpus": "c.txt", "max_seconds": 5}})
    assert space.search.mutation_gene_prob == pytest.approx(1 / 5)
    assert space.search.selection == "tournament"
    assert space.search.objectives[0].metric == "bits_per_byte"
    assert space.trial.timeout_s == 600  # a step budget has no time to scale
    timed = make_space(trial={"max_seconds": 10}, data={"adapt": {"corpus": "c", "max_seconds": 5}})
    assert timed.trial.timeout_s == 3 * 15 + 60
    assert "timeout_s: 105.0" in timed.canonical_yaml()


def test_a_qlora_adapt_stage_reaches_every_trial_job() -> None:
    adapt = {"corpus": "c.txt", "max_steps": 5, "quantize": "nf4"}
    space = make_space(data={"adapt": adapt})
    assert make_job(space, 64, 1, space.sample(random.Random(0))).quantize == "nf4"
    plain = make_space(data={"adapt": {"corpus": "c.txt", "max_steps": 5}})
    assert make_job(plain, 64, 1, plain.sample(random.Random(0))).quantize is None
    with pytest.raises(ConfigError, match="quantize"):
        make_space(data={"adapt": {**adapt, "quantize": "int3"}})


def test_objective_shorthand_takes_the_natural_direction() -> None:
    space = make_space(
        search={"objectives": ["bits_per_byte", {"metric": "decode_tokens_per_s"}, "params"]}
    )
    assert [o.direction for o in space.search.objectives] == ["min", "max", "min"]
    assert space.objective_weights() == (-1.0, 1.0, -1.0)


def test_an_objective_measured_on_a_gpu_only_is_refused_for_cpu_trials() -> None:
    objectives = {"objectives": ["bits_per_byte", "peak_memory_bytes"]}
    with pytest.raises(
        ConfigError, match=r"search\.objectives\[1\]: peak_memory_bytes is measured on a GPU only"
    ):
        make_space(fixed={"train": {"device": "cpu"}}, search=objectives)
    assert len(make_space(search=objectives).search.objectives) == 2  # auto may pick a GPU


def test_genome_builds_valid_configs() -> None:
    space = make_space(
        fixed={"model": {"norm": "layernorm", "max_seq_len": 64}, "train": {"seq_len": 32}},
        trial={"max_tokens": 5000},
    )
    rng = random.Random(0)
    for _ in range(50):
        genome = space.sample(rng)
        assert list(genome) == space.gene_names
        model, train = space.model_config(genome, 300), space.train_config(genome)
        assert space.is_valid(genome, 300) == (model.problems() == [])
        assert (model.vocab_size, model.norm, model.n_heads) == (
            300,
            "layernorm",
            genome["n_heads"],
        )
        assert (train.seq_len, train.max_tokens, train.max_steps) == (32, 5000, None)
        assert train.learning_rate == genome["learning_rate"] and train.problems() == []
        assert space.adapt_train_config(genome) is None and space.lora_rank(genome) == 0


def test_d_ff_mult_scales_with_d_model() -> None:
    space = make_space(genes={**BASE["genes"], "d_ff_mult": {"choice": [2, 2.5]}})
    genome = {**space.sample(random.Random(1)), "d_model": 64, "d_ff_mult": 2.5}
    assert space.model_config(genome, 256).d_ff == 160
    assert space.model_config({**genome, "d_model": 32, "d_ff_mult": 2}, 256).d_ff == 64


def test_adapt_stage_has_its_own_budget_and_learning_rate() -> None:
    adapt = {"corpus": "other.txt", "max_steps": 7, "learning_rate": 1e-4, "batch_size": 4}
    space = make_space(
        genes={**BASE["genes"], "lora_rank": {"choice": [0, 8]}}, data={"adapt": adapt}
    )
    genome = {**space.sample(random.Random(2)), "lora_rank": 8}
    train = space.adapt_train_config(genome)
    assert train is not None
    assert (train.max_steps, train.learning_rate, train.batch_size) == (7, 1e-4, 4)
    assert space.lora_rank(genome) == 8
    plain = make_space(data={"adapt": {"corpus": "other.txt", "max_seconds": 3}})
    genome = plain.sample(random.Random(3))
    adapt_train = plain.adapt_train_config(genome)
    assert adapt_train is not None
    assert adapt_train.learning_rate == genome["learning_rate"]
    assert (adapt_train.max_seconds, adapt_train.max_steps) == (3, None)


def test_problems_report_domain_ceiling_and_head_rules() -> None:
    space = make_space(constraints={"max_params": 100_000})
    genome = {"n_layers": 3, "n_heads": 4, "d_model": 64, "pos_encoding": "rope"}
    genome["learning_rate"] = 1e-3
    assert any("is above max_params" in p for p in space.problems(genome, 256))
    assert space.violation(genome, 256)[1] > 0
    small = {**genome, "n_layers": 1, "d_model": 32}
    assert space.problems(small, 256) == [] and space.violation(small, 256) == (0, 0.0)
    assert "outside int [1, 3]" in space.problems({**small, "n_layers": 9}, 256)[0]
    assert (
        "lacks genes ['learning_rate']"
        in space.problems({k: v for k, v in small.items() if k != "learning_rate"}, 256)[0]
    )
    flops = make_space(constraints={"max_flops_per_token": 500_000})
    assert any("max_flops_per_token" in p for p in flops.problems(genome, 256))
    assert flops.problems(small, 256) == []
    odd_heads = make_space(genes={**BASE["genes"], "n_heads": {"choice": [1, 3]}})
    bad = {**small, "n_heads": 3}
    assert "divisible by n_heads" in odd_heads.problems(bad, 256)[0]
