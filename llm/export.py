"""Export a model directory as a Hugging Face Llama checkpoint.

The "rope + rmsnorm + swiglu" family of our models is Llama's architecture with a few
matrices fused, so an export only renames and splits weights and writes Llama's
config.json; transformers then loads the folder as `LlamaForCausalLM`:

    config.json              LlamaConfig fields, written as plain JSON
    generation_config.json   bos/eos/pad ids
    model.safetensors        the weights under Llama's names
    tokenizer.json           a `tokenizers` pipeline giving our tokenizer's ids
    tokenizer_config.json    transformers' settings: the special tokens, no bos/eos added
    special_tokens_map.json  the special tokens by role

`AutoTokenizer` and `AutoModelForCausalLM` load the folder without this project; the
tokenizer files (llm/hf_tokenizer.py) and generation_config.json are written only when
the model has a tokenizer. Nothing here imports transformers, so exporting works where it
is not installed. A model of another family (ALiBi, LayerNorm, GELU, ...), or a tokenizer
that transformers cannot reproduce exactly, is refused with a ConfigError.
A μP model's attention-score and logit multipliers are folded into its weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from llm.atomic import atomic_dir, write_json, write_text
from llm.checkpoint import CONFIG_FILE, TOKENIZER_DIR, load_model_dir, read_model_config
from llm.config import ModelConfig
from llm.errors import CheckpointError, ConfigError, UserError
from llm.hf_tokenizer import HF_TOKENIZER_FILES, hf_tokenizer_files
from llm.model import parametrization
from llm.tokenizer import Tokenizer

HF_CONFIG_FILE = "config.json"
HF_GENERATION_FILE = "generation_config.json"
HF_WEIGHTS_FILE = "model.safetensors"
# What an export may hold, so that an earlier one is replaced: exports before the Hugging
# Face tokenizer files held a copy of our tokenizer folder instead.
EXPORT_ENTRIES = {
    HF_CONFIG_FILE,
    HF_GENERATION_FILE,
    HF_WEIGHTS_FILE,
    *HF_TOKENIZER_FILES,
    TOKENIZER_DIR,
}

# What Llama fixes that our config lets vary: field -> the only value Llama has. The rest
# maps: `bias` to Llama's attention_bias and mlp_bias (neither stack has norm or head
# biases), and dropout does nothing at inference.
LLAMA_REQUIRES = {
    "pos_encoding": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "attn_window": None,
    "attention": "mha",
}
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def export_hf(model_dir: str | Path, out: str | Path) -> Path:
    """Write the model directory `model_dir` to the folder `out` as a Llama checkpoint
    that `transformers.LlamaForCausalLM.from_pretrained(out)` loads; return `out`.

    `out` is written whole or not at all. It may be absent, empty, or an earlier export
    (which is replaced); any other existing path is refused rather than overwritten.
    """
    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    config = read_model_config(model_dir)
    check_llama_compatible(config, model_dir / CONFIG_FILE)
    check_output_folder(out)
    model, tokenizer, _ = load_model_dir(model_dir)
    # Converted first: a tokenizer that cannot be exported leaves `out` untouched.
    try:
        tokenizer_files = (
            hf_tokenizer_files(tokenizer, config.max_seq_len) if tokenizer is not None else {}
        )
    except ConfigError as err:
        raise ConfigError(f"{model_dir / TOKENIZER_DIR}: {err}") from None
    weights = llama_weights(model.state_dict(), config)
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / HF_WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / HF_CONFIG_FILE, llama_config(config, tokenizer, dtype_of(weights)))
        if tokenizer is not None:
            write_json(tmp / HF_GENERATION_FILE, special_ids(tokenizer))
        for name, text in tokenizer_files.items():
            write_text(tmp / name, text)
    return out


def check_llama_compatible(config: ModelConfig, where: Path) -> None:
    """Raise a ConfigError naming every field whose value Llama cannot express."""
    problems = [
        f"{field} is {getattr(config, field)!r} (Llama needs {needed!r})"
        for field, needed in LLAMA_REQUIRES.items()
        if getattr(config, field) != needed
    ]
    if problems:
        raise ConfigError(f"{where}: cannot export as Llama: " + "; ".join(problems))


def check_output_folder(out: Path) -> None:
    # atomic_dir replaces `out` whole; refuse anything that could be a user's own folder.
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    unexpected = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_ENTRIES)
    if unexpected:
        raise UserError(
            f"{out}: exists and is not an earlier export (it holds {', '.join(unexpected[:3])}"
            f"{', ...' if len(unexpected) > 3 else ''}); choose a new or empty folder"
        )


def llama_weights(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict under Llama's names: fused qkv and gate_up split, the rest renamed.

    Tied embeddings are stored once, as Llama's `model.embed_tokens.weight`.
    """
    q_rows = config.n_heads * config.head_dim
    kv_rows = config.kv_heads * config.head_dim
    out = {"model.embed_tokens.weight": state["embed.weight"]}
    out["model.norm.weight"] = state["final_norm.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    params = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = state[ours + "attn_norm.weight"]
        out[theirs + "post_attention_layernorm.weight"] = state[ours + "mlp_norm.weight"]
        for param in params:
            q, k, v = state[f"{ours}attn.qkv.{param}"].split([q_rows, kv_rows, kv_rows])
            gate, up = state[f"{ours}mlp.gate_up.{param}"].chunk(2)
            out[f"{theirs}self_attn.q_proj.{param}"] = q
            out[f"{theirs}self_attn.k_proj.{param}"] = k
            out[f"{theirs}self_attn.v_proj.{param}"] = v
            out[f"{theirs}self_attn.o_proj.{param}"] = state[f"{ours}attn.proj.{param}"]
            out[f"{theirs}mlp.gate_proj.{param}"] = gate
            out[f"{theirs}mlp.up_proj.{param}"] = up
            out[f"{theirs}mlp.down_proj.{param}"] = state[f"{ours}mlp.down.{param}"]
    fold_multipliers(out, config)
    # safetensors refuses tensors that share memory, as the splits of one matrix do.
    return {name: tensor.detach().clone() for name, tensor in out.items()}


def fold_multipliers(weights: dict[str, Tensor], config: ModelConfig) -> None:
    """Fold μP's multipliers into the Llama `weights`, in place: Llama scales attention
    scores by 1/sqrt(head_dim) alone, so each query projection takes the rest of μP's
    scale, and it has no logit multiplier, so the output head takes it (a tied head then
    becomes a matrix of its own). The standard parametrization has neither."""
    rules = parametrization(config)
    scale = rules.attention_scale(config.head_dim)
    if scale is not None:
        query = scale * math.sqrt(config.head_dim)
        weights.update({n: w * query for n, w in weights.items() if ".self_attn.q_proj." in n})
    if not ties_embeddings(config) and config.tie_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    if rules.readout_multiplier != 1.0:
        weights["lm_head.weight"] = weights["lm_head.weight"] * rules.readout_multiplier


def ties_embeddings(config: ModelConfig) -> bool:
    """Whether the export shares its input and output embeddings: not where a logit
    multiplier had to be folded into the head."""
    return config.tie_embeddings and parametrization(config).readout_multiplier == 1.0


def llama_config(
    config: ModelConfig, tokenizer: Tokenizer | None, dtype: str = "float32"
) -> dict[str, Any]:
    """config.json for `LlamaForCausalLM`, equivalent to `config`."""
    # Without a tokenizer the ids are unknown; null keeps Llama's defaults (1, 2) out.
    ids = special_ids(tokenizer) if tokenizer is not None else dict.fromkeys(SPECIAL_IDS)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta; both say the same.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": ties_embeddings(config),
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        # Llama drops out only attention weights; our residual dropout has no counterpart,
        # which matters only to someone training the export further.
        "attention_dropout": config.dropout,
        "initializer_range": config.init_std,
        "torch_dtype": dtype,
        "use_cache": True,
        **ids,
    }


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


def dtype_of(weights: dict[str, Tensor]) -> str:
    return str(next(iter(weights.values())).dtype).removeprefix("torch.")
