"""`evo promote` scaled: a genome trained wider (heads at its head size, d_ff by its
multiplier, μP by default with the searched width as the base) or deeper, or longer with
its learning rate lowered for the longer run (`--lr-horizon`), the record of where the
promoted model came from, and refused commands that record nothing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import space_dict, write_corpus

from evo.cli import main as evo
from evo.promote import PROVENANCE, PROVENANCE_FILE
from evo.space import load_space
from evo.storage import Storage
from llm.checkpoint import read_model_config
from llm.config import ModelConfig
from llm.errors import ConfigError
from llm.run import RUN_FILE

TINY = ModelConfig(vocab_size=64, n_layers=4, d_model=128, n_heads=4, d_ff=344)


def test_widening_keeps_the_head_size_and_the_mlp_multiplier() -> None:
    wide = TINY.widened(512)
    assert (wide.d_model, wide.n_heads, wide.head_dim) == (512, 16, 32)
    assert wide.d_ff == 1376  # 344 / 128 × 512
    assert wide.n_layers == 4 and wide.vocab_size == 64 and wide.n_kv_heads is None
    assert TINY.widened(512, d_ff_mult=3).d_ff == 1536  # the genome's gene, when it has one
    gqa = dataclasses.replace(TINY, n_heads=8, n_kv_heads=2).widened(256)
    assert (gqa.n_heads, gqa.n_kv_heads) == (16, 4)  # 4 query heads per key/value head


def test_widening_is_mup_with_the_searched_width_as_base_unless_asked_otherwise() -> None:
    wide = TINY.widened(512)
    assert (wide.parametrization, wide.mup_base_width, wide.mup_base_head_dim) == ("mup", 128, None)
    standard = TINY.widened(512, parametrization="standard")
    assert standard.parametrization == "standard" and standard.mup_base_width is None
    assert TINY.widened(128) == TINY  # the same width: the genome's own model
    # A genome searched under μP keeps the base its rate was tuned at.
    searched = dataclasses.replace(TINY, parametrization="mup", mup_base_width=64)
    assert searched.widened(512).mup_base_width == 64


@pytest.mark.parametrize(
    "model",
    [
        TINY,
        dataclasses.replace(TINY, n_heads=8, n_kv_heads=2),
        dataclasses.replace(TINY, d_model=96, n_heads=6, d_ff=288),
        dataclasses.replace(TINY, d_model=64, n_heads=1, d_ff=128),
    ],
    ids=["tiny", "gqa", "width-96", "one-head"],
)
def test_the_widened_models_mup_base_is_the_model_searched(model: ModelConfig) -> None:
    """So μP's multipliers are relative to the very model the genome was searched as."""
    for width in (2 * model.d_model, 4 * model.d_model):
        base = model.widened(width).validate().mup_base()
        assert dataclasses.replace(base, mup_base_width=None) == model  # the key is unused


@pytest.mark.parametrize(
    ("model", "width", "message"),
    [
        (TINY, 500, "the head size 32 (d_model 128 / n_heads 4) must divide it"),
        (TINY, 0, "cannot widen to d_model 0"),
        (
            dataclasses.replace(TINY, n_heads=8, n_kv_heads=2),
            176,
            "its 11 heads cannot be grouped 4 per key/value head",
        ),
    ],
    ids=["head-size", "zero", "kv-groups"],
)
def test_a_width_the_heads_cannot_take_is_refused(
    model: ModelConfig, width: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        model.widened(width)


@pytest.fixture
def searched(workdir: Path) -> str:
    """A finished tiny search (widths 16 and 32) in workdir/evo.db; its URL."""
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(space_dict(corpus)), encoding="utf-8")
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    return url


def promote(url: str, *args: str) -> int:
    steps = [] if "--steps" in args else ["--steps", "3"]
    return evo(["promote", "space", *steps, *args, "--storage", url])


def test_a_genome_promoted_wider_records_where_it_came_from(searched, workdir, capsys):
    storage = Storage(searched)
    assert promote(searched, "--width", "64", "--layers", "3", "--out", "wide") == 0
    err = capsys.readouterr().err
    [promotion] = storage.promotions("space")
    genes = storage.genomes("space")[promotion.genome_id]
    head = genes["d_model"] // genes["n_heads"]
    assert f"promoting genome {promotion.genome_id}" in err
    assert f"to d_model 64, 3 layers, {64 // head} heads" in err

    model = read_model_config(workdir / "wide")
    assert (model.d_model, model.n_heads, model.n_layers) == (64, 64 // head, 3)
    assert model.d_ff == 32 * 64 // genes["d_model"]  # the space fixes d_ff 32: its ratio
    assert (model.parametrization, model.mup_base_width) == ("mup", genes["d_model"])

    provenance = json.loads((workdir / "wide" / PROVENANCE_FILE).read_text())
    assert provenance["run"] == "space" and provenance["genome_id"] == promotion.genome_id
    assert provenance["genes"] == genes and provenance["budget"] == {"max_steps": 3}
    assert provenance["searched"]["d_model"] == genes["d_model"]
    assert provenance["searched"]["parametrization"] == "standard"
    assert provenance["promoted"] == {
        "d_model": 64,
        "n_layers": 3,
        "n_heads": 64 // head,
        "n_kv_heads": None,
        "d_ff": model.d_ff,
        "parametrization": "mup",
        "mup_base_width": genes["d_model"],
        "mup_base_head_dim": None,
    }
    assert promotion.status == "finished" and promotion.metrics[PROVENANCE] == provenance
    assert promotion.metrics["steps"] == 3 and promotion.metrics["bits_per_byte"] > 0

    assert promote(searched, "--width", "64", "--parametrization", "standard", "--out", "std") == 0
    standard = read_model_config(workdir / "std")
    assert (standard.d_model, standard.parametrization) == (64, "standard")


def test_under_mup_at_the_searched_width_the_promotion_is_the_plain_one(searched, capsys):
    assert promote(searched, "--out", "plain") == 0
    assert promote(searched, "--parametrization", "mup", "--out", "mup") == 0
    plain, mup = Storage(searched).promotions("space")
    assert mup.metrics[PROVENANCE]["promoted"]["parametrization"] == "mup"
    assert mup.metrics["bits_per_byte"] == plain.metrics["bits_per_byte"]
    assert mup.metrics["val_loss"] == plain.metrics["val_loss"]


def test_a_refused_promotion_records_nothing(searched, workdir, capsys):
    storage = Storage(searched)
    assert promote(searched, "--out", "best") == 0
    before = storage.promotions("space")
    genes = storage.genomes("space")[before[0].genome_id]
    head = genes["d_model"] // genes["n_heads"]
    # Issue 25, item 9: resuming with another config was refused only after a failed
    # promotion was recorded. "best" trained for 3 steps; 4 is another run.
    resume = ["promote", "space", "--steps", "4", "--resume", "--out", "best"]
    assert evo([*resume, "--storage", searched]) == 2
    assert "had a different config (changed: " in capsys.readouterr().err
    for args, message in (
        (["--width", str(head + 2), "--out", "odd"], f"the head size {head}"),
        (["--width", "0", "--out", "zero"], "--width must be at least 1"),
        (["--layers", "-1", "--out", "flat"], "--layers must be at least 1"),
    ):
        assert promote(searched, *args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert storage.promotions("space") == before
    assert not any((workdir / name).exists() for name in ("odd", "zero", "flat"))


def test_a_longer_run_lowers_the_genomes_rate_by_the_horizon_rule(searched, workdir, capsys):
    storage = Storage(searched)
    space = load_space(workdir / "space.yaml")
    assert promote(searched, "--steps", "12", "--lr-horizon", "0.5", "--out", "long") == 0
    [promotion] = storage.promotions("space")
    genes = storage.genomes("space")[promotion.genome_id]
    train = space.train_config(genes)
    top = max(t.rung for t in storage.trials("space") if t.genome_id == promotion.genome_id)
    (scored,) = space.rung_budgets()[top].items()  # the budget its rate was judged at
    assert scored[0] == "max_steps"
    factor = (12 / scored[1]) ** -0.5  # steps over steps: tokens per step cancel
    config = json.loads((workdir / "long" / RUN_FILE).read_text())
    assert config["train"]["learning_rate"] == pytest.approx(genes["learning_rate"] * factor)
    rate = json.loads((workdir / "long" / PROVENANCE_FILE).read_text())["learning_rate"]
    assert rate["searched"] == genes["learning_rate"] and rate["factor"] == pytest.approx(factor)
    assert rate["scored_tokens"] == scored[1] * train.tokens_per_step
    assert rate["tokens"] == 12 * train.tokens_per_step and rate["horizon_exponent"] == 0.5
    assert f"× {factor:.3g}, for {12 * train.tokens_per_step:,} tokens" in capsys.readouterr().err

    assert promote(searched, "--steps", "12", "--out", "plain") == 0
    plain = json.loads((workdir / "plain" / RUN_FILE).read_text())
    assert plain["train"]["learning_rate"] == genes["learning_rate"]
    assert promote(searched, "--steps", "12", "--lr-horizon", "0.25") == 0  # its own folder
    folder = (
        workdir / "results" / "space" / f"promoted-genome-{promotion.genome_id}-lr-horizon-0.25"
    )
    quarter = json.loads((folder / RUN_FILE).read_text())["train"]["learning_rate"]
    assert quarter == pytest.approx(genes["learning_rate"] * (12 / scored[1]) ** -0.25)
    for args, message in (
        (["--lr-horizon", "1.5"], "--lr-horizon must be between 0 and 1 (got 1.5)"),
        (["--lr-horizon", "nan"], "--lr-horizon must be between 0 and 1"),
    ):
        assert promote(searched, *args, "--out", "refused") == 2
        assert message in capsys.readouterr().err
    seconds = ["promote", "space", "--seconds", "5", "--lr-horizon", "0.3", "--out", "refused"]
    assert evo([*seconds, "--storage", searched]) == 2
    assert "--lr-horizon needs a budget in steps or tokens, not 5 s" in capsys.readouterr().err
    assert len(storage.promotions("space")) == 3 and not (workdir / "refused").exists()
