from __future__ import annotations

import math

import pytest
import torch

from llm.config import ModelConfig
from llm.errors import ConfigError, UserError
from llm.generate import (
    SamplingParams,
    decode_tokens_per_second,
    filter_logits,
    generate,
    sample_next_token,
)
from llm.model import Transformer

PROMPT = [5, 17, 3, 42, 8, 8, 1]
GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    # A large init gives peaked logits, so greedy choices are not near-ties that
    # rounding differences between the cached and uncached paths could flip.
    base = {"vocab_size": 64, "n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64}
    base |= {"max_seq_len": 48, "init_std": 0.3}
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**base, **overrides}))  # type: ignore[arg-type]


@pytest.mark.parametrize("n_kv_heads", [None, 1, 2])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_cached_greedy_equals_uncached(pos_encoding: str, n_kv_heads: int | None) -> None:
    model = tiny_model(pos_encoding=pos_encoding, n_kv_heads=n_kv_heads)
    cached = generate(model, PROMPT, GREEDY)
    uncached = generate(model, PROMPT, GREEDY, use_cache=False)
    assert len(cached) == GREEDY.max_new_tokens
    assert cached == uncached


def test_greedy_follows_the_argmax_of_the_full_forward() -> None:
    model = tiny_model().eval()
    new = generate(model, PROMPT, SamplingParams(max_new_tokens=5, temperature=0.0))
    sequence = PROMPT + new
    with torch.no_grad():
        logits = model(torch.tensor([sequence]))[0]
    for i, token in enumerate(new):
        assert logits[len(PROMPT) - 1 + i].argmax().item() == token


def test_top_k_one_equals_greedy() -> None:
    model = tiny_model()
    sampled = generate(model, PROMPT, SamplingParams(max_new_tokens=20, top_k=1, seed=7))
    assert sampled == generate(model, PROMPT, GREEDY)


def test_seeds_decide_the_samples() -> None:
    model = tiny_model()

    def sample(seed: int) -> list[int]:
        return generate(
            model, PROMPT, SamplingParams(max_new_tokens=20, temperature=5.0, seed=seed)
        )

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_generation_leaves_the_global_rng_alone() -> None:
    model = tiny_model()
    state = torch.get_rng_state()
    generate(model, PROMPT, SamplingParams(max_new_tokens=10, temperature=2.0))
    assert torch.equal(torch.get_rng_state(), state)


def test_eos_stops_generation_and_is_returned() -> None:
    model = tiny_model()
    free = generate(model, PROMPT, GREEDY)
    eos = free[5]
    stopped = generate(model, PROMPT, SamplingParams(max_new_tokens=20, temperature=0, eos_id=eos))
    assert stopped == free[: free.index(eos) + 1]


def test_generation_stops_when_the_context_is_full() -> None:
    model = tiny_model()
    max_len = model.config.max_seq_len
    prompt = list(range(max_len - 3))
    assert len(generate(model, prompt, GREEDY)) == 3
    assert len(generate(model, prompt, GREEDY, use_cache=False)) == 3
    assert generate(model, list(range(max_len)), GREEDY) == []


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (list(range(49)), "49 tokens.*context of 48"),
        ([], "empty"),
        ([1, 64], "token 1 is 64"),
        ([-1], "token 0 is -1"),
    ],
)
def test_unusable_prompts_are_errors(prompt: list[int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate(tiny_model(), prompt, GREEDY)


def test_training_mode_is_restored() -> None:
    model = tiny_model(dropout=0.1)
    model.train()
    generate(model, PROMPT, SamplingParams(max_new_tokens=3, seed=0))
    assert model.training
    model.eval()
    generate(model, PROMPT, SamplingParams(max_new_tokens=3, seed=0))
    assert not model.training


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # Probabilities 0.5, 0.25, 0.15, 0.1 in a shuffled order.
    probs = torch.tensor([[0.15, 0.5, 0.1, 0.25]])
    logits = probs.log()
    kept = lambda p: filter_logits(logits, top_p=p).isfinite()[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.8) == [True, True, False, True]
    assert kept(0.95) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[0.1, 3.0, -2.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, False, True], [True, True, False, False, False]]
    torch.testing.assert_close(filter_logits(logits, top_k=2)[kept], logits[kept])
    assert filter_logits(logits, top_k=10).isfinite().all()


def test_sampling_draws_only_from_the_filtered_set() -> None:
    probs = torch.tensor([0.15, 0.5, 0.1, 0.25]).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(top_p=0.7, seed=0)
    tokens = sample_next_token(probs.log(), params, generator)
    counts = torch.bincount(tokens, minlength=4)
    assert counts[0] == counts[2] == 0
    # Renormalised over the nucleus: 0.5 / 0.75 and 0.25 / 0.75.
    assert abs(counts[1].item() / 2000 - 2 / 3) < 0.05


def test_temperature_zero_is_argmax_and_ignores_the_generator() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 2.9]])
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    chosen = sample_next_token(logits, SamplingParams(temperature=0.0), generator)
    assert chosen.tolist() == [1, 0]
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_invalid_sampling_params(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_decode_throughput_is_positive_and_restores_training_mode() -> None:
    model = tiny_model().train()
    rate = decode_tokens_per_second(model, prompt_len=8, new_tokens=8)
    assert math.isfinite(rate) and rate > 0
    assert model.training


def test_decode_throughput_fits_a_short_context() -> None:
    model = tiny_model(max_seq_len=16)
    assert decode_tokens_per_second(model) > 0
    with pytest.raises(ValueError, match="context of 2"):
        decode_tokens_per_second(tiny_model(max_seq_len=2))
