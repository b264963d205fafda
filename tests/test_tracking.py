"""`--tracker tensorboard|wandb` on `llm train` and `evo run`: the curves land where
TensorBoard reads them, or in offline W&B runs, one run per trial for a search."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import steady_space_dict, write_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from evo.cli import main as evo
from evo.storage import Storage
from llm.cli import main as llm
from llm.errors import UserError
from llm.tracking import open_tracker


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def hparams(folder: Path) -> dict[str, object]:
    """The configuration a TensorBoard run logged for its HParams tab."""
    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in logged.items()}


def write_tiny_config(workdir: Path) -> None:
    """tiny.yaml: 6 steps of a one-layer model, a log line every 2, an evaluation every 3."""
    corpus = write_corpus(workdir / "corpus")
    config = {
        "data": {"corpus": str(corpus), "tokenizer": "char", "vocab_size": 64},
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": 6, "eval_interval": 3,
                  "log_interval": 2},
    }  # fmt: skip
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))


def test_llm_train_writes_its_curves_for_tensorboard(workdir):
    write_tiny_config(workdir)
    assert llm(["train", "tiny.yaml", "--out", "model", "--tracker", "tensorboard"]) == 0
    curves = scalars(workdir / "model" / "tensorboard")
    assert [step for step, _ in curves["train/loss"]] == [2, 4, 6]
    assert [step for step, _ in curves["val/bits_per_byte"]] == [3, 6]
    assert {"train/learning_rate", "train/tokens_per_s", "val/loss"} <= set(curves)
    config = hparams(workdir / "model" / "tensorboard")
    assert config["model.d_model"] == 32 and config["train.max_steps"] == 6
    assert config["data.tokenizer"] == "char" and config["train.learning_rate"] > 0


def test_evo_run_writes_one_tensorboard_run_per_trial(workdir):
    corpus = write_corpus(workdir / "corpus")
    space = steady_space_dict(corpus, budget={"trials": 6})
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    url = f"sqlite:///{workdir / 'evo.db'}"
    args = ["run", "space.yaml", "--local", "--quiet", "--tracker", "tensorboard"]
    assert evo([*args, "--storage", url]) == 0
    trials = [t for t in Storage(url).trials("space") if t.status.is_result]
    runs = sorted((workdir / "results" / "space" / "tensorboard").iterdir())
    assert len(runs) == len(trials) == 6
    assert {run.name.rsplit("-rung-", 1)[1] for run in runs} <= {"1", "2", "3"}
    curves = scalars(runs[0])
    assert curves["train/loss"] and curves["val/bits_per_byte"]
    genomes = Storage(url).genomes("space")
    logged = [hparams(run) for run in runs]  # TensorBoard keeps numbers as floats
    for config, run in zip(logged, runs, strict=True):
        assert config["search"] == "space" and config["rung"] == int(run.name.rsplit("-")[-1])
    searched = {tuple(sorted(genomes[t.genome_id].items())) for t in trials}
    shown = {
        tuple(sorted((k.removeprefix("genes."), v) for k, v in c.items() if k.startswith("genes.")))
        for c in logged
    }
    assert shown == searched


def test_a_missing_tensorboard_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="needs the tensorboard package"):
        open_tracker("tensorboard", tmp_path)


def wandb_runs(folder: Path) -> list[bytes]:
    """The record files of the offline W&B runs under `folder` (protobuf records: the
    names of the logged values appear in them as written)."""
    return [f.read_bytes() for f in sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))]


def test_llm_train_writes_an_offline_wandb_run(workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the tracker must stay offline regardless
    write_tiny_config(workdir)
    assert llm(["train", "tiny.yaml", "--out", "model", "--tracker", "wandb"]) == 0
    [run] = wandb_runs(workdir / "model")
    for tag in (b"train/loss", b"train/learning_rate", b"val/bits_per_byte"):
        assert tag in run
    for key in (b"model.d_model", b"train.learning_rate", b"data.corpus"):  # the run's config
        assert key in run


def test_evo_run_writes_one_offline_wandb_run_per_trial(workdir):
    corpus = write_corpus(workdir / "corpus")
    space = steady_space_dict(corpus, budget={"trials": 3})
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    url = f"sqlite:///{workdir / 'evo.db'}"
    args = ["run", "space.yaml", "--local", "--quiet", "--tracker", "wandb"]
    assert evo([*args, "--storage", url]) == 0
    runs = wandb_runs(workdir / "results" / "space")
    assert len(runs) == 3
    assert all(b"val/bits_per_byte" in run and b"-rung-1" in run for run in runs)
    assert all(b"genes.n_layers" in run and b"genes.learning_rate" in run for run in runs)


def test_a_missing_wandb_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="needs the wandb package"):
        open_tracker("wandb", tmp_path)
