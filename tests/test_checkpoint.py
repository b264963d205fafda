from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import stat
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llm.checkpoint import (
    TrainState,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_model_dir,
    save_checkpoint,
    save_model_dir,
)
from llm.config import ModelConfig
from llm.errors import CheckpointError
from llm.model import Transformer
from llm.tokenizer import ByteTokenizer

CONFIG = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=32)


def tiny_model(seed: int = 0, config: ModelConfig = CONFIG) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config)


def optimizer_for(model: Transformer) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def trained_optimizer(model: Transformer) -> torch.optim.AdamW:
    optimizer = optimizer_for(model)
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    optimizer.step()
    return optimizer


def test_model_dir_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    (tmp_path / "log.jsonl").write_text("kept\n")
    save_model_dir(tmp_path, model, ByteTokenizer(), extra={"metrics.json": {"val_loss": 1.5}})
    loaded, tokenizer, config = load_model_dir(tmp_path)
    assert config == CONFIG
    assert isinstance(tokenizer, ByteTokenizer)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"val_loss": 1.5}
    assert (tmp_path / "log.jsonl").read_text() == "kept\n"  # other files are left alone
    assert loaded.lm_head.weight is loaded.embed.weight  # still tied
    assert not loaded.training
    tokens = torch.randint(0, 64, (2, 10))
    assert torch.equal(loaded(tokens), model.eval()(tokens))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert len(names) == len(set(model.state_dict()) - {"lm_head.weight"})  # tied: stored once


def test_model_dir_without_tokenizer(tmp_path: Path) -> None:
    save_model_dir(tmp_path, tiny_model())
    _, tokenizer, _ = load_model_dir(tmp_path)
    assert tokenizer is None


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "no model.json": (lambda d: (d / "model.json").unlink(), "model.json: missing"),
    "malformed json": (lambda d: (d / "model.json").write_text("{oops"), "malformed JSON"),
    "not utf-8": (lambda d: (d / "model.json").write_bytes(b"{\xff}"), "model.json: cannot read"),
    "not an object": (
        lambda d: (d / "model.json").write_text("[1, 2]"),
        "model.json: expected a JSON object, not list",
    ),
    "unknown key": (lambda d: edit_config(d, colour="red"), "colour: unknown key"),
    "bad config": (lambda d: edit_config(d, n_heads=3), "divisible by n_heads"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
    "truncated": (lambda d: truncate(d / "model.safetensors"), "corrupt or truncated"),
    "garbage": (lambda d: (d / "model.safetensors").write_bytes(b"x" * 5), "corrupt"),
    "wrong shape": (lambda d: edit_config(d, d_model=64), "size mismatch for embed.weight"),
    "wrong depth": (lambda d: edit_config(d, n_layers=3), "Missing key"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_broken_model_dir_names_the_file_and_problem(tmp_path: Path, name: str) -> None:
    save_model_dir(tmp_path, tiny_model())
    corrupt, message = CORRUPTIONS[name]
    corrupt(tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_model_dir(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model_dir(tmp_path / "nowhere")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = trained_optimizer(model)
    generator = torch.Generator().manual_seed(5)
    state = TrainState(
        step=7,
        tokens=700,
        seconds=1.5,
        best_val_loss=2.5,
        warmup_end_progress=0.1,
        cpu_rng=torch.get_rng_state(),
        data_rng=generator.get_state(),
        curve=[{"step": 5, "tokens": 500, "seconds": 1.0, "train_loss": 3.0, "val_loss": None}],
    )
    path = save_checkpoint(tmp_path, model=model, optimizer=optimizer, state=state, val_loss=2.5)
    assert path == tmp_path / "checkpoints" / "step_00000007"
    assert latest_checkpoint(tmp_path) == path

    fresh = tiny_model(seed=1)
    fresh_optimizer = optimizer_for(fresh)
    loaded = load_checkpoint(path, model=fresh, optimizer=fresh_optimizer)
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].equal(
        optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert loaded.step == 7 and loaded.tokens == 700 and loaded.seconds == 1.5
    assert loaded.best_val_loss == 2.5 and loaded.warmup_end_progress == 0.1
    assert loaded.curve == state.curve
    assert loaded.data_rng is not None and torch.equal(loaded.data_rng, state.data_rng)
    # the checkpoint folder is a model directory as well
    assert load_model_dir(path)[2] == CONFIG


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    path = save_checkpoint(
        tmp_path, model=model, optimizer=optimizer_for(model), state=TrainState(step=1)
    )
    other = tiny_model(config=dataclasses.replace(CONFIG, d_ff=128))
    with pytest.raises(CheckpointError, match="different model"):
        load_checkpoint(path, model=other, optimizer=optimizer_for(other))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_training_state_raises(tmp_path: Path, damage: str) -> None:
    model = tiny_model()
    optimizer = trained_optimizer(model)
    path = save_checkpoint(tmp_path, model=model, optimizer=optimizer, state=TrainState(step=3))
    state_file = path / "state.pt"
    if damage == "truncate":
        truncate(state_file)
    elif damage == "garbage":
        state_file.write_bytes(b"not a torch file")
    else:
        state_file.unlink()
    with pytest.raises(CheckpointError, match=r"state\.pt"):
        load_checkpoint(path, model=model, optimizer=optimizer_for(model))


def test_a_pickled_object_in_the_state_is_refused_in_one_line(tmp_path: Path) -> None:
    model = tiny_model()
    path = save_checkpoint(
        tmp_path, model=model, optimizer=optimizer_for(model), state=TrainState(step=1)
    )
    payload = torch.load(path / "state.pt", weights_only=True)
    torch.save({**payload, "when": datetime.datetime(2024, 1, 1)}, path / "state.pt")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(CheckpointError) as refused:
        warnings.simplefilter("always")
        load_checkpoint(path, model=model, optimizer=optimizer_for(model))
    assert str(refused.value) == (
        f"{path / 'state.pt'}: not a plain tensor/state file: it holds a datetime.datetime "
        "(refusing to unpickle arbitrary objects)"
    )
    assert caught == []  # nor torch's advice to load it with weights_only=False


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    # safetensors writes a private temporary file of its own and renames it into place.
    model = tiny_model()
    save_model_dir(tmp_path / "model", model, ByteTokenizer())
    checkpoint = save_checkpoint(
        tmp_path / "run", model=model, optimizer=optimizer_for(model), state=TrainState(step=1)
    )
    files = [*(tmp_path / "model").rglob("*"), checkpoint, *checkpoint.iterdir()]
    assert {tmp_path / "model" / "model.safetensors", checkpoint / "model.safetensors"} <= set(
        files
    )
    for path in files:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask()
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_retention_keeps_the_last_and_the_best(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = optimizer_for(model)
    val_losses = [5.0, 1.0, None, 3.0, 2.0, None]
    for step, val_loss in enumerate(val_losses, start=1):
        save_checkpoint(
            tmp_path,
            model=model,
            optimizer=optimizer,
            state=TrainState(step=step),
            val_loss=val_loss,
            keep=2,
        )
    assert [p.name for p in checkpoints(tmp_path)] == [
        "step_00000002",
        "step_00000005",
        "step_00000006",
    ]


def test_latest_checkpoint_ignores_temporary_and_incomplete_folders(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    model = tiny_model()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer_for(model), state=TrainState(step=4))
    root = tmp_path / "checkpoints"
    (root / ".step_00000009.abc.tmp").mkdir()  # an interrupted save
    incomplete = root / "step_00000008"
    incomplete.mkdir()
    (incomplete / "model.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "step_00000004"
