"""Autoregressive generation: prefill the prompt once, then decode one token per step.

The prompt runs through the model in a single forward pass that fills a pre-allocated
KV cache; each later step feeds only the newest token. Sampling draws from its own
`torch.Generator`, so generating never disturbs (or depends on) the global RNG.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llm.errors import ConfigError, UserError
from llm.model import KVCache, Transformer


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Temperature 0 is greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float = 1.0  # nucleus: keep the fewest tokens whose probability sums to >= top_p
    eos_id: int | None = None  # stop after this token (it is returned)
    seed: int | None = None  # None: a fresh random seed for every call

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must not be negative (got {self.max_new_tokens})")
        if not self.temperature >= 0:
            problems.append(f"temperature must not be negative (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be at least 1 (got {self.top_k})")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if problems:
            raise ConfigError("invalid sampling params: " + "; ".join(problems))


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float = 1.0) -> Tensor:
    """Set to -inf the logits of tokens outside the top-k and outside the nucleus."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # A token is dropped when the more likely tokens already reach top_p without it.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> Tensor:
    """One token id per row of `logits` (batch, vocab)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@contextlib.contextmanager
def generation_mode(model: Transformer) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd bookkeeping; the training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def prompt_tensor(model: Transformer, prompt_ids: Sequence[int]) -> Tensor:
    """The prompt as a tensor on the model's device, after checking it can be continued."""
    config = model.config
    if len(prompt_ids) == 0:
        raise UserError("the prompt is empty: generation needs at least one token")
    if len(prompt_ids) > config.max_seq_len:
        raise UserError(
            f"the prompt has {len(prompt_ids)} tokens, more than the model's context "
            f"of {config.max_seq_len}"
        )
    vocab = config.vocab_size or 0
    for i, token in enumerate(prompt_ids):
        if not 0 <= token < vocab:
            raise UserError(f"prompt token {i} is {token}, outside the vocabulary of {vocab}")
    device = next(model.parameters()).device
    return torch.tensor(list(prompt_ids), dtype=torch.long, device=device)


def token_stream(
    model: Transformer, prompt: Tensor, params: SamplingParams, *, use_cache: bool = True
) -> Iterator[int]:
    """Yield new token ids until eos, `max_new_tokens` or a full context. Run it inside
    `generation_mode`; the first token comes from the prefill, each later one from a
    single decode step."""
    n_new = min(params.max_new_tokens, model.config.max_seq_len - len(prompt))
    if n_new <= 0:
        return
    generator = torch.Generator(device=prompt.device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    cache = None
    if use_cache:
        weight = next(model.parameters())
        cache = KVCache(
            model.config, 1, len(prompt) + n_new, device=prompt.device, dtype=weight.dtype
        )
    sequence = prompt[None]
    step_input = sequence
    for _ in range(n_new):
        logits = model(step_input, cache, last_only=True)[:, -1]
        token = sample_next_token(logits, params, generator)
        token_id = int(token.item())
        yield token_id
        if token_id == params.eos_id:
            return
        if use_cache:
            step_input = token[None]
        else:
            # The reference path: recompute the whole sequence every step.
            sequence = torch.cat((sequence, token[None]), dim=1)
            step_input = sequence


def generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> list[int]:
    """The new tokens that continue `prompt_ids` (the eos token included when reached).

    Prompt and new tokens together fit in the model's context: generation stops early
    when it is full, and a prompt longer than the context is an error.
    """
    prompt = prompt_tensor(model, prompt_ids)
    with generation_mode(model):
        return list(token_stream(model, prompt, params, use_cache=use_cache))


def decode_tokens_per_second(
    model: Transformer,
    *,
    prompt_len: int = 32,
    new_tokens: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """Cached greedy decoding speed at batch size 1, prefill excluded.

    `device` (default: where the model is) moves the model there, as `model.to` does.
    On a short context the prompt is cut to half of it and the new tokens to the rest.
    """
    if device is not None:
        model.to(device)
    max_len = model.config.max_seq_len
    prompt_len = min(prompt_len, max_len // 2)
    new_tokens = min(new_tokens, max_len - prompt_len)
    if prompt_len < 1 or new_tokens < 2:
        raise ValueError(
            f"cannot time decoding in a context of {max_len} tokens "
            f"(prompt {prompt_len}, new tokens {new_tokens})"
        )
    rng = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(model.config.vocab_size or 1, (prompt_len,), generator=rng)
    prompt = prompt_tensor(model, prompt_ids.tolist())
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    with generation_mode(model):
        # An untimed warm-up, so one-off kernel selection and allocations are not counted.
        list(token_stream(model, prompt, SamplingParams(max_new_tokens=2, temperature=0.0)))
        stream = token_stream(model, prompt, params)
        next(stream)  # the prefill and the token it predicts
        # Every step reads its token back to the host, so the clock sees finished work.
        start = time.perf_counter()
        decoded = sum(1 for _ in stream)
        elapsed = time.perf_counter() - start
    return decoded / elapsed
