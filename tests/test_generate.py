from __future__ import annotations

import math

import pytest
import torch

from llm.config import ModelConfig
from llm.errors import ConfigError, UserError
from llm.generate import (
    RowSampler,
    RowText,
    SamplingParams,
    complete,
    decode_tokens_per_second,
    draw,
    filter_logits,
    generate,
    generate_batch,
    penalize_repetition,
    pick_tokens,
    sample_next_token,
    stream_completions,
    truncate_prompt,
)
from llm.model import Transformer
from llm.tokenizer import ByteTokenizer

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


def test_draws_follow_the_probabilities_and_never_pick_an_impossible_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(draw(probs.repeat(20_000, 1), generator), minlength=6)
    assert counts[[0, 2, 5]].tolist() == [0, 0, 0]
    torch.testing.assert_close(counts / 20_000, probs, atol=0.015, rtol=0)
    # The ends of the uniform draw: 0 lands on the first possible index, and a draw that
    # rounds up to the whole mass on the last possible one, not past it.
    for edge, expected in ((0.0, 1), (1.0, 4)):
        monkeypatch.setattr(torch, "rand", lambda shape, edge=edge, **_: torch.full(shape, edge))
        assert draw(probs[None], generator).tolist() == [expected]


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
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": ("",)}, "stop strings"),
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


@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "alibi"])
def test_sliding_window_generation_past_several_windows_equals_uncached(pos_encoding: str) -> None:
    model = tiny_model(pos_encoding=pos_encoding, n_kv_heads=2, attn_window=5)
    params = SamplingParams(max_new_tokens=30, temperature=0.0)
    cached = generate_batch(model, [PROMPT, [9, 2]], params)
    assert [len(tokens) for tokens in cached] == [30, 30]
    assert cached == generate_batch(model, [PROMPT, [9, 2]], params, use_cache=False)


def test_a_mixture_of_experts_generates_the_same_with_and_without_the_cache() -> None:
    model = tiny_model(mlp="moe", n_experts=4, experts_per_token=2)
    batch = generate_batch(model, [PROMPT, [9, 2]], GREEDY)
    assert batch == generate_batch(model, [PROMPT, [9, 2]], GREEDY, use_cache=False)


PROMPTS = [PROMPT, [9, 2], list(range(20, 33)), [7]]


@pytest.mark.parametrize("n_kv_heads", [None, 2])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_batched_greedy_equals_each_prompt_alone(pos_encoding: str, n_kv_heads: int | None) -> None:
    model = tiny_model(pos_encoding=pos_encoding, n_kv_heads=n_kv_heads)
    batched = generate_batch(model, PROMPTS, GREEDY)
    assert batched == [generate(model, prompt, GREEDY) for prompt in PROMPTS]
    assert batched == generate_batch(model, PROMPTS, GREEDY, use_cache=False)


def test_a_row_that_reaches_eos_stops_while_the_others_go_on() -> None:
    model = tiny_model()
    alone = [generate(model, prompt, GREEDY) for prompt in PROMPTS]
    eos = alone[1][3]
    params = SamplingParams(max_new_tokens=20, temperature=0.0, eos_id=eos)
    batched = generate_batch(model, PROMPTS, params)
    for row, tokens in zip(alone, batched, strict=True):
        expected = row[: row.index(eos) + 1] if eos in row else row
        assert tokens == expected
    assert batched[1][-1] == eos and len(batched[1]) <= 4


def test_the_same_seed_reproduces_a_batch_of_samples() -> None:
    model = tiny_model()
    params = SamplingParams(max_new_tokens=15, temperature=1.5, seed=3)
    first = generate_batch(model, PROMPTS, params)
    assert first == generate_batch(model, PROMPTS, params)
    assert first != generate_batch(model, PROMPTS, SamplingParams(max_new_tokens=15, seed=4))


def test_a_bad_prompt_in_a_batch_is_named_by_its_index() -> None:
    with pytest.raises(UserError, match="prompt 1: token 0 is 99"):
        generate_batch(tiny_model(), [PROMPT, [99]], GREEDY)


def test_repetition_penalty_lowers_only_seen_tokens() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repetition(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_a_strong_repetition_penalty_stops_greedy_loops() -> None:
    model = tiny_model()
    loose = generate(model, PROMPT, GREEDY)
    assert len(set(loose)) < len(loose)  # this model repeats itself when left alone
    params = SamplingParams(max_new_tokens=20, temperature=0.0, repetition_penalty=1e6)
    strict = generate(model, PROMPT, params)
    assert len(set(strict)) == len(strict) and not set(strict) & set(PROMPT)


def test_truncation_keeps_the_end_of_the_prompt_and_room_to_generate() -> None:
    assert truncate_prompt(list(range(100)), context=48, max_new_tokens=8) == list(range(60, 100))
    assert truncate_prompt(list(range(100)), context=48, max_new_tokens=80) == [99]
    assert truncate_prompt([1, 2], context=48, max_new_tokens=8) == [1, 2]


def feed(row: RowText, text: str) -> tuple[list[str], bool]:
    pieces = []
    for token in ByteTokenizer().encode(text):
        piece, stopped = row.add(token)
        pieces.append(piece)
        if stopped:
            return pieces, True
    return [*pieces, row.flush()], False


def test_streamed_text_never_splits_a_character() -> None:
    text = "héllo ✓ 日本語 🙂!"
    pieces, stopped = feed(RowText(ByteTokenizer(), ()), text)
    assert "".join(pieces) == text and not stopped
    assert all("\ufffd" not in piece for piece in pieces)
    assert len([piece for piece in pieces if piece]) == len(text)


def test_stop_strings_end_the_text_before_them_and_hold_back_lookalikes() -> None:
    row = RowText(ByteTokenizer(), ("STOP", "\n\n"))
    pieces, stopped = feed(row, "a STORY, a STOP sign")
    assert stopped and "".join(pieces) == "a STORY, a "
    assert "ST" not in pieces  # held back until "STOR" proved it was no stop string
    pieces, stopped = feed(RowText(ByteTokenizer(), ("STOP",)), "no stop here ST")
    assert not stopped and "".join(pieces) == "no stop here ST"


def byte_model() -> Transformer:
    return tiny_model(vocab_size=ByteTokenizer().vocab_size)


def test_streamed_pieces_join_to_the_completion() -> None:
    model, tokenizer = byte_model(), ByteTokenizer()
    prompts = [tokenizer.encode("def f(x):"), tokenizer.encode("héllo")]
    params = SamplingParams(max_new_tokens=25, temperature=1.0, seed=1)
    joined = ["", ""]
    finished: dict[int, str | None] = {}
    for delta in stream_completions(model, tokenizer, prompts, params):
        assert delta.index not in finished  # nothing comes after a row's last delta
        joined[delta.index] += delta.text
        if delta.finish_reason is not None:
            finished[delta.index] = delta.finish_reason
    completions = complete(model, tokenizer, prompts, params)
    assert [c.text for c in completions] == joined
    assert finished == {0: "length", 1: "length"}
    assert [c.completion_tokens for c in completions] == [25, 25]
    new = generate_batch(model, prompts, params)
    assert joined == [tokenizer.decode(tokens) for tokens in new]


def test_a_stop_string_finishes_its_row_only() -> None:
    model, tokenizer = byte_model(), ByteTokenizer()
    prompts = [tokenizer.encode("abc"), tokenizer.encode("xyz")]
    free = complete(model, tokenizer, prompts, GREEDY)
    stop = free[0].text[5:7]
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop=(stop,))
    stopped = complete(model, tokenizer, prompts, params)
    assert stopped[0].text == free[0].text[: free[0].text.index(stop)]
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].completion_tokens < 20
    if stop not in free[1].text:
        assert stopped[1] == free[1]


def test_a_cancelled_stream_ends_before_the_next_step() -> None:
    model, tokenizer = byte_model(), ByteTokenizer()
    steps = 0

    def cancelled() -> bool:
        nonlocal steps
        steps += 1
        return steps > 3

    params = SamplingParams(max_new_tokens=50, temperature=0.0)
    prompt = [tokenizer.encode("abc")]
    deltas = list(stream_completions(model, tokenizer, prompt, params, cancelled=cancelled))
    assert steps == 4
    assert all(delta.finish_reason is None for delta in deltas)
    full = complete(model, tokenizer, prompt, params)[0].text
    assert full.startswith("".join(delta.text for delta in deltas))


def test_rows_sampled_together_draw_the_tokens_they_draw_alone():
    # Greedy, two temperatures, top-k, top-p, and a repetition penalty, several rows each.
    settings = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.7, seed=2),
        SamplingParams(temperature=1.0, top_k=5, seed=3),
        SamplingParams(temperature=1.3, top_p=0.8, seed=4),
        SamplingParams(temperature=1.0, repetition_penalty=1.5, seed=5),
    ]
    rows = [settings[i % len(settings)] for i in range(15)]
    logits = torch.randn(len(rows), 300, generator=torch.Generator().manual_seed(0)) * 3

    def samplers() -> list[RowSampler]:
        return [RowSampler(p, [7, 8], i, 300, "cpu") for i, p in enumerate(rows)]

    together, alone = samplers(), samplers()
    for _ in range(5):  # the generators move on the same way in both
        expected = [s.pick(logits[i : i + 1]) for i, s in enumerate(alone)]
        assert pick_tokens(together, logits) == expected
    assert len({tuple(pick_tokens(samplers(), logits)) for _ in range(2)}) == 1
    assert len(set(expected)) > 3  # the rows did not all fall on one token
