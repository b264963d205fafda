"""μP (`model.parametrization: mup`): at its base width the very model the standard
parametrization gives; wider, hidden matrices start smaller and step slower, with their
weight decay compensated, readouts shrink, and the coordinate check stays flat."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import space_dict, write_corpus

from evo.space import load_space
from llm.checkpoint import CONFIG_FILE, load_model_dir, read_model_config, save_model_dir
from llm.config import ModelConfig, Parametrization, TrainConfig
from llm.data import TokenSplits
from llm.errors import ConfigError
from llm.export import export_hf
from llm.lora import LoRAConfig, apply_lora
from llm.model import Transformer
from llm.optim import build_optimizer
from llm.train import Trainer

MODEL = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=16)
TRAIN = TrainConfig(
    batch_size=4,
    seq_len=16,
    learning_rate=3e-3,
    warmup_steps=2,
    max_steps=4,
    eval_interval=0,
    device="cpu",
    threads=1,
)
CPU = torch.device("cpu")


def mup(config: ModelConfig, base: int, **changes: Any) -> ModelConfig:
    return dataclasses.replace(
        config, **{"parametrization": "mup", "mup_base_width": base, **changes}
    )


def wider(config: ModelConfig, factor: int) -> ModelConfig:
    """`config` `factor` times wider at the same head size, as a genome is promoted."""
    return dataclasses.replace(
        config,
        d_model=config.d_model * factor,
        n_heads=config.n_heads * factor,
        n_kv_heads=config.n_kv_heads and config.n_kv_heads * factor,
        d_ff=config.d_ff * factor,
    )


def splits() -> TokenSplits:
    """Counting up modulo 64, with some noise."""
    rng = np.random.default_rng(0)
    tokens = np.arange(3000) % 64
    noise = rng.random(3000) < 0.1
    tokens[noise] = rng.integers(0, 64, noise.sum())
    tokens = tokens.astype(np.uint16)
    return TokenSplits(train=tokens[:2500], val=tokens[2500:], val_bytes=500)


def seeded(config: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config)


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


VARIANTS = {
    "default": {},
    "untied-bias-layernorm-learned": {
        "tie_embeddings": False,
        "bias": True,
        "norm": "layernorm",
        "pos_encoding": "learned",
    },
    "gqa": {"n_heads": 4, "n_kv_heads": 2},
    "moe": {"mlp": "moe", "n_experts": 4},
    "mla": {"attention": "mla", "kv_latent_dim": 16},
}


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_at_its_base_width_mup_is_the_standard_model_bit_for_bit(changes: dict) -> None:
    """Same init, same logits, and the same weights after training through the Trainer:
    a genome searched under the standard parametrization at the base width transfers."""
    standard = dataclasses.replace(MODEL, **changes)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    runs = []
    for config in (standard, mup(standard, standard.d_model)):
        net = seeded(config)
        init = clone_state(net)
        Trainer(net, TRAIN, splits()).fit()
        with torch.no_grad():
            runs.append((init, net(tokens), clone_state(net)))
    (init, logits, trained), (mup_init, mup_logits, mup_trained) = runs
    assert all(torch.equal(init[k], mup_init[k]) for k in init)
    assert torch.equal(logits, mup_logits)
    assert all(torch.equal(trained[k], mup_trained[k]) for k in trained)
    assert any(not torch.equal(init[k], trained[k]) for k in init)  # it did train


def stepped(net: Transformer, train: TrainConfig, grads: str) -> dict[str, torch.Tensor]:
    """Each parameter's change in one optimizer step at the rate `train.learning_rate` (set
    on every group, as the trainer's schedule does), with gradients of magnitude 1 in
    random directions or all zero."""
    optimizer = build_optimizer(net, train, CPU)
    for group in optimizer.param_groups:
        group["lr"] = train.learning_rate
    before = clone_state(net)
    generator = torch.Generator().manual_seed(0)
    for p in net.parameters():
        sign = torch.randint(0, 2, p.shape, generator=generator) * 2.0 - 1.0
        p.grad = sign if grads == "random" else torch.zeros_like(p)
    optimizer.step()
    return {name: p.detach() - before[name] for name, p in net.named_parameters()}


def is_hidden(name: str) -> bool:
    """The matrices with a width on both sides in VARIANTS' models."""
    return name.endswith(("qkv.weight", "proj.weight", "gate_up.weight", "down.weight"))


def test_a_wider_model_steps_its_hidden_matrices_slower_and_the_rest_as_set() -> None:
    """Adam's first step moves every weight by the rate times its group's multiplier: the
    base width over the width for hidden matrices, 1 for embeddings, the untied output head,
    the router, norms and biases."""
    base = dataclasses.replace(MODEL, tie_embeddings=False, bias=True, mlp="moe", n_experts=2)
    net = seeded(wider(mup(base, 32), 4))
    rate = 1e-3
    moved = stepped(net, dataclasses.replace(TRAIN, learning_rate=rate, weight_decay=0.0), "random")
    hidden = {name for name in moved if is_hidden(name)}
    assert len(hidden) == 2 * (2 + 2 * 2)  # per layer: qkv, proj and two experts' two
    for name, change in moved.items():
        expected = rate / 4 if name in hidden else rate
        torch.testing.assert_close(
            change.abs(), torch.full_like(change, expected), rtol=1e-4, atol=0
        )


def test_weight_decay_is_compensated_so_every_matrix_decays_as_under_the_standard_rule() -> None:
    """AdamW decays by rate × weight_decay; a group whose rate is divided by the width
    multiplier has its weight decay multiplied by it, so the decay per step is unchanged."""
    train = dataclasses.replace(TRAIN, learning_rate=0.01, weight_decay=0.1)
    config = wider(mup(MODEL, 32), 4)
    net = seeded(config)
    before = clone_state(net)
    moved = stepped(net, train, "zero")
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.down.weight"):
        torch.testing.assert_close(moved[name], -0.01 * 0.1 * before[name])
    assert not moved["embed.weight"].any()  # embeddings never decay


def test_lora_adapters_on_a_wide_mup_model_step_at_the_rate_set() -> None:
    """The adapters are not in the base model, and their rank does not grow with width: they
    are not matrix-like, whatever the matrix they adapt."""
    net = apply_lora(seeded(wider(mup(MODEL, 32), 4)), LoRAConfig(rank=4))
    moved = stepped(net, dataclasses.replace(TRAIN, learning_rate=1e-3, weight_decay=0.0), "random")
    adapters = {name: change for name, change in moved.items() if "lora_" in name}
    assert len(adapters) == 2 * 2 * 2  # two layers, qkv and proj, A and B
    for change in adapters.values():
        torch.testing.assert_close(change.abs(), torch.full_like(change, 1e-3), rtol=1e-4, atol=0)


def test_a_wider_model_starts_its_hidden_matrices_smaller_and_shrinks_its_logits() -> None:
    """At 4× the base width: hidden matrices start with std / 2, the embedding as it was, and
    with the head size fixed the only other change is the logits' factor 1/4."""
    config = wider(mup(dataclasses.replace(MODEL, n_layers=1, vocab_size=512), 32), 4)
    net = seeded(config)
    assert net.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert net.blocks[0].mlp.gate_up.weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert net.embed.weight.std().item() == pytest.approx(0.02, rel=0.03)
    standard = Transformer(dataclasses.replace(config, parametrization="standard"))
    standard.load_state_dict(net.state_dict())
    tokens = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(net(tokens), standard(tokens) / 4)


def test_a_growing_head_size_scales_attention_by_one_over_the_head_size() -> None:
    """sqrt(base head size)/head size: at head size 64 from 16, 1/16 where the standard
    parametrization has 1/8. Latent attention's kv down-projection is a readout: its input
    shrinks by 1/4, its bias does not (as mup's MuReadout)."""
    config = mup(MODEL, 32, d_model=128, d_ff=256, mup_base_head_dim=16)
    assert Transformer(config).blocks[0].attn.scale == pytest.approx(math.sqrt(16) / 64)
    latent = dataclasses.replace(config, attention="mla", pos_encoding="none", bias=True)
    attn = Transformer(latent).blocks[0].attn
    assert attn.scale == pytest.approx(math.sqrt(16) / 64)
    x = torch.randn(2, 128)
    with torch.no_grad():
        torch.nn.init.normal_(attn.kv_down.bias)
        expected = torch.nn.functional.linear(x / 4, attn.kv_down.weight) + attn.kv_down.bias
        torch.testing.assert_close(attn.kv_down(attn.kv_readout(x)), expected)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mup_base_width": None}, "mup needs mup_base_width"),
        ({"mup_base_width": 0}, "must be at least 1"),
        ({"mup_base_width": 24}, r"mup_base_width \(24\) must be a multiple of the base head"),
        ({"mup_base_head_dim": 5, "mup_base_width": 10}, "base model: rope needs an even head"),
        (
            {"attention": "mla", "mup_base_head_dim": 8},
            "latent attention and rope needs a fixed head size",
        ),
    ],
)
def test_bad_mup_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Transformer(mup(MODEL, 16, d_model=64, d_ff=128, **{"n_heads": 4, **changes}))


def test_mup_settings_are_ignored_by_the_standard_parametrization() -> None:
    config = dataclasses.replace(MODEL, mup_base_width=24)
    assert config.problems() == []


def test_a_saved_mup_model_loads_as_saved_and_an_old_config_as_standard(tmp_path: Path) -> None:
    net = seeded(wider(mup(MODEL, 32, mup_base_head_dim=16), 2))
    save_model_dir(tmp_path / "mup", net, None)
    loaded, _, config = load_model_dir(tmp_path / "mup")
    assert config == net.config
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), net(tokens))
    save_model_dir(tmp_path / "old", seeded(MODEL), None)
    path = tmp_path / "old" / CONFIG_FILE
    saved = json.loads(path.read_text())
    for key in ("parametrization", "mup_base_width", "mup_base_head_dim"):
        del saved[key]
    path.write_text(json.dumps(saved))
    assert read_model_config(tmp_path / "old") == MODEL


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_wide_mup_model_exports_to_llama_with_its_multipliers_folded_in(
    tmp_path: Path, tied: bool
) -> None:
    transformers = pytest.importorskip("transformers")
    config = mup(MODEL, 32, d_model=128, d_ff=256, tie_embeddings=tied, mup_base_head_dim=16)
    net = seeded(config)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0.0, 0.3)
    save_model_dir(tmp_path / "model", net, None)
    out = export_hf(tmp_path / "model", tmp_path / "hf")
    theirs = transformers.LlamaForCausalLM.from_pretrained(out)
    assert not theirs.config.tie_word_embeddings  # the logit factor went into its own head
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, net(tokens), atol=1e-4, rtol=0)


def test_a_search_space_may_fix_or_vary_the_parametrization(tmp_path: Path) -> None:
    """The new fields are genes and fixed settings like any other, with no edit to evo."""
    space = space_dict(write_corpus(tmp_path / "corpus"))
    space["genes"]["parametrization"] = {"choice": ["standard", "mup"]}
    space["fixed"]["model"]["mup_base_width"] = 32
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    loaded = load_space(tmp_path / "space.yaml")
    rng = random.Random(0)
    configs = [loaded.model_config(loaded.sample(rng), 64) for _ in range(20)]
    assert {c.parametrization for c in configs} == {"standard", "mup"}
    for config in configs:
        assert config.mup_base_width == 32
        Transformer(config)


# --------------------------------------------------------------------- coordinate check

COORD_WIDTHS = (64, 128, 256, 512, 1024)
COORD_VOCAB = 16  # well below every width, as the infinite-width limit has it


def coordinate_sizes(config: ModelConfig, steps: int = 4, rate: float = 3e-3) -> dict[str, float]:
    """The mean absolute output of every layer (the embedding, each block's attention and
    MLP, the logits) on a fixed batch after `steps` Adam steps at `rate` on it."""
    net = seeded(config, seed=1)
    train = dataclasses.replace(TRAIN, learning_rate=rate, weight_decay=0.0)
    optimizer = build_optimizer(net, train, CPU)
    for group in optimizer.param_groups:
        group["lr"] = rate
    start = torch.randint(0, COORD_VOCAB, (8, 1), generator=torch.Generator().manual_seed(0))
    sequence = (start + 3 * torch.arange(17)) % COORD_VOCAB
    x, y = sequence[:, :-1], sequence[:, 1:]
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layers = {"embedding": net.embed}
    for i, block in enumerate(net.blocks):
        layers |= {f"attention {i}": block.attn, f"mlp {i}": block.mlp}
    sizes: dict[str, float] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.abs().mean().item())
        )
        for name, module in layers.items()
    ]
    with torch.no_grad():
        sizes["logits"] = net(x).abs().mean().item()
    for hook in hooks:
        hook.remove()
    return sizes


def coordinate_slopes(parametrization: Parametrization) -> dict[str, float]:
    """Each layer's log-log slope of its activation size against width, from 64 to 1024
    at a fixed number of heads (the head size grows, so attention's 1/d_head counts)."""
    rows = [
        coordinate_sizes(
            ModelConfig(
                vocab_size=COORD_VOCAB,
                n_layers=2,
                d_model=width,
                n_heads=4,
                d_ff=2 * width,
                max_seq_len=16,
                parametrization=parametrization,
                mup_base_width=COORD_WIDTHS[0],
                mup_base_head_dim=COORD_WIDTHS[0] // 4,
            )
        )
        for width in COORD_WIDTHS
    ]
    log_widths = np.log(COORD_WIDTHS)
    return {
        name: float(np.polyfit(log_widths, np.log([row[name] for row in rows]), 1)[0])
        for name in rows[0]
    }


def test_coordinate_check_mup_stays_flat_from_64_to_1024_and_standard_grows() -> None:
    """As the `mup` package's coord_check: under μP no layer's activations grow or shrink
    with width after a few steps (slope within ±0.1); under the standard parametrization
    the blocks' grow, so a μP that did nothing would fail here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mup_slopes, standard = coordinate_slopes("mup"), coordinate_slopes("standard")
    finally:
        torch.set_num_threads(threads)
    both = {name: (round(mup_slopes[name], 3), round(standard[name], 3)) for name in mup_slopes}
    assert len(both) == 6
    assert all(abs(slope) <= 0.1 for slope in mup_slopes.values()), f"(μP, standard): {both}"
    assert max(standard.values()) > 0.1, f"(μP, standard): {both}"
