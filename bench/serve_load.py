"""Serving under load: `llm serve` with continuous batching, beside the same server one
request at a time (`--max-batch 1`) and transformers' `generate` on a static batch.

Two models with random weights: the shape of configs/tiny.yaml and the shape of the small
preset, both with a context of 512 (prompts of up to 256 tokens, 128 new tokens, the chat
template's words), each with a BPE tokenizer of its preset's vocabulary trained on
builtin:python-docs. Closed-loop clients (each sends its next request when its last one
ended; after a 503 it waits the Retry-After first) at 1, 4, 16 and 64 concurrent, for
`--seconds` per level (every system at a level, then the next level, so that a machine
whose speed drifts over the run moves the systems of one level alike), stream chat and
completions requests from a fixed seeded mix of
prompts of 16 to 256 tokens, 128 new tokens each (sampled at temperature 1; a random model
may end one early with its end token). Per level and server: new tokens/s of all the
answers, time to first token and time per output token (p50, p99), the answers by status
(200 within 30 s, 503, 500), and the CPU seconds the server (with its engine's process)
and this load generator used (they share the machine's cores). transformers' `generate`
runs a static batch of the level's size (left-padded prompts of the same mix, 128 sampled
tokens each), and beside it the server's continuous batcher on the same prompts in this
process, without HTTP (`ours, no HTTP`: what the server's decoding costs, apart from
serving). Last, the lone-request decode speed of the text path (batch-invariant: see
docs/serving.md) beside the static decoder's, and the goals of issue 26 checked. Both
servers decode in an engine process of their own (`llm serve`'s default; with
`--thread-engine`, the batching server with its engine on a thread of the HTTP process
too) on `llm serve`'s own number of threads (every core but one, which the HTTP server
keeps) unless `--server-threads` says otherwise; transformers on `--threads` (2: every
core, its default).

    python bench/serve_load.py              # both models: about 15 minutes on 2 cores
    python bench/serve_load.py --quick      # the tiny shape, short levels: a sanity check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from llm.batching import Batcher
from llm.checkpoint import load_model_dir, save_model_dir
from llm.data import read_corpus
from llm.export import export_hf
from llm.generate import SamplingParams, complete, generate, generation_mode
from llm.model import Transformer
from llm.presets import preset_config
from llm.tokenizer import SentencePieceTokenizer, Tokenizer

CONTEXT = 512
NEW_TOKENS = 128
PROMPT_TOKENS = (16, 256)
ANSWER_WITHIN_S = 30.0
REQUEST_TIMEOUT_S = 120.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the tiny shape, 4 s per level")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="per level and server")
    p.add_argument("--max-batch", type=int, default=64, help="the batching server's")
    p.add_argument("--queue-size", type=int, default=64, help="both servers'")
    p.add_argument("--threads", type=int, default=2, help="transformers' (its default: every core)")
    p.add_argument(
        "--server-threads",
        type=int,
        help="`llm serve --threads` of both servers (default: serve's own, the cores less one)",
    )
    p.add_argument(
        "--thread-engine",
        action="store_true",
        help="also the batching server with its engine on a thread of its HTTP process "
        "(`llm serve --engine thread`)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.presets, args.seconds = ["tiny"], 4.0
    return args


@dataclass(frozen=True)
class Prompt:
    chat: bool
    ids: list[int]
    text: str

    def request(self) -> tuple[str, dict[str, object]]:
        """The endpoint and body of a streamed request for this prompt."""
        common = {"max_tokens": NEW_TOKENS, "stream": True, "temperature": 1.0}
        common["stream_options"] = {"include_usage": True}
        if self.chat:
            return "/v1/chat/completions", {
                "messages": [{"role": "user", "content": self.text}]
            } | common
        return "/v1/completions", {"prompt": self.ids} | common


def build_model_dir(preset: str, folder: Path, texts: list[str]) -> Path:
    """A random model of `preset`'s shape with a context of CONTEXT, and a BPE tokenizer
    of its vocabulary, saved as a model directory."""
    config = preset_config(preset)
    tokenizer = SentencePieceTokenizer.train("bpe", texts, config.data.vocab_size)
    model_config = dataclasses.replace(
        config.model, vocab_size=tokenizer.vocab_size, max_seq_len=CONTEXT
    )
    torch.manual_seed(0)
    save_model_dir(folder / preset, Transformer(model_config), tokenizer)
    return folder / preset


def prompt_mix(tokenizer: Tokenizer, texts: list[str], count: int, seed: int) -> list[Prompt]:
    """`count` prompts, half chat and half completions in a seeded order, each a window of
    16 to 256 tokens of the corpus."""
    rng = random.Random(seed)
    corpus = [ids for ids in tokenizer.encode_batch(texts) if len(ids) > PROMPT_TOKENS[1]]
    prompts = []
    for _ in range(count):
        ids = rng.choice(corpus)
        length = rng.randint(*PROMPT_TOKENS)
        start = rng.randrange(len(ids) - length)
        window = ids[start : start + length]
        prompts.append(Prompt(rng.random() < 0.5, window, tokenizer.decode(window)))
    return prompts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def llm_serve(
    model_dir: Path, max_batch: int, queue_size: int, threads: int | None, engine: str
) -> Iterator[tuple[str, int]]:
    """`llm serve` in a process of its own; its URL and process id."""
    port = free_port()
    command = [sys.executable, "-m", "llm.cli", "serve", str(model_dir), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--queue-size", str(queue_size), "--device", "cpu"]
    command += ["--threads", str(threads)] if threads else []
    command += ["--engine", engine]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"llm serve did not start: {server.stderr.read().decode()[-2000:]}"
                )
            time.sleep(0.2)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(60)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of process `pid` and the processes it started (the
    server's engine runs in one of its own), on Linux."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == str(pid) or int(fields[1]) == pid:  # itself, a child
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Answer:
    status: int
    seconds: float
    tokens: int = 0
    first_token_s: float | None = None
    per_token_s: float | None = None
    retry_after: bool = False


async def send(http: httpx.AsyncClient, prompt: Prompt) -> Answer:
    """One streamed request, timed."""
    path, body = prompt.request()
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with http.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            retry = "retry-after" in response.headers
            return Answer(response.status_code, time.perf_counter() - start, retry_after=retry)
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return Answer(500, time.perf_counter() - start)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                text = choice["delta"].get("content") if "delta" in choice else choice["text"]
                if text:
                    last = time.perf_counter()
                    first = first or last
    answer = Answer(200, time.perf_counter() - start, tokens)
    if first is not None and last is not None:
        answer.first_token_s = first - start
        if tokens > 1:
            answer.per_token_s = (last - first) / (tokens - 1)
    return answer


async def client(
    http: httpx.AsyncClient, mix: Iterator[Prompt], stop_at: float, answers: list[Answer]
) -> None:
    """A closed-loop client: its next request (the mix's next prompt) as soon as its last
    one ended, or a second after a 503 that says to retry."""
    while time.perf_counter() < stop_at:
        try:
            answer = await send(http, next(mix))
        except httpx.HTTPError:
            answer = Answer(0, REQUEST_TIMEOUT_S)
        answers.append(answer)
        if answer.status == 503 and answer.retry_after:
            await asyncio.sleep(1.0)


@dataclass
class Level:
    system: str
    clients: int
    answers: list[Answer] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    load_cpu_s: float = 0.0


async def run_level(
    url: str, pid: int, prompts: list[Prompt], level: Level, seconds: float
) -> None:
    limits = httpx.Limits(max_connections=level.clients + 4)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        server_cpu, load_cpu, start = cpu_seconds(pid), time.process_time(), time.perf_counter()
        mix = itertools.cycle(prompts)
        tasks = [client(http, mix, start + seconds, level.answers) for _ in range(level.clients)]
        await asyncio.gather(*tasks)
        level.wall_s = time.perf_counter() - start
        level.server_cpu_s = cpu_seconds(pid) - server_cpu
        level.load_cpu_s = time.process_time() - load_cpu


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Figures:
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float

    def row(self) -> str:
        ms = 1000
        return (
            f"{self.tokens_per_s:9.0f} {self.ttft_p50 * ms:8.0f} {self.ttft_p99 * ms:8.0f} "
            f"{self.tpot_p50 * ms:8.1f} {self.tpot_p99 * ms:8.1f}"
        )


def served_figures(level: Level) -> Figures:
    ok = [a for a in level.answers if a.status == 200]
    ttft = [a.first_token_s for a in ok if a.first_token_s is not None]
    tpot = [a.per_token_s for a in ok if a.per_token_s is not None]
    return Figures(
        sum(a.tokens for a in ok) / level.wall_s,
        percentile(ttft, 0.5),
        percentile(ttft, 0.99),
        percentile(tpot, 0.5),
        percentile(tpot, 0.99),
    )


def statuses(level: Level) -> str:
    answers = level.answers
    in_time = sum(a.status == 200 and a.seconds <= ANSWER_WITHIN_S for a in answers)
    late = sum(a.status == 200 for a in answers) - in_time
    refused = sum(a.status == 503 for a in answers)
    without_retry = sum(a.status == 503 and not a.retry_after for a in answers)
    failed = sum(a.status == 500 for a in answers)
    other = len(answers) - in_time - late - refused - failed
    text = f"{in_time}/{len(answers)} 200 in {ANSWER_WITHIN_S:.0f}s, {late} late, {refused} 503"
    if without_retry:
        text += f" ({without_retry} without Retry-After)"
    return text + f", {failed} 500, {other} other"


def hf_figures(hf_model: torch.nn.Module, prompts: list[Prompt], batch: int) -> Figures:
    """transformers' `generate` on one static batch: its tokens/s, its first token (a
    call for one token) and its time per token after that."""
    rows = [p.ids for p in prompts[:batch]]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def seconds(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            hf_model.generate(
                input_ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
        return time.perf_counter() - start

    first = seconds(1)
    whole = seconds(NEW_TOKENS)
    per_token = (whole - first) / (NEW_TOKENS - 1)
    return Figures(batch * NEW_TOKENS / whole, first, first, per_token, per_token)


def batcher_tokens_per_s(model: Transformer, tokenizer: Tokenizer, prompts: list[Prompt]) -> float:
    """New tokens/s of the server's continuous batcher in this process, without HTTP: the
    prompts (their ids, chat or not) decoded together to NEW_TOKENS sampled tokens each,
    from the first prefill to the last token, as transformers' static batch is timed."""
    batcher = Batcher(model, tokenizer, max_batch=len(prompts))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, seed=0)
    with generation_mode(model):
        start = time.perf_counter()
        rows = [batcher.add(p.ids, params, index=i) for i, p in enumerate(prompts)]
        while batcher.rows():
            batcher.step()
        seconds = time.perf_counter() - start
    return sum(len(row.text.ids) for row in rows) / seconds


def lone_decode_speeds(model_dir: Path) -> tuple[float, float]:
    """Tokens/s of one greedy prompt: the text path (batch-invariant, as served) and the
    static decoder (`generate`), best of 3 each."""
    model, tokenizer, _ = load_model_dir(model_dir)
    assert tokenizer is not None
    prompt = list(range(10, 42))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0)
    speeds = {"text": 0.0, "static": 0.0}
    with generation_mode(model):
        for _ in range(3):
            start = time.perf_counter()
            complete(model, tokenizer, [prompt], params)
            speeds["text"] = max(speeds["text"], NEW_TOKENS / (time.perf_counter() - start))
            start = time.perf_counter()
            generate(model, prompt, params)
            speeds["static"] = max(speeds["static"], NEW_TOKENS / (time.perf_counter() - start))
    return speeds["text"], speeds["static"]


HEADER = (
    f"{'clients':>7} {'system':<15} {'tok/s':>9} {'ttft p50':>8} {'ttft p99':>8} "
    f"{'tpot p50':>8} {'tpot p99':>8}  (ms)   server/load-gen CPU s   answers"
)


def serve_level(
    url: str, pid: int, system: str, clients: int, prompts: list[Prompt], args: argparse.Namespace
) -> Level:
    level = Level(system, clients)
    asyncio.run(run_level(url, pid, prompts, level, args.seconds))
    print(
        f"{clients:7d} {system:<15} {served_figures(level).row()}  "
        f"{level.server_cpu_s:8.1f} / {level.load_cpu_s:5.1f}   {statuses(level)}",
        flush=True,
    )
    return level


def compare(preset: str, folder: Path, texts: list[str], args: argparse.Namespace) -> None:
    """Every system at one level, then the next level: the servers run side by side (each
    idle while another is measured), so that a machine whose speed drifts over the run
    moves every system of a level alike."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model_dir = build_model_dir(preset, folder, texts)
    model, tokenizer, config = load_model_dir(model_dir)
    assert tokenizer is not None
    prompts = prompt_mix(tokenizer, texts, 256, args.seed)
    params = config.param_count().total
    print(
        f"\n== {preset} shape: {config.n_layers} layers, d_model {config.d_model}, "
        f"vocab {config.vocab_size}, {params / 1e6:.1f}M parameters, context {CONTEXT}; "
        f"{args.seconds:.0f} s per level; batching server --max-batch {args.max_batch}, "
        f"both --queue-size {args.queue_size} and --threads {args.server_threads or 'default'}; "
        f"transformers on {args.threads} threads",
        flush=True,
    )
    print(HEADER, flush=True)
    systems = [("batched", args.max_batch, "process"), ("one-at-a-time", 1, "process")]
    if args.thread_engine:
        systems.insert(1, ("batched, thread", args.max_batch, "thread"))
    torch.set_num_threads(args.threads)
    hf_model = LlamaForCausalLM.from_pretrained(export_hf(model_dir, folder / f"{preset}-hf"))
    hf_model.eval()
    served: dict[str, dict[int, Level]] = {system: {} for system, _, _ in systems}
    hf = {}
    with contextlib.ExitStack() as stack:
        servers = {
            system: stack.enter_context(
                llm_serve(model_dir, max_batch, args.queue_size, args.server_threads, engine)
            )
            for system, max_batch, engine in systems
        }
        for clients in args.clients:
            for system, (url, pid) in servers.items():
                served[system][clients] = serve_level(url, pid, system, clients, prompts, args)
            hf[clients] = hf_figures(hf_model, prompts, clients)
            print(
                f"{clients:7d} {'transformers':<15} {hf[clients].row()}  (static batch)",
                flush=True,
            )
            rate = batcher_tokens_per_s(model, tokenizer, prompts[:clients])
            print(
                f"{clients:7d} {'ours, no HTTP':<15} {rate:9.0f}  (continuous batching)",
                flush=True,
            )
        for system, (url, _) in servers.items():
            alive = httpx.get(f"{url}/health", timeout=5).status_code == 200
            print(f"{'':7} {system:<15} alive after the last level: {alive}", flush=True)
    text, static = lone_decode_speeds(model_dir)
    print(f"lone greedy decode: text path {text:.0f} tok/s, static decoder {static:.0f} tok/s")
    check_goals(served["batched"], served["one-at-a-time"], hf)


def check_goals(
    batched: dict[int, Level], single: dict[int, Level], hf: dict[int, Figures]
) -> None:
    """Issue 26's goals, against the figures just measured."""
    if 16 in batched:
        ours = served_figures(batched[16])
        versus_single = ours.tokens_per_s / served_figures(single[16]).tokens_per_s
        print(f"16 clients: {versus_single:.2f}x one-at-a-time's tokens/s (goal >= 4)")
        versus_hf = ours.tokens_per_s / hf[16].tokens_per_s
        print(f"16 clients: {versus_hf:.2f}x transformers' static batch of 16 (goal >= 1)")
        if 1 in batched:
            lone = served_figures(batched[1]).tpot_p50
            ratio = ours.tpot_p99 / lone
            print(f"16 clients: p99 time per token {ratio:.2f}x a lone request's (goal <= 3)")
    if 64 in batched:
        answers = batched[64].answers
        in_time = sum(a.status == 200 and a.seconds <= ANSWER_WITHIN_S for a in answers)
        share = 100 * in_time / max(1, len(answers))
        print(f"64 clients: {share:.1f}% answered 200 within 30 s (goal >= 90%)")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} cores")
    texts = [doc.text for doc in read_corpus("builtin:python-docs")]
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            compare(preset, Path(folder), texts, args)
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
