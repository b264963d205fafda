from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llm.checkpoint import load_model_dir, save_model_dir
from llm.config import ModelConfig
from llm.errors import CheckpointError, ConfigError, UserError
from llm.export import export_hf
from llm.model import NORMS, Transformer
from llm.tokenizer import ByteTokenizer

# GQA (4 query heads over 2 key/value heads), and a norm eps and rope theta far from the
# defaults, so that a mistake in where eps goes or which theta is read shows in the logits.
CONFIG = ModelConfig(
    vocab_size=259,
    n_layers=2,
    d_model=32,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_seq_len=32,
    norm_eps=0.1,
    rope_theta=500.0,
)


def save_random_model(path: Path, config: ModelConfig = CONFIG, *, tokenizer: bool = True) -> Path:
    """A model directory whose every weight, the norms' included, is random and far from
    its initial value."""
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    save_model_dir(path, model, ByteTokenizer() if tokenizer else None)
    return path


@pytest.mark.parametrize(
    "changes",
    [{"tie_embeddings": True}, {"tie_embeddings": False}, {"bias": True, "n_kv_heads": 1}],
    ids=["tied", "untied", "bias-mqa"],
)
def test_transformers_llama_gives_the_same_logits(tmp_path: Path, changes: dict) -> None:
    transformers = pytest.importorskip("transformers")
    source = save_random_model(tmp_path / "model", dataclasses.replace(CONFIG, **changes))
    out = export_hf(source, tmp_path / "hf")
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mis-shaped weights
    ours, _, _ = load_model_dir(source)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.max_seq_len))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), atol=1e-4, rtol=0)


def test_rms_norm_matches_llamas() -> None:
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    config = dataclasses.replace(CONFIG, d_model=16, norm_eps=0.5)
    ours = NORMS[config.norm](config)
    theirs = llama.LlamaRMSNorm(16, eps=0.5)
    weight = torch.randn(16)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    x = torch.randn(3, 5, 16) * 0.3  # small activations: where eps goes matters
    torch.testing.assert_close(ours(x), theirs(x))


def test_export_writes_config_weights_and_tokenizer(tmp_path: Path) -> None:
    out = export_hf(save_random_model(tmp_path / "model"), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] == 2
    assert config["head_dim"] == 8
    assert config["rms_norm_eps"] == 0.1
    assert config["rope_parameters"]["rope_theta"] == 500.0
    assert config["tie_word_embeddings"] is True
    tokenizer = ByteTokenizer()
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tokenizer.bos_id,
        tokenizer.eos_id,
        tokenizer.pad_id,
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_id
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        k_proj = f.get_tensor("model.layers.1.self_attn.k_proj.weight")
    assert "lm_head.weight" not in names  # tied: stored once, as the embedding
    assert k_proj.shape == (2 * 8, 32)
    ours, _, _ = load_model_dir(tmp_path / "model")
    assert torch.equal(k_proj, ours.blocks[1].attn.qkv.weight[32:48])


def test_export_without_tokenizer_leaves_special_ids_unset(tmp_path: Path) -> None:
    out = export_hf(save_random_model(tmp_path / "model", tokenizer=False), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None
    assert not (out / "generation_config.json").exists()
    assert not (out / "tokenizer").exists()


@pytest.mark.parametrize(
    ("field", "value", "needed"),
    [
        ("pos_encoding", "alibi", "rope"),
        ("pos_encoding", "learned", "rope"),
        ("norm", "layernorm", "rmsnorm"),
        ("mlp", "gelu", "swiglu"),
    ],
)
def test_refuses_what_llama_cannot_express(
    tmp_path: Path, field: str, value: str, needed: str
) -> None:
    source = save_random_model(tmp_path / "model", dataclasses.replace(CONFIG, **{field: value}))
    expected = re.escape(f"{field} is '{value}' (Llama needs '{needed}')")
    with pytest.raises(ConfigError, match=expected):
        export_hf(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_refusal_names_every_mismatch(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, norm="layernorm", mlp="gelu")
    with pytest.raises(ConfigError, match=r"norm is 'layernorm'.*mlp is 'gelu'"):
        export_hf(save_random_model(tmp_path / "model", config), tmp_path / "hf")


def test_missing_model_dir_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model directory"):
        export_hf(tmp_path / "absent", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"model\.json: missing"):
        export_hf(tmp_path / "empty", tmp_path / "hf")


def test_corrupt_weights_are_a_checkpoint_error(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    (source / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        export_hf(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_corrupt_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    (source / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        export_hf(source, tmp_path / "hf")


def test_replaces_an_earlier_export_but_not_other_folders(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    out = tmp_path / "hf"
    export_hf(source, out)
    (out / "config.json").write_text("{}")
    export_hf(source, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier export"):
        export_hf(source, keep)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not an earlier export"):
        export_hf(source, source)  # the model directory itself
