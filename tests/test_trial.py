import math

import numpy as np
import pytest
import torch

from evo.metrics import METRICS
from llm.config import ModelConfig, TrainConfig
from llm.data import TokenSplits
from llm.trial import AdaptSpec, TrialSpec, run_trial

VOCAB = 48


def splits(period: int, n: int = 6000) -> TokenSplits:
    """A learnable stream: a repeating pattern with a little noise."""
    rng = np.random.default_rng(period)
    stream = (np.arange(n) % period + 3).astype(np.uint16)
    noise = rng.random(n) < 0.05
    stream[noise] = rng.integers(0, VOCAB, noise.sum())
    return TokenSplits(train=stream[:5000], val=stream[5000:], val_bytes=1000)


def spec(**train_overrides) -> TrialSpec:
    model = ModelConfig(
        vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=32
    )
    settings = dict(
        batch_size=8,
        seq_len=32,
        learning_rate=1e-2,
        warmup_steps=2,
        max_steps=12,
        eval_interval=0,
        threads=1,
    )
    train = TrainConfig(**{**settings, **train_overrides})
    return TrialSpec(model=model, train=train, data=splits(7), seed=3)


def test_a_trial_reports_every_metric():
    result = run_trial(spec())
    assert result.status == "done", result.error
    assert result.metric("steps") == 12 and result.metric("tokens") == 12 * 8 * 32
    assert 0 < result.metric("bits_per_byte") < 20
    assert math.isclose(
        result.metric("perplexity"), math.exp(result.metric("val_loss")), rel_tol=1e-6
    )
    assert result.metric("train_tokens_per_s") > 0 and result.metric("decode_tokens_per_s") > 0
    assert result.metric("params") == spec().model.param_count().total
    assert result.metric("flops_per_token") == spec().model.flops_per_token(32)
    assert result.metric("wall_seconds") > 0
    if result.device == "cpu":  # peak memory is measured on a GPU only: see memory_peak
        assert result.metric("peak_memory_bytes") is None
    else:
        peak = result.metric("peak_memory_bytes")
        assert peak is not None and peak > 0
    assert [p.step for p in result.curve] == sorted(p.step for p in result.curve)
    assert result.curve[-1].step == 12
    # The search's registry describes every metric a trial reports, and no other.
    on_gpu = result.device != "cpu"
    assert set(result.metrics) == {n for n, m in METRICS.items() if on_gpu or not m.gpu_only}


def test_a_trial_is_a_pure_function_of_its_inputs_and_seed():
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    first, second = run_trial(spec()), run_trial(spec())
    assert first.metric("val_loss") == second.metric("val_loss")
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)
    other_seed = run_trial(TrialSpec(**{**spec().__dict__, "seed": 4}))
    assert other_seed.metric("val_loss") != first.metric("val_loss")


def test_an_invalid_genome_is_reported_not_raised():
    bad = spec()
    bad = TrialSpec(**{**bad.__dict__, "model": ModelConfig(vocab_size=VOCAB, d_model=30)})
    result = run_trial(bad)
    assert result.status == "invalid"
    assert "divisible by n_heads" in result.error


def test_divergence_is_a_status():
    result = run_trial(spec(learning_rate=1e6, grad_clip=0.0, warmup_steps=0))
    assert result.status == "diverged"
    assert "NaN or infinite" in result.error


def test_a_failure_inside_the_trial_is_reported_with_its_cause():
    tiny_data = TokenSplits(np.zeros(10, np.uint16), np.zeros(10, np.uint16), 10)
    short = TrialSpec(**{**spec().__dict__, "data": tiny_data})
    result = run_trial(short)
    assert result.status == "failed"
    assert "context window" in result.error


def test_the_adapt_stage_reports_its_own_validation_set():
    for rank in (0, 4):
        adapt = AdaptSpec(data=splits(5), train=spec().train, lora_rank=rank)
        result = run_trial(TrialSpec(**{**spec().__dict__, "adapt": adapt}))
        assert result.status == "done", result.error
        assert result.pretrain is not None
        assert result.pretrain["bits_per_byte"] != result.metric("bits_per_byte")
        stages = {p.stage for p in result.curve}
        assert stages == {"pretrain", "adapt"}
        assert result.metric("steps") == 24


def test_a_qlora_adapt_stage_learns_on_four_bit_weights_about_as_well():
    results = {}
    for quantize in (None, "nf4"):
        adapt = AdaptSpec(data=splits(5), train=spec().train, lora_rank=4, quantize=quantize)
        results[quantize] = run_trial(TrialSpec(**{**spec().__dict__, "adapt": adapt}))
        assert results[quantize].status == "done", results[quantize].error
    float_base, nf4 = results[None], results["nf4"]
    assert float_base.pretrain == nf4.pretrain  # the same pretraining
    base_bpb, nf4_bpb = (r.metric("bits_per_byte") for r in (float_base, nf4))
    assert nf4_bpb != base_bpb  # the base really was quantized
    adapting = [p.train_loss for p in nf4.curve if p.stage == "adapt"]
    assert adapting[-1] < adapting[0]  # the adapters learned the new stream
    assert abs(nf4_bpb - base_bpb) < 0.1 * base_bpb


def test_a_lora_adapt_stage_is_a_pure_function_of_its_inputs_and_seed():
    adapt = AdaptSpec(data=splits(5), train=spec(max_steps=4).train, lora_rank=4)
    lora = TrialSpec(**{**spec(max_steps=4).__dict__, "adapt": adapt})
    rng = torch.get_rng_state()
    first = run_trial(lora)
    assert torch.equal(torch.get_rng_state(), rng)  # the trial draws nothing from it
    torch.manual_seed(1234)  # and what the process drew before does not matter
    second = run_trial(lora)
    assert first.status == second.status == "done", first.error
    metrics = ("val_loss", "perplexity", "bits_per_byte", "accuracy")
    assert [first.metric(m) for m in metrics] == [second.metric(m) for m in metrics]
    assert first.pretrain == second.pretrain
    assert [p.train_loss for p in first.curve] == [p.train_loss for p in second.curve]


def test_ctrl_c_during_training_reaches_the_caller(monkeypatch):
    import llm.train

    calls = []

    def interrupt_at_step_3(config, state):
        calls.append(state.step)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None

    monkeypatch.setattr(llm.train, "budget_reached", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_trial(spec())
    assert len(calls) == 3
