from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

import llm.run
import llm.train
from llm.checkpoint import checkpoints, latest_checkpoint, load_model_dir
from llm.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from llm.data import TokenSplits
from llm.errors import ConfigError
from llm.model import Transformer
from llm.optim import budget_progress, build_optimizer, learning_rate, planned_steps
from llm.run import train_run
from llm.train import Trainer

MODEL = ModelConfig(
    vocab_size=64, n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=16, dropout=0.1
)
TRAIN = TrainConfig(
    batch_size=4,
    seq_len=16,
    learning_rate=3e-3,
    warmup_steps=2,
    max_steps=6,
    eval_interval=3,
    eval_max_batches=2,
    log_interval=1,
    device="cpu",
)


def splits(seed: int = 0) -> TokenSplits:
    """A learnable stream: mostly counting up modulo 64, with some noise."""
    rng = np.random.default_rng(seed)
    tokens = np.arange(6000) % 64
    noise = rng.random(6000) < 0.1
    tokens[noise] = rng.integers(0, 64, noise.sum())
    tokens = tokens.astype(np.uint16)
    return TokenSplits(train=tokens[:5000], val=tokens[5000:], val_bytes=1500)


def model(config: ModelConfig = MODEL, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config)


def fit(config: TrainConfig = TRAIN, **kwargs: Any) -> llm.train.TrainOutcome:
    resume, resume_from = kwargs.pop("resume", False), kwargs.pop("resume_from", None)
    trainer = Trainer(kwargs.pop("net", None) or model(), config, splits(), **kwargs)
    return trainer.fit(resume, resume_from=resume_from)


# ------------------------------------------------------------------------------ schedule


def schedule(config: TrainConfig, steps: int) -> list[float]:
    """The rates of a step or token budget."""
    return [
        learning_rate(config, step, budget_progress(config, step, step * config.tokens_per_step, 0))
        for step in range(steps)
    ]


def test_schedule_warms_up_peaks_and_decays_to_the_floor() -> None:
    config = dataclasses.replace(TRAIN, warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    rates = schedule(config, 101)
    peak, floor = config.learning_rate, config.learning_rate * 0.1
    assert rates[:10] == pytest.approx([peak * (i + 1) / 10 for i in range(10)])
    assert rates[10] == pytest.approx(peak)
    assert max(rates) == pytest.approx(peak)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[55] == pytest.approx((peak + floor) / 2)  # halfway through the decay
    assert rates[100] == pytest.approx(floor)
    assert min(rates[10:]) >= floor


def test_schedule_follows_the_tightest_budget() -> None:
    by_steps = dataclasses.replace(TRAIN, warmup_steps=0, max_steps=50, max_tokens=None)
    by_tokens = dataclasses.replace(
        TRAIN, warmup_steps=0, max_steps=1000, max_tokens=50 * TRAIN.tokens_per_step
    )
    assert schedule(by_tokens, 51) == pytest.approx(schedule(by_steps, 51))


def test_seconds_budget_decays_with_time() -> None:
    config = dataclasses.replace(TRAIN, max_steps=None, max_seconds=10.0, warmup_steps=2)
    assert budget_progress(config, 5, 100, 2.5) == 0.25
    warmup_end = budget_progress(config, 2, 0, 1.0)
    rates = [
        learning_rate(config, 10, budget_progress(config, 10, 0, t), warmup_end)
        for t in range(1, 12)
    ]
    assert rates[0] == pytest.approx(config.learning_rate)
    assert all(a > b for a, b in itertools.pairwise(rates[:10]))
    assert rates[-1] == pytest.approx(config.learning_rate * config.min_lr_ratio)


def test_wsd_holds_the_peak_then_cools_down_over_its_last_share() -> None:
    config = dataclasses.replace(
        TRAIN, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2
    )
    rates = schedule(config, 100)
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    assert rates[10:80] == pytest.approx([peak] * 70)
    assert all(a > b for a, b in itertools.pairwise(rates[80:]))
    assert floor < rates[99] < rates[81] < rates[80] == pytest.approx(peak)
    assert planned_steps(config) == (80, 100)
    # Until the cool-down, the rate does not depend on the budget: a larger budget's run
    # goes through the same rates, so it can continue from the stable point.
    longer = dataclasses.replace(config, max_steps=300)
    assert schedule(longer, 80) == pytest.approx(rates[:80])


def test_a_stable_checkpoint_is_continued_exactly_by_a_larger_budget(tmp_path: Path) -> None:
    short = dataclasses.replace(TRAIN, max_steps=10, schedule="wsd", decay_fraction=0.3)
    long = dataclasses.replace(short, max_steps=20)
    stopped = fit(short, stable_dir=tmp_path / "stable")
    stable_step = planned_steps(short)[0]
    assert stopped.step == 10 and stable_step == 7
    continued = fit(long, net=model(seed=99), resume_from=tmp_path / "stable")
    straight = fit(long)
    assert (continued.first_step, continued.step) == (7, 20)
    assert continued.final is not None and straight.final is not None
    assert continued.final.loss == pytest.approx(straight.final.loss, abs=1e-6)
    with pytest.raises(ConfigError, match=r"needs train\.schedule: wsd"):
        Trainer(model(), TRAIN, splits(), stable_dir=tmp_path / "cosine")


def test_trainer_uses_the_schedule() -> None:
    config = dataclasses.replace(TRAIN, warmup_steps=3, max_steps=8)
    records: list[dict[str, Any]] = []
    fit(config, log=records.append)
    logged = [r["lr"] for r in records if r["kind"] == "train"]
    assert logged == pytest.approx(schedule(config, 8))


# ----------------------------------------------------------------------------- optimizer


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    config = dataclasses.replace(
        MODEL, bias=True, norm="layernorm", pos_encoding="learned", tie_embeddings=False
    )
    net = model(config)
    net.blocks[0].attn.qkv.weight.requires_grad_(False)  # frozen, as LoRA leaves the base
    optimizer = build_optimizer(net, TRAIN, torch.device("cpu"))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    decayed, not_decayed = groups[TRAIN.weight_decay], groups[0.0]
    names = {id(p): name for name, p in net.named_parameters()}
    assert {names[i] for i in decayed} == {
        name
        for name, p in net.named_parameters()
        if p.dim() == 2 and "embed" not in name and "positions" not in name and p.requires_grad
    }
    assert "lm_head.weight" in {names[i] for i in decayed}  # untied: an ordinary matrix
    for name in (
        "embed.weight",
        "positions.table.weight",
        "final_norm.weight",
        "blocks.0.mlp.down.bias",
        "blocks.0.attn_norm.bias",
    ):
        assert id(dict(net.named_parameters())[name]) in not_decayed
    assert id(net.blocks[0].attn.qkv.weight) not in decayed | not_decayed


def test_tied_output_head_counts_as_an_embedding() -> None:
    net = model()
    optimizer = build_optimizer(net, TRAIN, torch.device("cpu"))
    decayed = next(g for g in optimizer.param_groups if g["weight_decay"] > 0)["params"]
    assert all(p is not net.lm_head.weight for p in decayed)


def test_gradient_accumulation_matches_a_larger_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    data = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))
    served = 0

    def fixed_batch(tokens: np.ndarray, batch_size: int, seq_len: int, *_: Any) -> Any:
        nonlocal served
        rows = data[served : served + batch_size]
        served += batch_size
        return rows[:, :-1], rows[:, 1:]

    monkeypatch.setattr(llm.train, "train_batch", fixed_batch)
    grads = []
    for batch_size, accum in ((8, 1), (4, 2)):
        served = 0
        net = model(dataclasses.replace(MODEL, dropout=0.0))
        seen: dict[str, Tensor] = {}
        for name, p in net.named_parameters():
            # fires after every backward; the last call sees the step's whole gradient
            p.register_post_accumulate_grad_hook(
                lambda p, name=name, seen=seen: seen.__setitem__(name, p.grad.clone())
            )
        config = dataclasses.replace(
            TRAIN, batch_size=batch_size, grad_accum=accum, max_steps=1, grad_clip=0.0
        )
        fit(config, net=net)
        assert served == 8
        grads.append(seen)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ budgets, stops


def test_step_budget(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = fit(dataclasses.replace(TRAIN, max_steps=4), progress=True)
    shown = capsys.readouterr().err  # not a terminal: plain lines instead of a bar
    assert "val_loss" in shown and "stopped: max_steps" in shown
    assert (outcome.status, outcome.stop_reason, outcome.step) == ("ok", "max_steps", 4)
    assert outcome.tokens == 4 * TRAIN.tokens_per_step
    assert len(outcome.step_times) == 4
    assert outcome.final is not None and outcome.best_val_loss is not None
    assert outcome.best_val_loss <= outcome.final.loss


def test_token_budget_stops_at_the_first_step_reaching_it() -> None:
    budget = int(2.5 * TRAIN.tokens_per_step)
    outcome = fit(dataclasses.replace(TRAIN, max_steps=None, max_tokens=budget))
    assert (outcome.stop_reason, outcome.step) == ("max_tokens", 3)


def test_seconds_budget() -> None:
    config = dataclasses.replace(TRAIN, max_steps=None, max_seconds=0.5, eval_interval=0)
    outcome = fit(config)
    assert outcome.stop_reason == "max_seconds"
    assert outcome.seconds >= 0.5
    assert outcome.step >= 1
    # the step that crossed the budget was the last one
    assert sum(outcome.step_times[:-1]) < 0.5 + 0.2


def test_loss_falls() -> None:
    config = dataclasses.replace(
        TRAIN, max_steps=100, learning_rate=1e-2, eval_interval=0, eval_max_batches=None
    )
    outcome = fit(config)
    assert outcome.final is not None
    assert outcome.final.loss < 0.5 * math.log(64)  # half the loss of uniform guessing
    assert outcome.curve[-1]["train_loss"] < outcome.curve[0]["train_loss"] - 1.5


def test_a_windowed_mixture_of_experts_trains_on_its_balancing_loss_too() -> None:
    config = dataclasses.replace(
        TRAIN, max_steps=100, learning_rate=1e-2, eval_interval=0, eval_max_batches=None
    )
    moe = dataclasses.replace(MODEL, mlp="moe", n_experts=4, attn_window=8, dropout=0.0)
    net = model(moe)
    balancing: list[float] = []
    real = net.aux_loss

    def recorded() -> Tensor | float:
        loss = real()
        balancing.append(float(loss.detach()) if isinstance(loss, Tensor) else loss)
        return loss

    net.aux_loss = recorded  # type: ignore[method-assign]
    outcome = fit(config, net=net)
    assert len(balancing) == 100  # one per micro-batch, each a positive weighted loss
    assert min(balancing) > 0
    assert outcome.final is not None
    # The balancing loss does not get in the way of learning the stream.
    assert outcome.final.loss < 0.5 * math.log(64)
    assert outcome.curve[-1]["train_loss"] < outcome.curve[0]["train_loss"] - 1.5


def test_divergence_stops_without_a_nan_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = llm.train.next_token_loss
    calls = 0

    def failing_loss(logits: Tensor, targets: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        loss = real_loss(logits, targets)
        return loss * float("nan") if calls == 4 else loss

    monkeypatch.setattr(llm.train, "next_token_loss", failing_loss)
    config = dataclasses.replace(TRAIN, checkpoint_interval=1, max_steps=10)
    outcome = fit(config, out_dir=tmp_path)
    assert (outcome.status, outcome.stop_reason, outcome.step) == ("diverged", "diverged", 3)
    assert outcome.final is None
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    for path in checkpoints(tmp_path):
        net, _, _ = load_model_dir(path)
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_huge_learning_rate_diverges() -> None:
    config = dataclasses.replace(TRAIN, learning_rate=1e6, warmup_steps=0, grad_clip=0.0)
    outcome = fit(dataclasses.replace(config, max_steps=50, eval_interval=0))
    assert outcome.status == "diverged"
    assert outcome.step < 50


# ------------------------------------------------------------------ checkpoints, resume


def interrupt_at(step: int) -> Any:
    def log(record: dict[str, Any]) -> None:
        if record["kind"] == "train" and record["step"] == step:
            raise KeyboardInterrupt

    return log


def final_weights(out_dir: Path) -> dict[str, Tensor]:
    path = latest_checkpoint(out_dir)
    assert path is not None
    net, _, _ = load_model_dir(path)
    return net.state_dict()


def test_stop_and_resume_matches_a_straight_run(tmp_path: Path) -> None:
    config = dataclasses.replace(TRAIN, max_steps=10, eval_interval=4, grad_accum=2)
    straight = fit(config, out_dir=tmp_path / "straight")

    stopped = fit(config, out_dir=tmp_path / "resumed", log=interrupt_at(5))
    assert (stopped.status, stopped.stop_reason, stopped.step) == ("ok", "interrupted", 5)
    assert stopped.final is None
    assert latest_checkpoint(tmp_path / "resumed").name == "step_00000005"

    resumed = fit(config, out_dir=tmp_path / "resumed", resume=True, net=model(seed=99))
    assert (resumed.stop_reason, resumed.step, resumed.tokens) == (
        "max_steps",
        10,
        straight.tokens,
    )
    assert straight.final is not None and resumed.final is not None
    assert resumed.final.loss == pytest.approx(straight.final.loss, abs=1e-6)
    assert [p["train_loss"] for p in resumed.curve] == pytest.approx(
        [p["train_loss"] for p in straight.curve], abs=1e-6
    )
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "resumed/log.jsonl").open()]
    assert kinds.count("resume") == 1 and kinds[-1] == "end"


def test_resuming_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    fit(dataclasses.replace(TRAIN, max_steps=2), out_dir=tmp_path)
    # kill -9 while saving: atomic_dir's folder and atomic_path's file, never renamed.
    stale = [
        tmp_path / "checkpoints" / ".step_00000003.x1y2z3_a.tmp",
        tmp_path / ".model.json.q9.tmp",
    ]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"half")
    stale[1].write_text("{")
    other = tmp_path / ".notes.tmp"  # not a temporary of ours
    other.write_text("mine")
    resumed = fit(dataclasses.replace(TRAIN, max_steps=3), out_dir=tmp_path, resume=True)
    assert (resumed.stop_reason, resumed.step) == ("max_steps", 3)
    assert not any(path.exists() for path in stale) and other.read_text() == "mine"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000003"


def test_ctrl_c_during_the_update_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = torch.optim.AdamW.step
    calls = 0

    def step_then_signal(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            # What Python does when Ctrl-C arrives: call the handler now installed (the
            # default one would raise KeyboardInterrupt here). Called directly rather than
            # through the OS, so that the test does not hang on when a signal is delivered.
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_signal)
    # As in `llm train`: Python's own Ctrl-C handler, whatever an earlier test installed
    # (the trainer leaves anyone else's handler alone, and then cannot defer the signal).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        outcome = fit(out_dir=tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (outcome.stop_reason, outcome.step) == ("interrupted", 3)  # the update finished
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000003"


def test_checkpoints_every_interval_and_at_the_end(tmp_path: Path) -> None:
    config = dataclasses.replace(
        TRAIN, max_steps=7, checkpoint_interval=2, keep_checkpoints=2, eval_interval=2
    )
    fit(config, out_dir=tmp_path)
    kept = [p.name for p in checkpoints(tmp_path)]
    assert kept[-2:] == ["step_00000006", "step_00000007"]
    assert len(kept) in (2, 3)  # plus the best by validation loss when it is older
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [2, 4, 6, 7]


def test_out_dir_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(out_dir=tmp_path, resume=True)
    fit(dataclasses.replace(TRAIN, max_steps=1), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        fit(out_dir=tmp_path)
    finished = fit(dataclasses.replace(TRAIN, max_steps=1), out_dir=tmp_path, resume=True)
    assert finished.step == 1 and finished.final is not None  # nothing left but evaluating


def test_fit_leaves_global_state_as_it_was() -> None:
    net = model()
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    fit(dataclasses.replace(TRAIN, max_steps=2, threads=1), net=net)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_threads_lent_while_training_are_used_and_kept_out_of_the_throughput() -> None:
    threads = torch.get_num_threads()
    asked: list[int] = []
    steps: list[int] = []

    def lend(step: int) -> None:
        asked.append(torch.get_num_threads())  # what the step before ran with
        steps.append(step)
        torch.set_num_threads(1 if len(asked) <= 3 else 2)  # two lent from the fourth step on

    outcome = fit(dataclasses.replace(TRAIN, threads=1), before_step=[lend])
    assert asked == [1, 1, 1, 1, 2, 2]
    assert steps == [1, 2, 3, 4, 5, 6], "each hook hears the number of the step about to run"
    assert len(outcome.step_times) == 3, "steps with lent threads are not timed"
    assert torch.get_num_threads() == threads


def test_bad_setups_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_seq_len"):
        fit(dataclasses.replace(TRAIN, seq_len=32))
    with pytest.raises(ConfigError, match="set a budget"):
        fit(dataclasses.replace(TRAIN, max_steps=None))
    with pytest.raises(ConfigError, match="not available"):
        fit(dataclasses.replace(TRAIN, device="cuda:7"))


# ----------------------------------------------------------------------------- train_run


def write_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["def", "return", "value", "self", "print", "import", "class", "for", "in", "x"]
    for i in range(6):
        lines = [" ".join(rng.choice(words, 8)) for _ in range(60)]
        (corpus / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    return corpus


def run_config(root: Path, **train: Any) -> RunConfig:
    return RunConfig(
        data=DataConfig(
            corpus=str(write_corpus(root))
            if not (root / "corpus").exists()
            else str(root / "corpus"),
            tokenizer="char",
            vocab_size=64,
            val_fraction=0.2,
            cache_dir=str(root / "cache"),
        ),
        model=dataclasses.replace(MODEL, vocab_size=None, dropout=0.0),
        train=dataclasses.replace(TRAIN, **{"max_steps": 4, **train}),
    )


def test_train_run_writes_a_loadable_model_dir(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    out = tmp_path / "run"
    outcome = train_run(config, out, progress=False)
    assert outcome.status == "ok" and outcome.final is not None
    net, tokenizer, model_config = load_model_dir(out)
    assert tokenizer is not None and model_config.vocab_size == tokenizer.vocab_size
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(outcome.final.loss)
    assert metrics["steps"] == 4 and metrics["status"] == "ok"
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 4
    ids = torch.tensor([tokenizer.encode("def value")])
    assert net(ids).shape == (1, ids.shape[1], tokenizer.vocab_size)

    with pytest.raises(ConfigError, match="--resume"):
        train_run(config, out, progress=False)
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        train_run(run_config(tmp_path, max_steps=8), out, resume=True, progress=False)
    again = train_run(config, out, resume=True, progress=False)
    assert again.step == 4


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "nothing to resume in {out}: no run.json"),
        (b"{oops", "{out}/run.json: malformed JSON"),
        (b"\xff\xfe", "{out}/run.json: cannot read"),
        (b"[1, 2]", "{out}/run.json: expected a JSON object, not list"),
    ],
)
def test_resume_names_a_missing_or_broken_run_file(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "run.json").write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message.format(out=tmp_path))):
        llm.run.check_same_run(tmp_path, {"train": {"max_steps": 4}})


def test_train_run_refuses_a_vocab_size_the_tokenizer_does_not_have(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=999))
    with pytest.raises(ConfigError, match=r"model\.vocab_size is 999"):
        train_run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
