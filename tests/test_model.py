import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm.config import ModelConfig
from llm.errors import ConfigError
from llm.export import check_llama_compatible
from llm.model import KVCache, MixtureOfExperts, RMSNorm, RMSNormFunction, SwiGLU, Transformer
from llm.positions import Rotate, alibi_slopes

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]


def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=64, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize("pos", POSITIONS)
def test_changing_a_future_token_never_changes_an_earlier_logit(pos):
    torch.manual_seed(0)
    model = Transformer(tiny(pos_encoding=pos)).eval()
    tokens = torch.randint(0, 64, (2, 16))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 64
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize(
    "pos,norm,mlp",
    [
        *itertools.product(POSITIONS, ["rmsnorm", "layernorm"], ["swiglu", "gelu"]),
        ("rope", "rmsnorm", "moe"),
    ],
)
def test_every_variant_trains_with_falling_loss(pos, norm, mlp):
    torch.manual_seed(0)
    losses = pattern_losses(Transformer(tiny(pos_encoding=pos, norm=norm, mlp=mlp)))
    assert losses[-1] < 0.5 * losses[0]


def pattern_losses(model: Transformer, steps: int = 25) -> list[float]:
    """The training losses of `model` on a periodic sequence any variant can learn."""
    tokens = (torch.arange(24) % 7 + 3).repeat(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def naive_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, H, T, d) by pos · theta^(-2i/d), one by one."""
    out = x.clone()
    d = x.shape[-1]
    for pos in range(x.shape[2]):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            a, b = x[:, :, pos, i], x[:, :, pos, i + d // 2]
            out[:, :, pos, i] = a * math.cos(angle) - b * math.sin(angle)
            out[:, :, pos, i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def naive_attention(attn, x, rope_theta=None, slopes=None):
    """Attention written out: projections, optional RoPE, scores + ALiBi, causal softmax."""
    B, T, _ = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T).split(H * hd, dim=-1)
    q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
    if rope_theta is not None:
        q, k = naive_rope(q, rope_theta), naive_rope(k, rope_theta)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if slopes is not None:
        scores = scores - slopes[:, None, None] * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    y = scores.softmax(-1) @ v
    return y.transpose(1, 2).reshape(B, T, H * hd) @ attn.proj.weight.T


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_attention_matches_a_naive_reference(pos):
    torch.manual_seed(0)
    config = tiny(pos_encoding=pos, n_heads=4, d_model=32, rope_theta=500.0)
    model = Transformer(config).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 12, 32)
    positions = model.attention_positions(torch.arange(12)[None], torch.arange(12)[None])
    with torch.no_grad():
        ours = attn(x, positions, None)
        theirs = naive_attention(
            attn,
            x,
            rope_theta=500.0 if pos == "rope" else None,
            slopes=alibi_slopes(4) if pos == "alibi" else None,
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_alibi_slopes_follow_the_geometric_sequence():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    # 6 heads: the 4-head slopes, then the odd-indexed slopes of the 8-head sequence.
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_cached_forward_equals_full_forward(pos, kv_heads):
    torch.manual_seed(0)
    config = tiny(pos_encoding=pos, n_kv_heads=kv_heads)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 64, (2, 14))
    cache = KVCache(config, batch_size=2)
    with torch.no_grad():
        full = model(tokens)
        pieces = [model(tokens[:, :6], cache), model(tokens[:, 6:10], cache)]
        pieces += [model(tokens[:, t : t + 1], cache) for t in range(10, 14)]
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_multi_query_attention_has_one_key_value_head():
    config = tiny(n_kv_heads=1)
    model = Transformer(config)
    qkv = model.blocks[0].attn.qkv
    assert qkv.out_features == (4 + 2) * config.head_dim
    loss = model(torch.randint(0, 64, (1, 8))).sum()
    loss.backward()
    assert qkv.weight.grad is not None


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bias": True, "norm": "layernorm"},
        {"tie_embeddings": False, "pos_encoding": "learned"},
        {"mlp": "gelu", "n_kv_heads": 2, "bias": True},
        {"mlp": "moe", "n_experts": 4, "experts_per_token": 2},
        {"mlp": "moe", "mlp_expert": "gelu", "bias": True, "n_experts": 3, "experts_per_token": 1},
        {"attention": "mla", "kv_latent_dim": 12},
        {"attention": "mla", "pos_encoding": "alibi", "bias": True},
    ],
)
def test_param_count_matches_the_built_model(overrides):
    config = tiny(**overrides)
    model = Transformer(config)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert config.param_count().total == sum(unique.values())
    assert config.param_count() == model.param_count()
    # The parameters one token passes through, counted from the modules themselves.
    active = sum(unique.values())
    for module in model.modules():
        if isinstance(module, MixtureOfExperts):
            idle = module.experts[module.k :]
            active -= sum(p.numel() for p in idle.parameters())
    assert config.param_count().active == active


def test_flops_per_token_counts_only_the_experts_a_token_visits():
    dense, moe = tiny(), tiny(mlp="moe", n_experts=4, experts_per_token=2)
    router = 6 * moe.n_layers * moe.d_model * 4
    one_mlp = 6 * moe.n_layers * 3 * moe.d_model * moe.d_ff
    assert moe.flops_per_token(16) == dense.flops_per_token(16) + one_mlp + router


def test_flops_per_token_counts_every_matrix_multiply_and_attention():
    config = tiny(tie_embeddings=True, n_kv_heads=2)
    model = Transformer(config)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 6 * config.n_layers * 16 * config.d_model
    assert config.flops_per_token(seq_len=16) == 6 * matmul_weights + attention


def test_config_validation_lists_every_problem_at_once():
    config = ModelConfig(vocab_size=1, d_model=30, n_heads=4, n_kv_heads=3, dropout=1.5)
    with pytest.raises(ConfigError) as err:
        config.validate()
    message = str(err.value)
    for fragment in ("vocab_size", "divisible by n_heads", "divisible by n_kv_heads", "dropout"):
        assert fragment in message


def test_rope_requires_an_even_head_size():
    problems = tiny(d_model=12, n_heads=4, pos_encoding="rope").problems()
    assert any("even head size" in p for p in problems)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Transformer(tiny())
    ckpt = Transformer(tiny(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 64, (2, 10))
    for model in (plain, ckpt):
        model(tokens).square().mean().backward()
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_sequence_longer_than_the_context_is_refused():
    model = Transformer(tiny(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("pos", POSITIONS)
def test_left_padding_changes_no_real_tokens_logits(pos):
    torch.manual_seed(0)
    config = tiny(pos_encoding=pos, n_kv_heads=2)
    model = Transformer(config).eval()
    long, short = torch.randint(0, 64, (10,)), torch.randint(0, 64, (6,))
    garbage = torch.randint(0, 64, (4,))  # padding may hold any token: it must not matter
    batch = torch.stack([long, torch.cat([garbage, short])])
    pad = torch.tensor([0, 4])
    with torch.no_grad():
        padded = model(batch, pad=pad)
        cache = KVCache(config, batch_size=2)
        stepped = [model(batch[:, :7], cache, pad=pad)]
        stepped += [model(batch[:, t : t + 1], cache, pad=pad) for t in range(7, 10)]
        alone = model(short[None])
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[1, 4:], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[0], model(long[None])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(stepped, 1)[1, 4:], alone[0], rtol=1e-5, atol=1e-5)


def test_rope_backward_matches_finite_differences():
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(1, 3, 1, 4, dtype=torch.float64) * 6
    assert torch.autograd.gradcheck(Rotate.apply, (x, angles.cos(), angles.sin()))


def test_rmsnorm_matches_torch_and_its_backward_matches_finite_differences():
    torch.manual_seed(0)
    config = tiny(norm="rmsnorm", d_model=16, norm_eps=0.1)
    ours = RMSNorm(config)
    ours.weight.data.normal_()
    reference = torch.nn.RMSNorm(16, eps=0.1)
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), reference(x))
    x64 = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RMSNormFunction.apply, (x64, weight, 0.1))


@pytest.mark.parametrize("pos", POSITIONS)
def test_a_window_hides_every_key_that_many_positions_back(pos):
    torch.manual_seed(0)
    model = Transformer(tiny(pos_encoding=pos, n_layers=1, attn_window=3)).eval()
    tokens = torch.randint(0, 64, (2, 12))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 64
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    # One layer sees positions 4, 5 and 6 through token 4; from 7 on it is out of sight.
    torch.testing.assert_close(a[:, 7:], b[:, 7:], rtol=0, atol=0)
    for t in (4, 5, 6):
        assert not torch.allclose(a[:, t], b[:, t])


@pytest.mark.parametrize("pos", POSITIONS)
def test_a_window_as_long_as_the_sequence_changes_nothing(pos):
    torch.manual_seed(0)
    full = Transformer(tiny(pos_encoding=pos)).eval()
    windowed = Transformer(tiny(pos_encoding=pos, attn_window=12)).eval()
    windowed.load_state_dict(full.state_dict())
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(windowed(tokens), full(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos", POSITIONS)
def test_a_windowed_cache_is_a_bounded_ring_that_decodes_like_the_full_forward(pos):
    torch.manual_seed(0)
    config = tiny(pos_encoding=pos, n_kv_heads=2, attn_window=4, max_seq_len=40)
    model = Transformer(config).eval()
    long, short = torch.randint(0, 64, (30,)), torch.randint(0, 64, (27,))
    batch = torch.stack([long, torch.cat([torch.randint(0, 64, (3,)), short])])
    pad = torch.tensor([0, 3])
    cache = KVCache(config, batch_size=2)
    with torch.no_grad():
        full, alone = model(batch, pad=pad), model(short[None])
        # A prefill longer than the window, a chunk that wraps, then single steps.
        stepped = [model(batch[:, :7], cache, pad=pad), model(batch[:, 7:10], cache, pad=pad)]
        stepped += [model(batch[:, t : t + 1], cache, pad=pad) for t in range(10, 30)]
    assert cache.length == 30
    assert cache.keys[0].shape[2] == 4  # the window, not the 40 positions of the context
    stepped = torch.cat(stepped, 1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stepped[1, 3:], alone[0], rtol=1e-5, atol=1e-5)


def test_a_window_shortens_the_attention_flops_but_not_the_parameters():
    full, windowed = tiny(), tiny(attn_window=8)
    assert windowed.param_count() == full.param_count()
    attention = 6 * full.n_layers * full.d_model
    assert full.flops_per_token(32) - windowed.flops_per_token(32) == attention * (32 - 8)
    assert windowed.flops_per_token(4) == full.flops_per_token(4)


def test_a_window_must_be_positive_and_cannot_be_exported_as_llama():
    with pytest.raises(ConfigError, match="attn_window must be at least 1"):
        Transformer(tiny(attn_window=0))
    with pytest.raises(ConfigError, match="attn_window is 8"):
        check_llama_compatible(tiny(attn_window=8), Path("model"))


def test_a_mixture_is_refused_by_the_llama_export_and_its_routing_checked():
    with pytest.raises(ConfigError, match="mlp is 'moe'"):
        check_llama_compatible(tiny(mlp="moe"), Path("model"))
    with pytest.raises(ConfigError, match="experts_per_token must be between 1 and n_experts"):
        Transformer(tiny(mlp="moe", n_experts=2, experts_per_token=3))


def moe_layer(**overrides) -> MixtureOfExperts:
    return MixtureOfExperts(tiny(mlp="moe", **overrides))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_routing_sends_each_token_to_exactly_k_experts(k):
    torch.manual_seed(0)
    layer = moe_layer(n_experts=4, experts_per_token=k)
    x = torch.randn(2, 9, 32)
    seen: list[Tensor] = []
    for expert in layer.experts:
        expert.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    layer(x)
    rows = x.reshape(-1, 32)
    # Which token each routed row is: every token appears k times, never twice in one expert.
    owners = [[int((rows == row).all(-1).nonzero()) for row in batch] for batch in seen]
    assert all(len(set(tokens)) == len(tokens) for tokens in owners)
    routed = torch.tensor([t for tokens in owners for t in tokens])
    counts = torch.bincount(routed, minlength=len(rows))
    assert counts.tolist() == [k] * len(rows)


def test_one_expert_chosen_always_is_the_plain_mlp():
    torch.manual_seed(0)
    layer = moe_layer(n_experts=1, experts_per_token=1)
    plain = SwiGLU(tiny())
    plain.load_state_dict(layer.experts[0].state_dict())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-6, atol=1e-6)


def test_the_balancing_loss_falls_when_the_router_learns_to_spread_skewed_tokens():
    torch.manual_seed(0)
    layer = moe_layer(n_experts=4, experts_per_token=1, moe_aux_loss=1.0).train()
    shared = torch.randn(32)
    x = torch.randn(256, 32) + shared  # tokens with a direction in common
    with torch.no_grad():  # a router that sends nearly all of them to expert 0
        layer.router.weight.mul_(0.1)
        layer.router.weight[0] += shared / 4
    optimizer = torch.optim.Adam(layer.router.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        layer(x[None])
        assert layer.aux_loss is not None
        losses.append(layer.aux_loss.item())
        optimizer.zero_grad()
        layer.aux_loss.backward()
        optimizer.step()
    # All on one expert: n_experts · 1 · P_0 ≈ 4; evenly spread: 1.
    assert losses[0] > 3.5
    assert losses[-1] < 1.5
    busiest = layer.router(x).argmax(-1).bincount(minlength=4).max().item()
    assert busiest < 0.5 * len(x)


def test_a_mixture_reports_its_auxiliary_loss_to_the_trainer_and_a_dense_model_none():
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 8))
    assert Transformer(tiny()).train().aux_loss() == 0.0
    model = Transformer(tiny(mlp="moe", n_experts=4, moe_z_loss=1e-3)).train()
    model(tokens)
    aux = model.aux_loss()
    assert isinstance(aux, Tensor) and aux.requires_grad and aux.item() > 0
    aux.backward()
    assert model.blocks[0].mlp.router.weight.grad is not None


@pytest.mark.parametrize("pos", POSITIONS)
def test_latent_attention_is_causal_and_caches_only_its_latent(pos):
    torch.manual_seed(0)
    config = tiny(pos_encoding=pos, attention="mla", kv_latent_dim=8)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 64, (2, 14))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64
    cache = KVCache(config, batch_size=2)
    with torch.no_grad():
        full, other = model(tokens), model(changed)
        pieces = [model(tokens[:, :6], cache), model(tokens[:, 6:10], cache)]
        pieces += [model(tokens[:, t : t + 1], cache) for t in range(10, 14)]
    torch.testing.assert_close(full[:, :9], other[:, :9], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    # Per position and layer: the latent and one shared rotary key, not 2 × heads × head_dim.
    rotary = config.head_dim if pos == "rope" else 0
    assert cache.keys[0].shape[1:] == (1, 32, 8)
    assert cache.values[0].shape[1:] == (1, 32, rotary)
    per_position = 8 + rotary
    assert per_position < 2 * config.n_heads * config.head_dim


def test_latent_attention_with_a_window_decodes_like_the_full_forward():
    torch.manual_seed(0)
    config = tiny(attention="mla", kv_latent_dim=8, attn_window=4)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 64, (2, 20))
    cache = KVCache(config, batch_size=2)
    with torch.no_grad():
        full = model(tokens)
        stepped = [model(tokens[:, :7], cache)]
        stepped += [model(tokens[:, t : t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(stepped, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_latent_attention_trains_and_cannot_be_exported_as_llama(pos):
    torch.manual_seed(0)
    losses = pattern_losses(Transformer(tiny(pos_encoding=pos, attention="mla", kv_latent_dim=16)))
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ConfigError, match="attention is 'mla'"):
        check_llama_compatible(tiny(attention="mla"), Path("model"))
