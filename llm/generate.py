"""Autoregressive generation: prefill the prompt once, then decode one token per step.

The prompt runs through the model in a single forward pass that fills a pre-allocated
KV cache; each later step feeds only the newest token. Sampling draws from its own
`torch.Generator`, so generating never disturbs (or depends on) the global RNG.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llm.config import ModelConfig
from llm.errors import ConfigError, UserError
from llm.model import KVCache, Transformer
from llm.tokenizer import Tokenizer


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. Temperature 0 is greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float = 1.0  # nucleus: keep the fewest tokens whose probability sums to >= top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output
    eos_id: int | None = None  # stop after this token (it is returned)
    stop: tuple[str, ...] = ()  # stop before any of these strings (text generation only)
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
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be positive (got {self.repetition_penalty})")
        if any(not stop for stop in self.stop):
            problems.append("stop strings must not be empty")
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
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One index per row of `probs` (batch, n), with the row's probabilities: the first
    whose cumulative probability passes a uniform draw (inverse CDF; torch.multinomial
    does the same job 4 to 12 times slower on a CPU, for 2k to 32k tokens). An index of
    probability 0 is never drawn: its cumulative probability equals its predecessor's."""
    uniform = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)
    return draw_at(probs, uniform)


def draw_at(probs: Tensor, uniform: Tensor) -> Tensor:
    """`draw` with its uniform numbers (batch, 1) given: row i's from `uniform[i]`."""
    cumulative = probs.cumsum(dim=-1)
    total = cumulative[:, -1:].contiguous()  # searchsorted copies a strided input, and warns
    index = torch.searchsorted(cumulative, uniform.to(total.dtype) * total, right=True)
    # Where rounding takes the draw to the total itself: the last index that adds to it.
    return torch.minimum(index, torch.searchsorted(cumulative, total)).squeeze(-1)


def row_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` of a request seeded with `seed`: each prompt draws from a
    generator of its own, so its text does not depend on its neighbours or their timing."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)
    return int(state[0])


class RowSampler:
    """Picks one row's tokens with the row's own settings and random generator."""

    def __init__(
        self,
        params: SamplingParams,
        prompt: Sequence[int],
        index: int,
        vocab: int,
        device: torch.device | str,
    ) -> None:
        self.params = params
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(row_seed(params.seed, index))
        self.seen: Tensor | None = None  # the tokens a repetition penalty applies to
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, list(prompt)] = True

    @property
    def argmax(self) -> bool:
        """Whether the token is the plain argmax of the logits (greedy, no penalty)."""
        return self.params.temperature == 0 and self.seen is None

    @property
    def settings(self) -> tuple[float, int | None, float] | None:
        """What rows sampled together must share (None: this row samples on its own)."""
        if self.seen is not None or self.params.temperature == 0:
            return None
        return self.params.temperature, self.params.top_k, self.params.top_p

    def pick(self, logits: Tensor) -> int:
        """The next token from this row's logits (1, vocab)."""
        if self.seen is not None:
            logits = penalize_repetition(logits, self.seen, self.params.repetition_penalty)
        token = int(sample_next_token(logits, self.params, self.generator)[0])
        if self.seen is not None:
            self.seen[0, token] = True
        return token


def pick_tokens(samplers: Sequence[RowSampler], logits: Tensor) -> list[int]:
    """The next token of every row of `logits` (rows, vocab), row i with `samplers[i]`.
    Rows whose samplers share their settings are sampled in one pass, each with a uniform
    number from its own generator; the greedy rows take one argmax. Every operation
    treats each row on its own, so a row's token is the one it gets alone."""
    tokens = logits.argmax(-1).tolist()
    groups: dict[tuple[float, int | None, float], list[int]] = {}
    for i, sampler in enumerate(samplers):
        settings = sampler.settings
        if settings is not None:
            groups.setdefault(settings, []).append(i)
        elif not sampler.argmax:  # a repetition penalty: its own logits
            tokens[i] = sampler.pick(logits[i : i + 1])
    for (temperature, top_k, top_p), rows in groups.items():
        filtered = filter_logits(logits[rows].float() / temperature, top_k, top_p)
        uniform = torch.cat(
            [
                torch.rand((1, 1), generator=samplers[i].generator, device=logits.device)
                for i in rows
            ]
        )
        for i, token in zip(rows, draw_at(filtered.softmax(dim=-1), uniform).tolist(), strict=True):
            tokens[i] = token
    return tokens


@contextlib.contextmanager
def generation_mode(model: Transformer) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd bookkeeping; the training mode comes back after.
    A model in eval mode already is left alone: setting a mode walks every module, which a
    decoding step would pay each time."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def penalize_repetition(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Make the tokens marked in `seen` (batch, vocab) less likely: positive logits are
    divided by `penalty`, negative ones multiplied, so a penalty above 1 always lowers them."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def check_prompt(config: ModelConfig, prompt_ids: Sequence[int], name: str = "the prompt") -> None:
    """Refuse a prompt that cannot be continued: empty, over the context, or off-vocabulary."""
    if len(prompt_ids) == 0:
        raise UserError(f"{name} is empty: generation needs at least one token")
    if len(prompt_ids) > config.max_seq_len:
        raise UserError(
            f"{name} has {len(prompt_ids)} tokens, more than the model's context of "
            f"{config.max_seq_len} (left-truncation would keep the last ones)"
        )
    vocab = config.vocab_size or 0
    for i, token in enumerate(prompt_ids):
        if not 0 <= token < vocab:
            raise UserError(f"{name}: token {i} is {token}, outside the vocabulary of {vocab}")


def truncate_prompt(prompt_ids: Sequence[int], context: int, max_new_tokens: int) -> list[int]:
    """The last tokens of a prompt: as many as leave room for `max_new_tokens` in the
    context (but at least one)."""
    keep = max(1, context - max_new_tokens)
    return list(prompt_ids[-keep:])


class BatchDecoder:
    """Generates from a batch of prompts of different lengths at once.

    The prompts are padded on the left, so that every row's next token sits in the same
    column; each row counts its positions from its own first real token and never attends
    to padding, so a row decodes exactly as it would alone. One prefill fills the
    pre-allocated KV cache, then each step feeds one token per row. Iterating yields, per
    step, each row's new token, or None for a row that has finished (eos). Each row samples
    with a generator of its own, as in `stream_completions`.
    """

    def __init__(
        self,
        model: Transformer,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        use_cache: bool = True,
    ) -> None:
        if not prompts:
            raise UserError("no prompts to generate from")
        for i, prompt in enumerate(prompts):
            check_prompt(model.config, prompt, "the prompt" if len(prompts) == 1 else f"prompt {i}")
        self.model, self.params, self.use_cache = model, params, use_cache
        device = next(model.parameters()).device
        width = max(len(prompt) for prompt in prompts)
        pad = [width - len(prompt) for prompt in prompts]
        # Without padding the model may use plain causal attention, its fastest path.
        self.pad = torch.tensor(pad, device=device) if any(pad) else None
        # Padding holds token 0: it is masked out, so any valid id would do.
        rows = [[0] * (width - len(prompt)) + list(prompt) for prompt in prompts]
        self.tokens = torch.tensor(rows, dtype=torch.long, device=device)
        self.max_new_tokens = min(params.max_new_tokens, model.config.max_seq_len - width)
        self.done = [False] * len(prompts)
        vocab = model.config.vocab_size or 0
        self.samplers = [
            RowSampler(params, prompt, i, vocab, device) for i, prompt in enumerate(prompts)
        ]

    def __iter__(self) -> Iterator[list[int | None]]:
        if self.max_new_tokens <= 0:
            return
        cache = None
        if self.use_cache:
            weight = next(self.model.parameters())
            length = self.tokens.shape[1] + self.max_new_tokens
            cache = KVCache(
                self.model.config, len(self.done), length, device=weight.device, dtype=weight.dtype
            )
        step_input = self.tokens
        for _ in range(self.max_new_tokens):
            logits = self.model(step_input, cache, last_only=True, pad=self.pad)[:, -1]
            token = self.next_token(logits)
            yield self.record(token.tolist())
            if all(self.done):
                return
            if self.use_cache:
                step_input = token[:, None]
            else:  # the reference path: recompute the whole sequence every step
                self.tokens = torch.cat((self.tokens, token[:, None]), dim=1)
                step_input = self.tokens

    def next_token(self, logits: Tensor) -> Tensor:
        """One token per row, each drawn by the row's own sampler."""
        if all(sampler.argmax for sampler in self.samplers):
            return logits.argmax(dim=-1)
        picks = [sampler.pick(logits[i : i + 1]) for i, sampler in enumerate(self.samplers)]
        return torch.tensor(picks, device=logits.device)

    def record(self, tokens: list[int]) -> list[int | None]:
        """The step's tokens as seen by the caller; eos finishes its row after it."""
        step: list[int | None] = []
        for row, token in enumerate(tokens):
            if self.done[row]:
                step.append(None)
                continue
            step.append(token)
            if token == self.params.eos_id:
                self.done[row] = True
        return step


def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> list[list[int]]:
    """The new tokens that continue each prompt (the eos token included when reached).

    Prompt and new tokens together fit in the model's context: generation stops early when
    the longest prompt's row is full, and a prompt longer than the context is an error.
    """
    new: list[list[int]] = [[] for _ in prompts]
    with generation_mode(model):
        for step in BatchDecoder(model, prompts, params, use_cache=use_cache):
            for row, token in enumerate(step):
                if token is not None:
                    new[row].append(token)
    return new


def generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    use_cache: bool = True,
) -> list[int]:
    """The new tokens that continue one prompt; see `generate_batch`."""
    return generate_batch(model, [prompt_ids], params, use_cache=use_cache)[0]


@dataclass(frozen=True)
class TextDelta:
    """A piece of one row's new text. The row's last delta carries why it finished
    ("stop": eos or a stop string; "length": the token budget or the context) and how many
    tokens it generated."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    completion_tokens: int


class RowText:
    """The text of one row's new tokens, released piece by piece: a piece never ends inside
    a UTF-8 character (byte-fallback tokens decode to U+FFFD until the character is whole)
    nor inside what may turn out to be a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""
        self.released = 0  # characters of `text` handed out so far

    def add(self, token: int) -> tuple[str, bool]:
        """The newly safe text after `token`, and whether a stop string was reached (the
        text then ends before it, and `ids` keeps only the tokens that wrote that text:
        a stop string is neither shown nor counted)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        hits = [at for at in (self.text.find(stop) for stop in self.stop) if at >= 0]
        if hits:
            end = min(hits)
            del self.ids[self.tokens_writing(end) :]
            return self.release(end), True
        safe = len(self.text.rstrip("\ufffd"))
        safe -= self.stop_prefix_length(self.text[:safe])
        return self.release(safe), False

    def tokens_writing(self, end: int) -> int:
        """The fewest leading tokens whose text reaches character `end` (a token that
        writes the text's last characters and the start of a stop string counts)."""
        low, high = 0, len(self.ids)
        while low < high:
            middle = (low + high) // 2
            if len(self.tokenizer.decode(self.ids[:middle])) >= end:
                high = middle
            else:
                low = middle + 1
        return low

    def stop_prefix_length(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def release(self, end: int) -> str:
        piece = self.text[self.released : max(end, self.released)]
        self.released = max(end, self.released)
        return piece

    def flush(self) -> str:
        return self.release(len(self.text))


def stream_completions(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[TextDelta]:
    """Text pieces continuing each prompt (token ids), as they are generated; the pieces of
    row i joined are its completion. Each row's last delta has its `finish_reason`.

    The prompts decode together on a continuous batcher (`llm.batching`), exactly as
    `llm serve` decodes them: a prompt's text is the same here and there, alone or beside
    others. With a seed, each prompt samples from a generator of its own.

    `cancelled` is asked after every decoding step; once it answers True the stream ends
    at once, without last deltas (a server uses it when its client has gone away).
    """
    from llm.batching import DEFAULT_MAX_BATCH, Batcher  # it builds on this module

    if not prompts:
        raise UserError("no prompts to generate from")
    for i, prompt in enumerate(prompts):
        check_prompt(model.config, prompt, "the prompt" if len(prompts) == 1 else f"prompt {i}")
    batcher = Batcher(model, tokenizer, max_batch=min(len(prompts), DEFAULT_MAX_BATCH))
    for i, prompt in enumerate(prompts):
        batcher.add(prompt, params, index=i)
    while batcher.rows():
        deltas = [delta for _, delta in batcher.step()]
        if cancelled is not None and cancelled():
            return
        yield from deltas


def complete(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
) -> list[Completion]:
    """The whole completion of each prompt; see `stream_completions`."""
    pieces: list[list[str]] = [[] for _ in prompts]
    completions: dict[int, Completion] = {}
    for delta in stream_completions(model, tokenizer, prompts, params):
        pieces[delta.index].append(delta.text)
        if delta.finish_reason is not None:
            text = "".join(pieces[delta.index])
            completions[delta.index] = Completion(
                text, delta.finish_reason, delta.completion_tokens
            )
    return [completions[i] for i in range(len(prompts))]


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
    prompt = [prompt_ids.tolist()]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    with generation_mode(model):
        # An untimed warm-up, so one-off kernel selection and allocations are not counted.
        list(BatchDecoder(model, prompt, SamplingParams(max_new_tokens=2, temperature=0.0)))
        stream = iter(BatchDecoder(model, prompt, params))
        next(stream)  # the prefill and the token it predicts
        # Every step reads its token back to the host, so the clock sees finished work.
        start = time.perf_counter()
        decoded = sum(1 for _ in stream)
        elapsed = time.perf_counter() - start
    return decoded / elapsed
