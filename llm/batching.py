"""Continuous batching: many generations decode together, each joining the batch as soon
as there is room and leaving it the step it finishes (as vLLM and TGI serve).

A `Batcher` holds `Row`s (one prompt's generation each) in three lists: waiting,
prefilling and decoding. Every `step`:

1. admits waiting rows, in arrival order, while fewer than `max_batch` are in flight;
2. prefills: feeds prompts through a one-row `KVCache` each, in pieces of at most
   `prefill_chunk` tokens, until `prefill_budget` tokens have gone in this step, so that a
   burst of long prompts delays the running rows by a bounded amount per step; a row whose
   prompt is in samples its first token and moves into a slot of the shared `SlotCache`;
3. decodes one token for every decoding row in one forward pass;
4. retires the rows that finished (eos, a stop string, their token budget, the context)
   at once, freeing their slots for the next step's admissions.

A row's arithmetic does not depend on its neighbours, so a request decodes to the same
text alone or inside any batch (greedy, or sampled with a seed):
- each prompt is prefilled alone, in pieces whose bounds depend on the prompt only;
- the decode batch is padded with idle slots to a multiple of `ROW_MULTIPLE` rows: MKL's
  float32 matrix multiply computes a row identically in every call whose row count is a
  multiple of 4, but one row alone (a matrix-vector product) or a tail of 1 to 3 rows in
  another order (measured with MKL 2024 on AVX-512; see docs/serving.md);
- decode attention is written out (`ragged_attention`), not SDPA's fused CPU kernel,
  whose result for a row depends on which thread computed it, over keys read in whole
  blocks (`SlotCache`);
- each row samples from its own logits with its own random generator.
Mixture-of-experts models are the exception: an expert's matrix multiply sees as many rows
as the whole batch routed to it, so their outputs inside a batch may differ from alone by
rounding. On a GPU the matrix multiplies are not batch-invariant either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llm.generate import (
    RowSampler,
    RowText,
    SamplingParams,
    TextDelta,
    generation_mode,
    pick_tokens,
)
from llm.model import KVCache, SlotCache, Transformer
from llm.tokenizer import Tokenizer

DEFAULT_MAX_BATCH = 16
PREFILL_CHUNK = 256  # tokens of one prompt per forward pass
ROW_MULTIPLE = 4


@dataclass(eq=False)
class Row:
    """One prompt's generation. `index` is the prompt's place in its request and `owner`
    whoever asked for it; the rest is the batcher's bookkeeping."""

    prompt: list[int]
    params: SamplingParams
    index: int
    owner: Any
    text: RowText
    sampler: RowSampler
    max_new: int  # the token budget: max_new_tokens, or less where the context ends
    cache: KVCache | None = None  # while its prompt goes in
    fed: int = 0  # prompt tokens prefilled
    slot: int = -1  # its slot in the SlotCache while it decodes
    token: int = -1  # the last token sampled: the next step's input
    sampled: int = 0


class Batcher:
    """Decodes any number of rows, at most `max_batch` at once; see the module docstring.
    Not thread-safe: one thread adds, cancels and steps."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_budget: int = PREFILL_CHUNK,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if max_batch < 1 or prefill_budget < 1 or prefill_chunk < 1:
            raise ValueError("max_batch, prefill_budget and prefill_chunk must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.prefill_budget, self.prefill_chunk = (
            max_batch,
            prefill_budget,
            prefill_chunk,
        )
        weight = next(model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        slots = -(-max_batch // ROW_MULTIPLE) * ROW_MULTIPLE
        self.cache = SlotCache(model.config, slots, device=self.device, dtype=self.dtype)
        self.waiting: deque[Row] = deque()
        self.prefilling: list[Row] = []
        self.decoding: list[Row] = []  # decoding[i] sits in slot i

    def add(
        self, prompt: Sequence[int], params: SamplingParams, *, index: int = 0, owner: Any = None
    ) -> Row:
        """Queue a prompt (already checked: not empty, in the context and the vocabulary)."""
        config = self.model.config
        row = Row(
            prompt=list(prompt),
            params=params,
            index=index,
            owner=owner,
            text=RowText(self.tokenizer, params.stop),
            sampler=RowSampler(params, prompt, index, config.vocab_size or 0, self.device),
            max_new=min(params.max_new_tokens, config.max_seq_len - len(prompt)),
        )
        self.waiting.append(row)
        return row

    def rows(self) -> list[Row]:
        return [*self.waiting, *self.prefilling, *self.decoding]

    @property
    def running(self) -> int:
        """Rows admitted: prefilling or decoding."""
        return len(self.prefilling) + len(self.decoding)

    def cancel(self, row: Row) -> None:
        """Drop `row` wherever it is; its slot is free for the next step."""
        if row in self.waiting:
            self.waiting.remove(row)
        elif row in self.prefilling:
            self.prefilling.remove(row)
        elif row in self.decoding:
            self.release(row)

    def clear(self) -> list[Row]:
        """Drop every row (after a failed step, whose state is unknown); they are returned."""
        rows = self.rows()
        self.waiting.clear()
        self.prefilling.clear()
        self.decoding.clear()
        return rows

    def step(self) -> list[tuple[Row, TextDelta]]:
        """One round of admission, prefill and decoding; the text it made, per row. A row's
        last delta has its finish_reason; after it the row is gone from the batcher."""
        while self.waiting and self.running < self.max_batch:
            self.prefilling.append(self.waiting.popleft())
        events: list[tuple[Row, TextDelta]] = []
        with generation_mode(self.model):
            self.prefill(events)
            if self.decoding:
                self.decode(events)
        return events

    def prefill(self, events: list[tuple[Row, TextDelta]]) -> None:
        """Feed prompt pieces, first come first served, until this step's budget is spent
        (the first piece of a step goes in whatever its length)."""
        budget = self.prefill_budget
        while self.prefilling:
            row = self.prefilling[0]
            if row.max_new <= 0:  # the prompt fills the context: nothing to generate
                self.prefilling.pop(0)
                events.append((row, TextDelta(row.index, "", "length", 0)))
                continue
            chunk = row.prompt[row.fed : row.fed + self.prefill_chunk]
            if len(chunk) > budget and budget < self.prefill_budget:
                return
            budget -= len(chunk)
            if row.cache is None:
                row.cache = KVCache(
                    self.model.config, 1, len(row.prompt), device=self.device, dtype=self.dtype
                )
            tokens = torch.tensor([chunk], device=self.device)
            logits = self.model(tokens, row.cache, last_only=True)[:, -1]
            row.fed += len(chunk)
            if row.fed == len(row.prompt):
                self.prefilling.pop(0)
                if not self.accept(row, row.sampler.pick(logits), events):
                    row.slot = len(self.decoding)
                    self.cache.load(row.slot, row.cache)
                    self.decoding.append(row)
                row.cache = None

    def decode(self, events: list[tuple[Row, TextDelta]]) -> None:
        rows = list(self.decoding)
        padded = -(-len(rows) // ROW_MULTIPLE) * ROW_MULTIPLE
        for idle in range(len(rows), padded):  # an idle slot decodes from position 0
            self.cache.lengths[idle] = 0
        self.cache.active = padded
        inputs = [row.token for row in rows] + [0] * (padded - len(rows))
        logits = self.model(torch.tensor(inputs, device=self.device)[:, None], self.cache)
        tokens = pick_tokens([row.sampler for row in rows], logits[: len(rows), -1])
        finished = [
            row for row, token in zip(rows, tokens, strict=True) if self.accept(row, token, events)
        ]
        for row in finished:
            self.release(row)

    def accept(self, row: Row, token: int, events: list[tuple[Row, TextDelta]]) -> bool:
        """Add a sampled token to the row's text; whether that finished the row."""
        row.sampled += 1
        row.token = token
        text = row.text
        if token == row.params.eos_id:
            events.append((row, TextDelta(row.index, text.flush(), "stop", len(text.ids) + 1)))
            return True
        piece, stopped = text.add(token)
        if stopped:
            events.append((row, TextDelta(row.index, piece, "stop", len(text.ids))))
            return True
        if row.sampled >= row.max_new:
            events.append(
                (row, TextDelta(row.index, piece + text.flush(), "length", len(text.ids)))
            )
            return True
        if piece:
            events.append((row, TextDelta(row.index, piece)))
        return False

    def release(self, row: Row) -> None:
        """Take a decoding row out; the last slot's row moves into its slot, so that the
        decoding rows always fill the first slots."""
        last = self.decoding.pop()
        if last is not row:
            self.cache.move(last.slot, row.slot)
            last.slot = row.slot
            self.decoding[row.slot] = last
        row.slot = -1
