"""Model directories and training checkpoints.

A model directory is what training produces and what evaluation, generation and the
search's promotion exchange:

    model.json          the ModelConfig, as JSON
    model.safetensors   the weights (tied weights stored once)
    tokenizer/          the tokenizer, when there is one

A training run's output folder is itself a model directory, with the run's other files
beside it (`run.json`, `metrics.json`, `log.jsonl`, `checkpoints/`). So that those are
never clobbered, each model file is replaced atomically on its own, and `model.json`
is written last: it is what makes a folder a model directory.

A training checkpoint is a folder `checkpoints/step_00000100/` written whole with
`atomic_dir`: a model directory (no tokenizer) plus `state.pt` (optimizer, counters,
random number generator states; tensors and plain values only, loaded with
`weights_only=True`) and `checkpoint.json` (step, tokens and validation loss, which
the retention policy reads without loading anything heavy). `load_model_dir` reads a
checkpoint folder too.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from llm.atomic import (
    atomic_dir,
    atomic_path,
    make_folder,
    read_json_object,
    remove_temporaries,
    write_json,
)
from llm.config import ModelConfig, from_dict
from llm.errors import CheckpointError, ConfigError, UserError
from llm.model import Transformer
from llm.tokenizer import Tokenizer, load_tokenizer

CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
STATE_FILE = "state.pt"
SUMMARY_FILE = "checkpoint.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, SUMMARY_FILE)
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")
# What torch.load(weights_only=True) says when a file holds an object other than tensors
# and plain values: "Unsupported global: GLOBAL datetime.datetime ..." and the like.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue
    exactly where it stopped."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0  # wall-clock seconds of training so far, over all sessions
    best_val_loss: float | None = None
    # Budget progress when warmup ended: the cosine decays from there (None: not yet).
    warmup_end_progress: float | None = None
    cpu_rng: Tensor | None = None  # torch's global generator (dropout on CPU)
    cuda_rng: list[Tensor] = field(default_factory=list)  # one per CUDA device
    data_rng: Tensor | None = None  # the generator that draws training windows
    curve: list[dict[str, Any]] = field(default_factory=list)


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    tokenizer: Tokenizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model` (a Transformer) and `tokenizer` as a model directory, plus each
    `extra` item as a JSON file: {"metrics.json": {...}} writes `metrics.json`."""
    directory = make_folder(directory)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_model(model, str(tmp))
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER_DIR)
    for name, obj in (extra or {}).items():
        write_json(directory / name, obj)
    write_json(directory / CONFIG_FILE, dataclasses.asdict(model.config))


def load_model_dir(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[Transformer, Tokenizer | None, ModelConfig]:
    """Read a model directory (or a checkpoint folder); the model comes in eval mode."""
    config, tokenizer = read_model_dir(directory)
    return ModelFolder(Path(directory), config, device).load(), tokenizer, config


@dataclass(frozen=True)
class ModelFolder:
    """A model directory whose weights are not loaded yet: its config, and where `load`
    puts them (so that another process, such as `llm serve`'s engine, loads its own)."""

    path: Path
    config: ModelConfig
    device: torch.device | str = "cpu"

    def load(self) -> Transformer:
        """The model, in eval mode (its config and tokenizer are not read again)."""
        model = Transformer(self.config)
        load_weights(model, self.path / WEIGHTS_FILE)
        return model.to(self.device).eval()


def read_model_dir(directory: str | Path) -> tuple[ModelConfig, Tokenizer | None]:
    """A model directory's config and tokenizer, without its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    config = read_model_config(directory)
    tokenizer_dir = directory / TOKENIZER_DIR
    return config, load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None


def read_model_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    data = read_json_object(path, CheckpointError, f"{path}: missing (not a model directory)")
    try:
        config = from_dict(ModelConfig, data, str(path))
    except UserError as err:  # its message already names the file
        raise CheckpointError(str(err)) from None
    problems = config.problems()
    if problems:
        raise CheckpointError(f"{path}: invalid model config: " + "; ".join(problems))
    return config


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, which must match them key for key and
    shape for shape."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        load_model(model, str(path), strict=True)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt or truncated: {err}") from None
    except RuntimeError as err:
        # load_state_dict lists every missing, unexpected or mis-shaped tensor.
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{path}: does not fit the model config: {detail}") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err}") from None


def save_checkpoint(
    out_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
    keep: int = 2,
) -> Path:
    """Write `out_dir/checkpoints/step_{state.step}/` whole, then delete all checkpoints
    but the last `keep` and the best by validation loss.

    `val_loss` is the validation loss of exactly these weights, when they were evaluated
    at this step; only such checkpoints compete for best.
    """
    path = Path(out_dir) / CHECKPOINTS_DIR / f"step_{state.step:08d}"
    save_training_state(
        path, model=model, optimizer=optimizer, state=state, scaler=scaler, val_loss=val_loss
    )
    prune_checkpoints(out_dir, keep)
    return path


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
) -> None:
    """Write one checkpoint folder at `path`, whole or not at all (see `load_checkpoint`)."""
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE))
        write_json(tmp / CONFIG_FILE, dataclasses.asdict(model.config))
        payload = dataclasses.asdict(state)
        payload["optimizer"] = optimizer.state_dict()
        payload["scaler"] = scaler.state_dict() if scaler is not None else None
        torch.save(payload, tmp / STATE_FILE)
        summary = {"step": state.step, "tokens": state.tokens, "val_loss": val_loss}
        write_json(tmp / SUMMARY_FILE, summary)


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Restore weights, optimizer and scaler in place from a checkpoint folder and return
    its TrainState. The weights must come from a model of the same config."""
    path = Path(path)
    saved = read_model_config(path)
    if saved != model.config:
        raise CheckpointError(
            f"{path / CONFIG_FILE}: the checkpoint is of a different model than the one "
            "being trained"
        )
    load_weights(model, path / WEIGHTS_FILE)
    state_path = path / STATE_FILE
    try:
        payload = load_state_file(state_path)
        optimizer.load_state_dict(payload.pop("optimizer"))
        scaler_state = payload.pop("scaler")
        if scaler is not None and scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        return TrainState(**payload)
    except CheckpointError:
        raise
    except Exception as err:
        # load_state_dict and TrainState raise many types for a state of another shape;
        # the message is what helps.
        raise CheckpointError(f"{state_path}: corrupt or incompatible: {first_line(err)}") from None


def load_state_file(path: Path) -> dict[str, Any]:
    """The payload `save_training_state` wrote to `path`, unpickling nothing but tensors
    and plain values."""
    try:
        # torch warns about pickle protocols and advises weights_only=False, advice a
        # file from elsewhere must never get: its errors are reported below instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise CheckpointError(
                f"{path}: not a plain tensor/state file: it holds a {refused.group(1)} "
                "(refusing to unpickle arbitrary objects)"
            ) from None
        raise CheckpointError(f"{path}: corrupt: not a file torch.save wrote") from None
    except Exception as err:
        # torch.load raises many types for a damaged file; the message is what helps.
        raise CheckpointError(f"{path}: corrupt or incompatible: {first_line(err)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path}: expected the training state, found {type(payload).__name__}"
        )
    return payload


def first_line(err: BaseException) -> str:
    return str(err).strip().partition("\n")[0] or type(err).__name__


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first. Temporary folders of an
    interrupted save have other names and are never listed."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and all((path / name).is_file() for name in CHECKPOINT_FILES):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def remove_interrupted_saves(out_dir: str | Path) -> None:
    """Delete the temporaries that saves killed midway (kill -9) left in a run's output
    folder: checkpoint folders and model files that were never given their names. Only
    one run writes to an output folder, so none of them is in use."""
    out_dir = Path(out_dir)
    remove_temporaries(out_dir / CHECKPOINTS_DIR, r"step_\d+")
    model_files = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR)
    remove_temporaries(out_dir, "|".join(re.escape(name) for name in model_files))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def checkpoint_val_loss(path: Path) -> float | None:
    try:
        value = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8")).get("val_loss")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    found = checkpoints(out_dir)
    kept = set(found[-keep:])
    scored = [(loss, path) for path in found if (loss := checkpoint_val_loss(path)) is not None]
    if scored:
        kept.add(min(scored)[1])
    for path in found:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A fresh run must not mix its checkpoints with another run's; a resume needs one."""
    has_checkpoint = latest_checkpoint(out_dir) is not None
    if resume and not has_checkpoint:
        raise ConfigError(f"nothing to resume in {out_dir}: it holds no checkpoint")
    if not resume and has_checkpoint:
        raise ConfigError(
            f"{out_dir} already holds checkpoints of a run: continue it with --resume, "
            "or choose another --out"
        )
