"""`llm`: prepare data, train, evaluate and generate with the in-house stack."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llm.cli_support import CommandLine, without_option
from llm.data import TokenSplits
from llm.errors import CheckpointError, UserError
from llm.tokenizer import Tokenizer, replace_undecodable
from llm.tracking import TRACKERS

if TYPE_CHECKING:
    from llm.generate import SamplingParams
    from llm.generation_metrics import GenerationScores
    from llm.model import Transformer
    from llm.train import TrainOutcome


MODEL_DIR_HELP = "a model directory: model.json, model.safetensors, tokenizer/"
DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto: CUDA, then MPS, then the CPU"
TRACKER_HELP = "also write the curves for TensorBoard or as an offline W&B run"


def main(argv: list[str] | None = None) -> int:
    return build_command_line().main(argv)


def build_command_line() -> CommandLine:
    cli = CommandLine("llm", __doc__)
    for add_command in (
        add_prepare,
        add_train,
        add_eval,
        add_generate,
        add_continue,
        add_sft,
        add_chat,
        add_export,
        add_serve,
    ):
        add_command(cli)
    return cli


def add_prepare(cli: CommandLine) -> None:
    prepare = cli.command(
        "prepare",
        cmd_prepare,
        "train a tokenizer and tokenize a corpus",
        "Train a tokenizer on a corpus's training split and tokenize both splits (meta.json "
        "counts the tokens it could not represent: unknown).",
    )
    prepare.add_argument("--corpus", required=True, help="builtin:python-docs, a file, a folder…")
    prepare.add_argument(
        "--tokenizer",
        choices=["bpe", "unigram", "wordpiece", "char", "byte"],
        default="bpe",
        help="the tokenizer kind",
    )
    prepare.add_argument("--vocab-size", type=int, default=2048, help="the vocabulary size asked")
    prepare.add_argument(
        "--val-fraction", type=float, default=0.1, help="the share of documents held out"
    )
    prepare.add_argument("--out", type=Path, required=True, help="the folder to write")


def add_train(cli: CommandLine) -> None:
    train = cli.command(
        "train",
        cmd_train,
        "train a model from a YAML config",
        "Train a model from a config file (sections data, model and train), or from a preset, "
        "into a model directory.",
    )
    train.add_argument("config", type=Path, nargs="?", help="e.g. configs/tiny.yaml")
    train.add_argument(
        "--preset",
        help="train a preset of configs/ instead (nano, tiny, small, base), or auto: the "
        "largest this machine trains at a useful speed",
    )
    add_overrides_option(
        train, "KEY=VALUE", "override a config value, e.g. --set train.max_steps=100"
    )
    train.add_argument(
        "--out", type=Path, help="output folder (default: results/CONFIG_STEM or PRESET)"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    add_nproc_option(train)
    train.add_argument(
        "--tracker",
        choices=TRACKERS,
        default="none",
        help="also write the loss, learning rate, throughput and evaluations for TensorBoard "
        "(OUT/tensorboard/; tensorboard --logdir results/) or as an offline W&B run "
        "(OUT/wandb/: nothing is sent; wandb sync OUT/wandb/offline-run-* uploads it when you "
        'choose); both need pip install -e ".[tracking]"',
    )


def add_eval(cli: CommandLine) -> None:
    evaluate = cli.command(
        "eval",
        cmd_eval,
        "print a model's validation metrics as JSON",
        "Loss, perplexity, bits per byte and accuracy as JSON: on all of a corpus (held-out "
        "text: comparable with any tool's loss on that file), or on the validation split "
        "training held out; with --generation, greedy completions of each record's prompt "
        "scored against its reference: corpus BLEU (sacrebleu), mean ROUGE-L F-measure "
        "(rouge-score) and exact match.",
    )
    evaluate.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    evaluate.add_argument(
        "--corpus", help="evaluate on this corpus, all of it (default: the training corpus)"
    )
    evaluate.add_argument(
        "--split",
        choices=["all", "val"],
        help="all of the corpus, or its validation split as training would hold it out "
        "(default: all with --corpus, else val)",
    )
    evaluate.add_argument(
        "--generation",
        type=Path,
        metavar="FILE.jsonl",
        help="instead: generate greedily from each record's prompt and score against its "
        "reference (BLEU, ROUGE-L, exact match)",
    )
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=64, help="with --generation (default 64)"
    )
    evaluate.add_argument(
        "--stop", action="append", default=[], help="with --generation: stop before this text"
    )
    evaluate.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_generate(cli: CommandLine) -> None:
    generate = cli.command(
        "generate",
        cmd_generate,
        "continue prompts, streaming the text",
        "Continue a prompt, streaming the text; several prompts run as one batch and print as "
        "JSON lines.",
    )
    generate.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    generate.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        required=True,
        help="repeatable: several prompts are generated as one batch, printed as JSON lines",
    )
    add_sampling_arguments(generate, temperature=0.8)
    generate.add_argument(
        "--truncate",
        action="store_true",
        help="keep the end of a prompt longer than the context instead of refusing it",
    )
    generate.add_argument(
        "--chat",
        action="store_true",
        help="take each prompt as a user's message in the model's chat template; print the reply",
    )


def add_continue(cli: CommandLine) -> None:
    more = cli.command(
        "continue",
        cmd_continue,
        "train a model further on new text, growing its vocabulary",
        "More pretraining on new text, optionally with new tokens learned from it; prints "
        "bits per byte on the old and new validation text before and right after the "
        "expansion.",
    )
    more.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    more.add_argument("--corpus", required=True, help="the new text: a file, a folder, builtin:…")
    more.add_argument("--out", type=Path, required=True, help="the model directory to write")
    more.add_argument(
        "--expand-vocab",
        type=int,
        default=0,
        metavar="N",
        help="append up to N tokens learned from the new text (default 0: keep the vocabulary)",
    )
    add_overrides_option(
        more, "train.KEY=VALUE", "a training setting, e.g. --set train.max_steps=1000"
    )
    more.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    more.add_argument("--tracker", choices=TRACKERS, default="none", help=TRACKER_HELP)


def add_sft(cli: CommandLine) -> None:
    sft = cli.command(
        "sft",
        cmd_sft,
        "instruction-tune a model on conversations (JSON lines)",
        "Instruction tuning on conversations: the tuned model (LoRA merged) or, with "
        "--adapter-only, the adapter alone, with its chat template.",
    )
    sft.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    sft.add_argument(
        "--data",
        type=Path,
        required=True,
        help='records {"prompt", "response"} or {"messages": [{"role", "content"}, ...]}',
    )
    sft.add_argument("--out", type=Path, required=True, help="the model directory to write")
    sft.add_argument("--lora-rank", type=int, default=0, help="0 (default): tune every weight")
    sft.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default: the rank)")
    sft.add_argument(
        "--adapter-only", action="store_true", help="save the LoRA adapter alone, not merged"
    )
    sft.add_argument("--val-fraction", type=float, default=0.1, help="records held out")
    add_overrides_option(
        sft, "train.KEY=VALUE", "a training setting, e.g. --set train.max_steps=500"
    )
    sft.add_argument("--tracker", choices=TRACKERS, default="none", help=TRACKER_HELP)


def add_chat(cli: CommandLine) -> None:
    chat = cli.command(
        "chat",
        cmd_chat,
        "talk with a model (a terminal, or lines through a pipe)",
        "A conversation in the terminal, or line by line through a pipe, in the model's chat "
        "template; /reset, /help, /exit.",
    )
    chat.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    add_sampling_arguments(chat, temperature=0.7)
    chat.add_argument("--system", default="", help="text placed before the conversation")


def add_export(cli: CommandLine) -> None:
    export = cli.command(
        "export",
        cmd_export,
        "write a model in another library's format",
        "Write a model in another library's format: hf, a directory transformers loads as "
        "LlamaForCausalLM.",
    )
    export.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    export.add_argument(
        "--format", choices=["hf"], required=True, help="hf: transformers' LlamaForCausalLM"
    )
    export.add_argument("--out", type=Path, required=True, help="the directory to write")


def add_serve(cli: CommandLine) -> None:
    serve = cli.command(
        "serve",
        cmd_serve,
        "serve a model over an OpenAI-compatible HTTP API",
        "An OpenAI-compatible HTTP API: POST /v1/completions, POST /v1/chat/completions, "
        "GET /v1/models, GET /health.",
    )
    serve.add_argument("model_dir", type=Path, help=MODEL_DIR_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="the interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on")
    serve.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` (default: $LLM_API_KEY, if set)"
    )
    serve.add_argument("--device", default="auto", help=DEVICE_HELP)
    serve.add_argument(
        "--max-tokens-limit", type=int, default=512, help="the most tokens one request may ask"
    )
    serve.add_argument(
        "--queue-size", type=int, default=16, help="requests that may wait; more get 503"
    )
    serve.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="prompts decoded together (continuous batching); 1: one at a time",
    )
    serve.add_argument("--model-name", help="the model's id in the API (default: folder name)")
    serve.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the model's arithmetic (default: OMP_NUM_THREADS where set, "
        "else every core but one, which the HTTP server keeps)",
    )
    serve.add_argument(
        "--engine",
        choices=["process", "thread"],
        default="process",
        help="where the model decodes: a process of its own (default), or a thread of the "
        "HTTP server's process (which then shares Python's lock with it)",
    )


def add_overrides_option(parser: argparse.ArgumentParser, metavar: str, help: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar=metavar,
        help=f"{help} (repeatable)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, *, temperature: float) -> None:
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="the most tokens to generate"
    )
    parser.add_argument("--temperature", type=float, default=temperature, help="0: greedy")
    parser.add_argument("--top-k", type=int, help="keep only the K likeliest tokens")
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus: keep the fewest tokens whose probability sums to P or more",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="above 1 discourages tokens already in the prompt or output",
    )
    parser.add_argument(
        "--stop", action="append", default=[], help="stop before this text (repeatable)"
    )
    parser.add_argument("--seed", type=int, help="the seed of sampling")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def sampling_params(args: argparse.Namespace, eos_id: int) -> SamplingParams:
    from llm.generate import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        eos_id=eos_id,
        stop=tuple(replace_undecodable(stop, "--stop") for stop in args.stop),
        seed=args.seed,
    )


def load_for_generation(args: argparse.Namespace) -> tuple[Transformer, Tokenizer]:
    from llm.checkpoint import load_model_dir
    from llm.device import resolve_device

    device = resolve_device(args.device, "--device")
    model, tokenizer, _ = load_model_dir(args.model_dir, device=device)
    if tokenizer is None:
        raise CheckpointError(f"{args.model_dir}: no tokenizer/ (needed to read a prompt)")
    return model, tokenizer


def cmd_prepare(args: argparse.Namespace) -> None:
    from llm.config import DataConfig
    from llm.data import prepare

    config = DataConfig(
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
    )
    prepared = prepare(config, out=args.out, progress=sys.stderr.isatty())
    print(json.dumps(prepared.meta, indent=2, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> int:
    from llm.config import load_run_config
    from llm.distributed import launch
    from llm.run import train_run

    config_path = training_config_path(args.config, args.preset)
    config = load_run_config(config_path, args.overrides)
    if data_parallel_launch(args, config.train.batch_size):
        return launch("llm.cli", without_option(args.argv, "--nproc"), args.nproc)
    out = args.out or Path("results") / config_path.stem
    outcome = train_run(
        config, out, resume=args.resume, progress=sys.stderr.isatty(), tracker=args.tracker
    )
    return report_training(outcome, out)


def cmd_continue(args: argparse.Namespace) -> int:
    from llm.config import apply_overrides
    from llm.continued import ContinueOptions, continue_run

    settings = apply_overrides({"train": {}}, args.overrides)
    if set(settings) != {"train"}:
        raise UserError("llm continue: --set takes training settings only (train.KEY=VALUE)")
    options = ContinueOptions(expand_vocab=args.expand_vocab, train=settings["train"])
    outcome, _ = continue_run(
        args.model_dir,
        args.corpus,
        args.out,
        options,
        resume=args.resume,
        progress=sys.stderr.isatty(),
        tracker=args.tracker,
        say=print,
    )
    return report_training(outcome, args.out)


def add_nproc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train in N data-parallel processes on this machine (one per GPU on GPUs; "
        "the global batch is train.batch_size, split among them)",
    )


def data_parallel_launch(args: argparse.Namespace, batch_size: int) -> bool:
    """Whether this command is to start `--nproc` copies of itself (not when it is one of
    them, or one of torchrun's), each to train on a slice of `batch_size`."""
    from llm.distributed import check_divisible

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_divisible(batch_size, args.nproc)
    if world_size > 1 and args.nproc not in (1, world_size):
        raise UserError(f"--nproc {args.nproc}: this is already one of {world_size} processes")
    return args.nproc > 1 and world_size == 1


def report_training(outcome: TrainOutcome, out: Path) -> int:
    """Say how a pretraining run ended; the exit code."""
    if outcome.stop_reason == "interrupted":
        print(f"llm: interrupted at step {outcome.step}; continue with --resume", file=sys.stderr)
        return 130
    if outcome.status == "diverged":
        print(
            f"llm: training diverged at step {outcome.step} (NaN or infinite loss)", file=sys.stderr
        )
        return 1
    final = outcome.final
    scores = (
        None
        if final is None
        else (f"val loss {final.loss:.4f}, bits per byte {final.bits_per_byte:.4f}")
    )
    print(f"{out}: {outcome_summary(outcome, scores)}")
    return 0


def outcome_summary(outcome: TrainOutcome, scores: str | None) -> str:
    """How far a training run got, then its final `scores` when it has them."""
    summary = f"step {outcome.step}, {outcome.tokens:,} tokens, {outcome.seconds:.0f} s"
    return summary if scores is None else f"{summary}; {scores}"


def training_config_path(config: Path | None, preset: str | None) -> Path:
    """The config file `llm train` reads: the one given, or a preset's (for `auto`, the
    one chosen for this machine, saying why)."""
    from llm.presets import choose_preset, preset_path, this_machine

    if (config is None) == (preset is None):
        raise UserError("llm train: give a config file or --preset NAME, not both or neither")
    if config is not None:
        return config
    assert preset is not None
    if preset == "auto":
        preset, why = choose_preset(this_machine())
        print(why, file=sys.stderr)
    return preset_path(preset)


def cmd_eval(args: argparse.Namespace) -> None:
    from llm.checkpoint import load_model_dir
    from llm.device import resolve_device
    from llm.evaluate import evaluate

    device = resolve_device(args.device, "--device")
    model, tokenizer, config = load_model_dir(args.model_dir, device=device)
    if tokenizer is None:
        raise CheckpointError(f"{args.model_dir}: no tokenizer/ (needed to read a corpus)")
    if args.generation is not None:
        scores = score_generations(args, model, tokenizer)
        print(json.dumps({"generation": str(args.generation), **dataclasses.asdict(scores)}))
        return
    split = args.split or ("all" if args.corpus is not None else "val")
    splits = evaluation_data(args.model_dir, tokenizer, args.corpus, split)
    result = evaluate(
        model,
        splits.val,
        splits.val_bytes,
        seq_len=config.max_seq_len,
        batch_size=args.batch_size,
        device=device,
    )
    source = args.corpus if args.corpus is not None else "training corpus"
    print(json.dumps({"corpus": source, "split": split, **dataclasses.asdict(result)}, indent=2))


def score_generations(
    args: argparse.Namespace, model: Transformer, tokenizer: Tokenizer
) -> GenerationScores:
    """Greedy completions of the file's prompts, `--batch-size` at a time, scored."""
    from llm.generate import SamplingParams, complete, truncate_prompt
    from llm.generation_metrics import read_cases, score

    cases = read_cases(args.generation)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0,
        eos_id=tokenizer.eos_id,
        stop=tuple(replace_undecodable(stop, "--stop") for stop in args.stop),
    )
    context = model.config.max_seq_len
    generations: list[str] = []
    for start in range(0, len(cases), args.batch_size):
        batch = cases[start : start + args.batch_size]
        prompts = [
            truncate_prompt(tokenizer.encode(case.prompt), context, args.max_new_tokens)
            for case in batch
        ]
        generations += [c.text for c in complete(model, tokenizer, prompts, params)]
    return score(generations, [case.reference for case in cases])


def evaluation_data(
    model_dir: Path, tokenizer: Tokenizer, corpus: str | None, split: str
) -> TokenSplits:
    """What to score, as the `val` of a TokenSplits, tokenized with the model's own
    tokenizer: all of `corpus` (split "all"), or the validation split of `corpus` or of
    the corpus the model was trained on (split "val")."""
    from llm.config import DataConfig
    from llm.data import encode_corpus, prepare
    from llm.run import RUN_FILE, saved_data_config

    if split == "all":
        if corpus is None:
            raise UserError("--split all needs --corpus (scoring the training text says little)")
        return encode_corpus(corpus, tokenizer, progress=sys.stderr.isatty())

    data = saved_data_config(model_dir)
    if data is None and corpus is None:
        raise UserError(f"{model_dir}: no {RUN_FILE} to name its corpus; pass --corpus")
    data = data or DataConfig()
    if corpus is not None:
        data = dataclasses.replace(data, corpus=corpus)
    return prepare(data, tokenizer=tokenizer, progress=sys.stderr.isatty()).splits()


def cmd_generate(args: argparse.Namespace) -> None:
    from llm.generate import complete, stream_completions, truncate_prompt

    model, tokenizer = load_for_generation(args)
    params = sampling_params(args, tokenizer.eos_id)
    texts = [
        replace_undecodable(text, "--prompt" if len(args.prompts) == 1 else f"--prompt {i}")
        for i, text in enumerate(args.prompts, start=1)
    ]
    inputs = texts
    if args.chat:
        from llm.chat import load_chat_template

        template = load_chat_template(args.model_dir)
        inputs = [template.render([], text) for text in texts]
        params = dataclasses.replace(
            params, stop=tuple(dict.fromkeys(params.stop + template.stop()))
        )
    prompts = [tokenizer.encode(text) for text in inputs]
    if args.truncate:
        context = model.config.max_seq_len
        prompts = [truncate_prompt(ids, context, params.max_new_tokens) for ids in prompts]
    if len(prompts) > 1:
        for prompt, completion in zip(
            texts, complete(model, tokenizer, prompts, params), strict=True
        ):
            record = dataclasses.asdict(completion)
            if args.chat:  # the reply, without the space the template leaves the model
                record["text"] = record["text"].lstrip()
            print(json.dumps({"prompt": prompt, **record}))
        return
    stripping = args.chat  # a chat reply is printed alone, from its first visible character
    if not args.chat:
        sys.stdout.write(tokenizer.decode(prompts[0]))
    for delta in stream_completions(model, tokenizer, prompts, params):
        text = delta.text.lstrip() if stripping else delta.text
        stripping = stripping and not text
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_export(args: argparse.Namespace) -> None:
    from llm.export import export_hf

    print(export_hf(args.model_dir, args.out))


def cmd_serve(args: argparse.Namespace) -> None:
    from llm.serve import serve

    serve(
        args.model_dir,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        device=args.device,
        max_tokens_limit=args.max_tokens_limit,
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        model_name=args.model_name,
        threads=args.threads,
        engine=args.engine,
    )


def cmd_sft(args: argparse.Namespace) -> int:
    from llm.config import apply_overrides
    from llm.sft import SftOptions, sft_run

    settings = apply_overrides({"train": {}}, args.overrides)
    if set(settings) != {"train"}:
        raise UserError("llm sft: --set takes training settings only (train.KEY=VALUE)")
    options = SftOptions(
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        adapter_only=args.adapter_only,
        val_fraction=args.val_fraction,
        train=settings["train"],
    )
    outcome = sft_run(
        args.model_dir,
        args.data,
        args.out,
        options,
        progress=sys.stderr.isatty(),
        tracker=args.tracker,
    )
    if outcome.status != "ok":
        print(f"llm: tuning stopped at step {outcome.step}: {outcome.stop_reason}", file=sys.stderr)
        return 1
    final = outcome.final
    scores = (
        None
        if final is None
        else (f"replies' val loss {final.loss:.4f}, accuracy {final.accuracy:.3f}")
    )
    print(f"{args.out}: {outcome_summary(outcome, scores)}")
    return 0


def cmd_chat(args: argparse.Namespace) -> None:
    from llm.chat import ChatSession, load_chat_template, run_chat

    model, tokenizer = load_for_generation(args)
    # Python decodes stdin strictly in some locales: take undecodable bytes as lone
    # surrogates in every one, for run_chat to replace with a warning rather than crash.
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="surrogateescape")
    template = load_chat_template(args.model_dir)
    if args.system:
        template = dataclasses.replace(
            template, system=replace_undecodable(args.system, "--system")
        )
    session = ChatSession(model, tokenizer, sampling_params(args, tokenizer.eos_id), template)
    run_chat(session, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())


if __name__ == "__main__":
    sys.exit(main())
