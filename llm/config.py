"""Configs: one dataclass each for the model, the data and the training run.

A config is the single source of truth for what it describes: the model config is
saved beside every checkpoint, and named presets live as YAML files in `configs/`.
Types are checked by pydantic when a config is read from a dict; constraints that
span several fields are checked by `problems()`, which lists every violation at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from llm.errors import ConfigError

PosEncoding = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
Norm = Literal["rmsnorm", "layernorm"]
Mlp = Literal["swiglu", "gelu", "moe"]
ExpertMlp = Literal["swiglu", "gelu"]
AttentionKind = Literal["mha", "mla"]
TokenizerKind = Literal["bpe", "unigram", "wordpiece", "char", "byte"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Parametrization = Literal["standard", "mup"]
Schedule = Literal["cosine", "wsd"]

_STRICT = ConfigDict(extra="forbid")


def setting(default: Any, description: str, *, factory: bool = False) -> Any:
    """A config field and its meaning, written once: the documentation's reference is
    generated from the description (pydantic's schema carries it too). With `factory`,
    `default` is called for each new config, as dataclasses' `default_factory`."""
    metadata = {"description": description}
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


class ParamCount(NamedTuple):
    total: int
    non_embedding: int
    active: int  # the parameters one token passes through: total less the experts it skips


@dataclass(frozen=True)
class ModelConfig:
    """Shape and variant choices of a decoder-only transformer."""

    __pydantic_config__ = _STRICT

    vocab_size: int | None = setting(
        None, "Tokens in the vocabulary; set from the tokenizer when left out."
    )
    n_layers: int = setting(4, "Transformer blocks.")
    d_model: int = setting(128, "The width of the residual stream and of every embedding.")
    n_heads: int = setting(4, "Attention heads; d_model must be divisible by it.")
    n_kv_heads: int | None = setting(
        None,
        "Key/value heads, shared by groups of query heads (grouped-query attention; 1 is "
        "multi-query); n_heads must be divisible by it. null: as many as n_heads (plain "
        "multi-head attention).",
    )
    d_ff: int = setting(512, "The hidden width of each MLP (of each expert, with a mixture).")
    pos_encoding: PosEncoding = setting(
        "rope",
        "How positions are encoded: learned or sinusoidal embeddings, rotary (rope), ALiBi "
        "biases, or none.",
    )
    norm: Norm = setting("rmsnorm", "The normalization of every block and of the output.")
    mlp: Mlp = setting(
        "swiglu", "The MLP of each block: SwiGLU, GELU, or a mixture of experts (moe)."
    )
    n_experts: int = setting(
        8,
        "Mixture of experts (mlp: moe): the experts of each block, MLPs of kind mlp_expert, "
        "each d_ff wide.",
    )
    experts_per_token: int = setting(
        2, "Mixture of experts: the experts a router sends each token to."
    )
    mlp_expert: ExpertMlp = setting("swiglu", "Mixture of experts: the kind of each expert.")
    moe_aux_loss: float = setting(
        0.01,
        "Mixture of experts: the weight of the auxiliary loss that keeps the experts evenly "
        "loaded.",
    )
    moe_z_loss: float = setting(
        0.0, "Mixture of experts: the weight of the loss that keeps the router's logits small."
    )
    tie_embeddings: bool = setting(
        True, "Whether the output head shares the input embedding's matrix."
    )
    dropout: float = setting(0.0, "Dropout probability, in [0, 1).")
    bias: bool = setting(False, "Whether linear layers (and LayerNorm) have biases.")
    max_seq_len: int = setting(256, "The longest context the model takes, in tokens.")
    rope_theta: float = setting(10000.0, "The base of the rotary embedding's frequencies.")
    attn_window: int | None = setting(
        None,
        "Sliding-window attention: each query sees at most the last attn_window positions "
        "(itself included); null sees the whole context.",
    )
    attention: AttentionKind = setting(
        "mha",
        "mha: multi-head attention, grouped by n_kv_heads. mla: latent attention "
        "(DeepSeek-V2): keys and values come up from one kv_latent_dim-wide latent per "
        "token, which is all the cache keeps, beside a rotary key shared by the heads "
        "(with rope).",
    )
    kv_latent_dim: int = setting(64, "Latent attention (attention: mla): the latent's width.")
    norm_eps: float = setting(1e-5, "The epsilon of every norm.")
    init_std: float = setting(0.02, "The standard deviation of the weights' initialization.")
    gradient_checkpointing: bool = setting(
        False,
        "Recompute each block's activations in the backward pass instead of keeping them: "
        "less memory, more compute.",
    )
    parametrization: Parametrization = setting(
        "standard",
        "standard: one init scale and one learning rate for every weight. mup: the maximal "
        "update parametrization (Tensor Programs V), under which a genome's rate and init "
        "tuned at mup_base_width carry over to wider models.",
    )
    mup_base_width: int | None = setting(
        None,
        "Under mup (required there): the d_model at which the learning rate and init_std "
        "were tuned. Ignored under the standard parametrization.",
    )
    mup_base_head_dim: int | None = setting(
        None,
        "Under mup: the head size at mup_base_width; null: the same head size as now "
        "(heads were added at a fixed head size). Ignored under the standard "
        "parametrization.",
    )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def problems(self) -> list[str]:
        """Every violated constraint, as readable sentences (empty when valid)."""
        out = []
        if self.vocab_size is None or self.vocab_size < 2:
            out.append(f"vocab_size must be at least 2 (got {self.vocab_size})")
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            out.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.kv_heads < 1:
            out.append(f"n_kv_heads must be at least 1 (got {self.kv_heads})")
        elif self.n_heads % self.kv_heads:
            out.append(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.pos_encoding == "rope" and self.n_heads >= 1 and self.head_dim % 2:
            out.append(f"rope needs an even head size (d_model/n_heads = {self.head_dim})")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2:
            out.append(f"sinusoidal positions need an even d_model (got {self.d_model})")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.n_experts < 1:
            out.append(f"n_experts must be at least 1 (got {self.n_experts})")
        elif not 1 <= self.experts_per_token <= self.n_experts:
            out.append(
                f"experts_per_token must be between 1 and n_experts ({self.n_experts}) "
                f"(got {self.experts_per_token})"
            )
        if self.moe_aux_loss < 0 or self.moe_z_loss < 0:
            out.append("moe_aux_loss and moe_z_loss must not be negative")
        if self.attention == "mla" and self.kv_latent_dim < 1:
            out.append(f"kv_latent_dim must be at least 1 (got {self.kv_latent_dim})")
        if self.attn_window is not None and self.attn_window < 1:
            out.append(f"attn_window must be at least 1 (got {self.attn_window})")
        if self.rope_theta <= 0:
            out.append(f"rope_theta must be positive (got {self.rope_theta})")
        if self.init_std <= 0:
            out.append(f"init_std must be positive (got {self.init_std})")
        if self.parametrization == "mup":
            out += self._mup_problems(out)
        return out

    def _mup_problems(self, found: list[str]) -> list[str]:
        """The μP settings' problems, and the base model's that `found` (this model's own)
        does not already name."""
        base, head = self.mup_base_width, self.mup_base_head_dim
        if base is None:
            return [
                "parametrization mup needs mup_base_width (the d_model the genome was tuned at)"
            ]
        if base < 1 or (head is not None and head < 1):
            return [f"mup_base_width and mup_base_head_dim must be at least 1 (got {base}, {head})"]
        if self.n_heads < 1 or self.d_model % self.n_heads:
            return []  # reported above; the base's head size is unknown
        head = head or self.head_dim
        if base % head:
            return [f"mup_base_width ({base}) must be a multiple of the base head size ({head})"]
        if self.attention == "mla" and self.pos_encoding == "rope" and head != self.head_dim:
            # Latent attention's shared rotary key is head_dim wide and its latent is not:
            # one matrix with a fixed and a growing part has no μP rule.
            return [
                "mup with latent attention and rope needs a fixed head size "
                "(leave mup_base_head_dim unset or equal to d_model/n_heads)"
            ]
        return [f"the μP base model: {p}" for p in self.mup_base().problems() if p not in found]

    def mup_base(self) -> ModelConfig:
        """The model μP scales from: this one at d_model = mup_base_width, with d_ff in
        proportion to d_model, the base head size (heads in proportion when it is the
        same), the key/value heads grouped as now where they divide, and everything that
        is not a width (layers, vocabulary, experts, the kv latent) unchanged. Its
        parametrization is the standard one, which it equals at its own width."""
        assert self.mup_base_width is not None, "only under parametrization mup"
        base = self.mup_base_width
        head = self.mup_base_head_dim or self.head_dim
        heads = max(1, base // head)
        kv_heads = None
        if self.n_kv_heads is not None:
            kv_heads = math.gcd(heads, max(1, self.n_kv_heads * heads // self.n_heads))
        return dataclasses.replace(
            self,
            d_model=base,
            d_ff=max(1, round(self.d_ff * base / self.d_model)),
            n_heads=heads,
            n_kv_heads=kv_heads,
            parametrization="standard",
        )

    def widened(
        self,
        d_model: int,
        d_ff_mult: float | None = None,
        parametrization: Parametrization | None = None,
    ) -> ModelConfig:
        """This model at width `d_model`, as a searched genome is trained wider: the head
        size kept (n_heads, and the key/value heads, in proportion), d_ff = d_ff_mult ×
        d_model (default: this model's d_ff / d_model), everything else as it is.

        `parametrization` None is μP when the width changes and this model's own when it
        does not. Under μP the base is where this model's learning rate and init were
        tuned: its own μP base if it has one, else this model itself (its width and head
        size), so that at this width the widened model is this one (tests/test_mup.py).
        Raises ConfigError for a width the head size does not divide, or whose heads
        cannot keep this model's grouping of query heads per key/value head."""
        head = self.head_dim
        if d_model < 1 or d_model % head:
            raise ConfigError(
                f"cannot widen to d_model {d_model}: the head size {head} "
                f"(d_model {self.d_model} / n_heads {self.n_heads}) must divide it; "
                f"try a multiple of {head}"
            )
        heads = d_model // head
        kv_heads = None
        if self.n_kv_heads is not None:
            group = self.n_heads // self.kv_heads
            if heads % group:
                raise ConfigError(
                    f"cannot widen to d_model {d_model}: its {heads} heads cannot be grouped "
                    f"{group} per key/value head as now; try a multiple of {head * group}"
                )
            kv_heads = heads // group
        mult = d_ff_mult if d_ff_mult is not None else self.d_ff / self.d_model
        kind = parametrization or ("mup" if d_model != self.d_model else self.parametrization)
        mup: dict[str, Any] = {"mup_base_width": None, "mup_base_head_dim": None}
        if kind == "mup" and self.parametrization == "mup":
            mup = {
                "mup_base_width": self.mup_base_width,
                "mup_base_head_dim": self.mup_base_head_dim,
            }
        elif kind == "mup":
            mup["mup_base_width"] = self.d_model
        return dataclasses.replace(
            self,
            d_model=d_model,
            n_heads=heads,
            n_kv_heads=kv_heads,
            d_ff=max(1, round(mult * d_model)),
            parametrization=kind,
            **mup,
        )

    def validate(self) -> ModelConfig:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))
        return self

    def param_count(self) -> ParamCount:
        """Analytic parameter count; equals the built model's (a test checks it)."""
        d = self.d_model
        vocab = self.vocab_size or 0
        bias = int(self.bias)
        norm = d * (2 if self.norm == "layernorm" and self.bias else 1)
        attn = self._attention_weights() + bias * (self._attention_outputs() + d)
        expert = self._expert_params()
        experts, active = self._experts()
        router = d * self.n_experts if self.mlp == "moe" else 0
        per_layer = attn + experts * expert + router + 2 * norm
        non_embedding = self.n_layers * per_layer + norm  # blocks + final norm
        embedding = vocab * d
        if self.pos_encoding == "learned":
            embedding += self.max_seq_len * d
        head = 0 if self.tie_embeddings else vocab * d
        total = non_embedding + embedding + head
        return ParamCount(total, non_embedding, total - self.n_layers * (experts - active) * expert)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 per weight in a matrix multiply (forward and
        backward, the output head included; of a mixture, the router and the experts the
        token is sent to) plus 6·n_layers·context·d_model for the attention scores and
        weighted values, where the context is the sequence, or the attention window when
        that is shorter."""
        seq_len = min(seq_len or self.max_seq_len, self.attn_window or self.max_seq_len)
        d, f = self.d_model, self.d_ff
        attn_weights = self._attention_weights()
        _, active = self._experts()
        mlp_weights = active * self._mlp_matrices() * d * f
        if self.mlp == "moe":
            mlp_weights += d * self.n_experts
        matmul_weights = self.n_layers * (attn_weights + mlp_weights) + (self.vocab_size or 0) * d
        return 6 * matmul_weights + 6 * self.n_layers * seq_len * d

    def _attention_weights(self) -> int:
        """Weights of one attention layer's matrices, the output projection included."""
        d, hd, heads = self.d_model, self.head_dim, self.n_heads
        if self.attention == "mha":
            return d * (d + 2 * self.kv_heads * hd) + d * d
        rotary = hd if self.pos_encoding == "rope" else 0
        latent = self.kv_latent_dim
        queries = d * heads * (hd + rotary)
        return queries + d * (latent + rotary) + 2 * latent * heads * hd + d * d

    def _attention_outputs(self) -> int:
        """Outputs of one attention layer's matrices before the output projection: the
        biases they carry when `bias` is set."""
        hd, heads = self.head_dim, self.n_heads
        if self.attention == "mha":
            return (heads + 2 * self.kv_heads) * hd
        rotary = hd if self.pos_encoding == "rope" else 0
        return heads * (hd + rotary) + self.kv_latent_dim + rotary + 2 * heads * hd

    def _experts(self) -> tuple[int, int]:
        """(MLPs per layer, MLPs a token passes through): (1, 1) without a mixture."""
        return (self.n_experts, self.experts_per_token) if self.mlp == "moe" else (1, 1)

    def _mlp_matrices(self) -> int:
        kind = self.mlp_expert if self.mlp == "moe" else self.mlp
        return 3 if kind == "swiglu" else 2

    def _expert_params(self) -> int:
        """One MLP's parameters (of a mixture, one expert's)."""
        d, f, matrices = self.d_model, self.d_ff, self._mlp_matrices()
        return matrices * d * f + int(self.bias) * ((matrices - 1) * f + d)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes tokens."""

    __pydantic_config__ = _STRICT

    corpus: str = setting(
        "builtin:python-docs",
        "The text: builtin:python-docs (the interpreter's help topics, 0.5 MB), "
        "builtin:python-code (the standard library's source, 12 MB), a .txt/.md file, a "
        "folder (its text files, recursively; binary ones are skipped with a warning), a "
        ".jsonl file (field text, or file.jsonl#field) or a .parquet file (column text, or "
        "file.parquet#column).",
    )
    tokenizer: TokenizerKind = setting(
        "bpe",
        "The tokenizer trained on the training split: SentencePiece BPE or unigram (with "
        "byte fallback), WordPiece over the 256 bytes, characters, or raw bytes.",
    )
    vocab_size: int = setting(
        2048, "The vocabulary size asked of the tokenizer (a target: it may end up smaller)."
    )
    val_fraction: float = setting(
        0.1,
        "The share of documents held out for validation. Whole documents are held out: a "
        "seeded hash of their names picks them, so the split is the same on every machine.",
    )
    split_seed: int = setting(0, "The seed of the document-level split.")
    chunk_chars: int = setting(
        65_536,
        "A document longer than this is cut into pieces at line breaks before the split, "
        "and a corpus of one document into at least 20 pieces of 1,024 characters or more: "
        "one big input.txt trains and validates like a folder of files.",
    )
    cache_dir: str = setting(
        "results/cache",
        "Where tokenized corpora are kept, keyed by the corpus and tokenizer: a second run "
        "does no work.",
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget, evaluation, checkpointing and hardware settings."""

    __pydantic_config__ = _STRICT

    batch_size: int = setting(
        16,
        "Sequences per micro-batch; with --nproc, the global batch the processes split "
        "(it must divide evenly).",
    )
    seq_len: int = setting(128, "Tokens per training sequence; at most model.max_seq_len.")
    grad_accum: int = setting(
        1, "Micro-batches whose gradients are accumulated into one optimizer step."
    )
    learning_rate: float = setting(3e-3, "The peak learning rate of AdamW.")
    min_lr_ratio: float = setting(
        0.1, "The schedule decays to learning_rate × min_lr_ratio, in [0, 1]."
    )
    schedule: Schedule = setting(
        "cosine",
        "cosine: warmup, then a cosine over the whole budget. wsd (warmup-stable-decay): "
        "warmup, the peak rate until the last decay_fraction of the budget, then a "
        "cool-down to the floor. A search with rungs trains with wsd, which cannot vary.",
    )
    decay_fraction: float = setting(
        0.2, "wsd: the share of the budget spent cooling down, in (0, 1]."
    )
    warmup_steps: int = setting(20, "Steps of linear warmup to the peak learning rate.")
    weight_decay: float = setting(
        0.1, "AdamW's decoupled weight decay (none on norms, biases and embeddings)."
    )
    beta1: float = setting(0.9, "Adam's first-moment average.")
    beta2: float = setting(0.95, "Adam's second-moment average.")
    grad_clip: float = setting(1.0, "The gradient norm clipped to; 0 disables clipping.")
    max_steps: int | None = setting(
        None,
        "Budget: training stops at whichever of max_steps, max_tokens and max_seconds is "
        "reached first; at least one must be set.",
    )
    max_tokens: int | None = setting(None, "Budget: training tokens (see max_steps).")
    max_seconds: float | None = setting(None, "Budget: seconds of training (see max_steps).")
    eval_interval: int = setting(100, "Steps between evaluations; 0 evaluates only at the end.")
    eval_max_batches: int | None = setting(
        None, "Batches of each evaluation; null: the whole validation split."
    )
    log_interval: int = setting(10, "Steps between log lines.")
    checkpoint_interval: int = setting(
        0, "Steps between checkpoints; 0 checkpoints only at the end."
    )
    keep_checkpoints: int = setting(2, "How many of the latest checkpoints are kept.")
    precision: Precision = setting(
        "auto",
        "Mixed precision: auto is bf16 on CUDA where supported, else fp16 with loss "
        "scaling, and float32 elsewhere.",
    )
    compile: bool | Literal["auto"] = setting(
        "auto",
        "torch.compile: true, false, or auto: compiled when the run is long enough to repay "
        "the warm-up (llm.compilation), decided after its first steps and said in the log.",
    )
    device: str = setting("auto", "cpu, cuda, cuda:N, mps, or auto: CUDA, then MPS, then the CPU.")
    threads: int | None = setting(None, "CPU threads torch uses; null: torch's default.")
    seed: int = setting(0, "The seed of the initialization and of the training windows.")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    def problems(self) -> list[str]:
        out = []
        for name in ("batch_size", "seq_len", "grad_accum", "log_interval", "keep_checkpoints"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                out.append(f"{name} must not be negative (got {getattr(self, name)})")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            out.append(f"learning_rate must be a positive number (got {self.learning_rate})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            out.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0.0 < self.decay_fraction <= 1.0:
            out.append(f"decay_fraction must be in (0, 1] (got {self.decay_fraction})")
        if self.max_steps is None and self.max_tokens is None and self.max_seconds is None:
            out.append("set a budget: max_steps, max_tokens or max_seconds")
        for name in ("max_steps", "max_tokens", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                out.append(f"{name} must be positive (got {value})")
        return out

    def validate(self) -> TrainConfig:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid train config: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class RunConfig:
    """Everything `llm train` needs: the sections `data`, `model` and `train` of a YAML file."""

    __pydantic_config__ = _STRICT

    data: DataConfig = setting(DataConfig, "Where the text comes from.", factory=True)
    model: ModelConfig = setting(ModelConfig, "The model.", factory=True)
    train: TrainConfig = setting(TrainConfig, "The training run.", factory=True)

    def problems(self) -> list[str]:
        out = [f"model: {p}" for p in self.model.problems() if not p.startswith("vocab_size")]
        out += [f"train: {p}" for p in self.train.problems()]
        return out + pairing_problems(self.model, self.train)


def pairing_problems(model: ModelConfig, train: TrainConfig) -> list[str]:
    """The constraints between a model and the training of it, which neither config can
    check alone: every violation, as sentences (empty when they fit together)."""
    if train.seq_len > model.max_seq_len:
        return [f"train.seq_len ({train.seq_len}) exceeds model.max_seq_len ({model.max_seq_len})"]
    return []


C = TypeVar("C")


def from_dict(cls: type[C], data: Any, where: str) -> C:
    """Build a config dataclass from plain data, with every type error named by its key path."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {format_validation_error(err)}") from None


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        message = "unknown key" if e["type"] == "unexpected_keyword_argument" else e["msg"]
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error:
    PyYAML would silently keep the last value, and a config would run with a setting its
    reader never noticed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` brings in keys that the mapping may override
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:
                continue  # an unhashable key, which the base class reports
            if first is not None:
                raise DuplicateKeyError(f"key {key!r} is given twice, at lines {first} and {line}")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file or a key
    given twice."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else None
        except DuplicateKeyError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(load_yaml(path), overrides or [])
    config = from_dict(RunConfig, data, str(path))
    problems = config.problems()
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config
