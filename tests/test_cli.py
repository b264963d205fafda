"""Both command-line tools end to end, as a user drives them, and their error exits."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import steady_space_dict, write_corpus

from evo.cli import main as evo
from evo.schedule.budget import cost_to_top
from evo.space import space_from_dict
from evo.storage import Storage
from llm.cli import main as llm
from llm.data import read_corpus


def tiny_config(corpus, **train) -> dict:
    return {
        "data": {"corpus": str(corpus), "tokenizer": "char", "vocab_size": 64},
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": 6, "eval_interval": 3, **train},
    }


def test_llm_prepare_train_eval_generate(workdir, capsys):
    corpus = write_corpus(workdir / "corpus")
    assert llm(["prepare", "--corpus", str(corpus), "--tokenizer", "byte", "--out", "prep"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["splits"]["val"]["bytes"] > 0 and (workdir / "prep" / "train.npy").exists()

    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(corpus)))
    assert llm(["train", "tiny.yaml", "--out", "model"]) == 0
    assert "bits per byte" in capsys.readouterr().out
    assert llm(["eval", "model"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["bits_per_byte"] > 0 and metrics["tokens"] > 0
    args = ["generate", "model", "--prompt", "the model", "--max-new-tokens", "8", "--seed", "1"]
    assert llm(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the model") and len(first) > len("the model")
    assert llm(args) == 0
    assert capsys.readouterr().out == first  # the same seed samples the same text


def megabyte_of_text() -> str:
    """About 1 MB of real text from the builtin corpora, as one string."""
    parts, size = [], 0
    for corpus in ("builtin:python-docs", "builtin:python-code"):
        for doc in read_corpus(corpus):
            parts.append(doc.text)
            size += len(doc.text)
            if size >= 1_000_000:
                return "\n".join(parts)
    raise AssertionError("the builtin corpora hold less than 1 MB")


def test_one_text_file_trains_and_a_held_out_file_is_scored_whole(workdir, capsys):
    text = megabyte_of_text()
    (workdir / "input.txt").write_text(text, encoding="utf-8")
    held_out = "".join(f"{i}: a file the model never saw in training\n" for i in range(300))
    (workdir / "held.txt").write_text(held_out, encoding="utf-8")
    assert llm(["prepare", "--corpus", "input.txt", "--tokenizer", "char", "--vocab-size", "256",
                "--out", "prep"]) == 0  # fmt: skip
    splits = json.loads(capsys.readouterr().out)["splits"]
    assert splits["val"]["documents"] >= 2 and splits["train"]["documents"] >= 14
    assert 0.05 < splits["val"]["bytes"] / len(text.encode()) < 0.2

    config = tiny_config(workdir / "input.txt")
    config["data"]["vocab_size"] = 256
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert llm(["train", "tiny.yaml", "--out", "model"]) == 0
    capsys.readouterr()
    assert llm(["eval", "model", "--corpus", "held.txt"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert llm(["eval", "model", "--corpus", "held.txt", "--split", "val"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert (whole["corpus"], whole["split"], part["split"]) == ("held.txt", "all", "val")
    # every character of the file but the first is predicted (one token each: char)
    assert whole["tokens"] == len(held_out) - 1
    assert part["tokens"] < whole["tokens"] / 5
    assert llm(["eval", "model", "--corpus", "input.txt", "--batch-size", "256"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 900_000  # all of the megabyte
    assert llm(["eval", "model", "--split", "all"]) == 2
    assert "needs --corpus" in capsys.readouterr().err
    # A program named as text is refused, never decoded into noise and scored or trained.
    (workdir / "program.txt").write_bytes(Path(sys.executable).read_bytes()[:65536])
    for command in (["eval", "model"], ["prepare", "--out", "prep2"]):
        assert llm([*command, "--corpus", "program.txt"]) == 2
        err = capsys.readouterr().err
        assert (
            err == "llm: error: corpus 'program.txt': a binary file (it holds NUL bytes), "
            "not text; inside a folder it would be skipped\n"
        )
    assert not (workdir / "prep2").exists()


def test_llm_train_resume_continues_from_the_checkpoint(workdir, capsys):
    corpus = write_corpus(workdir / "corpus")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(corpus, checkpoint_interval=3)))
    assert llm(["train", "tiny.yaml", "--out", "m", "--set", "train.max_steps=3"]) == 0
    assert llm(["train", "tiny.yaml", "--out", "m", "--set", "train.max_steps=3"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,message",
    [
        ("model: {n_layers: [1, 2}\n", "malformed YAML at line 1"),
        ("model: {n_layerz: 2}\ntrain: {max_steps: 1}\n", "model.n_layerz: unknown key"),
        ("model: {d_model: 30}\ntrain: {max_steps: 1}\n", "divisible by n_heads"),
        ("train: {max_steps: 1}\ndata: {corpus: /no/such/corpus}\n", "/no/such/corpus"),
    ],
)
def test_llm_user_errors_are_one_line_and_exit_2(workdir, capsys, text, message):
    (workdir / "bad.yaml").write_text(text)
    assert llm(["train", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_llm_refuses_a_corrupt_model_directory(workdir, capsys):
    (workdir / "model").mkdir()
    (workdir / "model" / "model.json").write_text("{not json")
    assert llm(["generate", "model", "--prompt", "x"]) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_evo_run_status_report_export_promote_then_generate(space_file, workdir, capsys):
    url = f"sqlite:///{workdir / 'evo.db'}"
    run = ["run", str(space_file), "--local", "--quiet", "--storage", url]
    assert not (workdir / "evo.db").exists()
    assert evo([*run, "--set", "search.generations=2"]) == 0  # `evo run` creates the database
    assert evo(["ls", "--storage", url]) == 0
    assert "space" in capsys.readouterr().out
    assert evo(["status", "space", "--storage", url]) == 0
    status = capsys.readouterr().out
    trials = len(Storage(url).trials("space"))  # repeated genomes reuse a result
    assert f"{trials} done" in status and "2 of 2 generations complete" in status
    # Three steps of training learn no more than the corpus's character frequencies.
    assert f"no trial has learned yet ({trials} succeeded but stalled" in status

    assert evo(["report", "space", "--storage", url]) == 0
    report = workdir / "results" / "space" / "report.html"
    page = report.read_text()
    assert "<h2>Optimisation history</h2>" in page
    assert f"No trial has learned yet: {trials} succeeded but stalled (see Failures)." in page
    assert evo(["export", "space", "--format", "csv", "--storage", url]) == 0
    frame = pd.read_csv(workdir / "results" / "space" / "trials.csv")
    assert len(frame) == trials and "gene.d_model" in frame.columns

    capsys.readouterr()
    assert evo(["promote", "space", "--steps", "5", "--out", "best", "--storage", url]) == 0
    assert evo(["status", "space", "--storage", url]) == 0
    assert "promoted genome" in capsys.readouterr().out
    assert llm(["generate", "best", "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_a_steady_state_run_promotes_its_winner_for_the_target(workdir, capsys):
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "16 trials (" in out and "at rung 3" in out
    assert evo(["status", "space", "--storage", url]) == 0
    status = capsys.readouterr().out
    assert "target: 27 steps; rungs: 3 steps / 9 steps / 27 steps" in status
    assert "spent: 16 of 16 trials (100%)" in status
    assert "best bits_per_byte (min) at the top rung" in status
    assert "best bits_per_byte against compute: " in status and " tokens" in status
    # With no budget given, promote trains the best top-rung genome for the target, with
    # the genome's seed and schedule: the model the search scored at the top rung.
    assert evo(["promote", "space", "--out", "best", "--storage", url]) == 0
    storage = Storage(url)
    promotion = storage.promotions("space")[0]
    assert promotion.metrics["steps"] == 27
    scored = [t for t in storage.trials("space") if t.genome_id == promotion.genome_id]
    top = max(scored, key=lambda t: t.rung)
    assert top.rung == 2
    assert promotion.metrics["bits_per_byte"] == pytest.approx(
        top.metric("bits_per_byte"), rel=1e-4
    )
    # Refused arguments record no promotion.
    for args, message in (
        (["--steps", "-5"], "--steps must be positive"),
        (["--corpus", "missing.txt", "--out", "other"], "missing.txt"),
        (["--out", "best"], "already holds checkpoints"),
        (["--out", "space.yaml/model"], "space.yaml is a file, not a folder"),
    ):
        assert evo(["promote", "space", *args, "--storage", url]) == 2
        assert message in capsys.readouterr().err
    assert len(storage.promotions("space")) == 1 and not (workdir / "other").exists()


def test_evo_errors_name_the_key_path_and_exit_2(workdir, space_file, capsys):
    space = yaml.safe_load(space_file.read_text())
    space["genes"]["n_heads"] = {"choice": [1, "two"]}
    space_file.write_text(yaml.safe_dump(space))
    assert evo(["run", str(space_file), "--local"]) == 2
    assert "genes.n_heads.choice[1]" in capsys.readouterr().err
    url = f"sqlite:///{workdir / 'e.db'}"
    Storage(url).close()
    assert evo(["status", "nope", "--storage", url]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"corpus": "builtin:nope"}}, "builtin:nope"),
        ({"search": {"initial": [{"n_layers": 2, "d_model": 32}]}}, "initial[0]"),
    ],
    ids=["missing corpus", "impossible initial genome"],
)
def test_evo_run_checks_data_and_initial_genomes_before_making_a_run(
    workdir, space_file, capsys, change, message
):
    space = yaml.safe_load(space_file.read_text())
    good = yaml.safe_dump(space)
    for section, values in change.items():
        space[section] = {**space[section], **values}
    space["constraints"] = {"max_params": 8_000}  # 2 layers of width 32 are over it
    space_file.write_text(yaml.safe_dump(space))
    url = f"sqlite:///{workdir / 'e.db'}"
    assert evo(["run", str(space_file), "--local", "--storage", url]) == 2
    assert message in capsys.readouterr().err
    assert Storage(url).list_runs() == []
    space_file.write_text(good)
    assert evo(["run", str(space_file), "--local", "--quiet", "--storage", url]) == 0


@pytest.mark.parametrize(
    "command",
    [
        ["status", "x"],
        ["report", "x"],
        ["export", "x"],
        ["promote", "x"],
        ["validate", "x"],
        ["resume", "x"],
        ["ls"],
    ],
    ids=lambda command: command[0],
)
def test_evo_reading_commands_refuse_a_missing_or_foreign_database(workdir, capsys, command):
    missing = workdir / "typo" / "missing.db"
    assert evo([*command, "--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"no evo database at {missing}" in err and err.count("\n") == 1
    assert not missing.exists() and not missing.parent.exists()
    empty = workdir / "empty.db"
    empty.touch()
    assert evo([*command, "--storage", f"sqlite:///{empty}"]) == 2
    assert "is empty, not an evo database" in capsys.readouterr().err
    assert empty.stat().st_size == 0 and not (workdir / "empty.db-wal").exists()
    other = workdir / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    assert evo([*command, "--storage", f"sqlite:///{other}"]) == 2
    assert "not an evo database (it has no evo_schema table)" in capsys.readouterr().err
    with sqlite3.connect(other) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    db.close()
    assert tables == [("notes",)]


def test_the_console_scripts_are_installed():
    for tool in ("llm", "evo"):
        out = subprocess.run([tool, "--help"], capture_output=True, text=True, check=True).stdout
        assert "usage" in out
    bad = subprocess.run([sys.executable, "-m", "evo.cli", "frobnicate"], capture_output=True)
    assert bad.returncode == 2


def test_evo_run_refuses_a_budget_that_cannot_carry_a_genome_to_the_top(workdir, capsys):
    corpus = write_corpus(workdir / "corpus")
    space = steady_space_dict(corpus, budget={"tokens": 1000})
    genes = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 0.01}
    ladder = cost_to_top(space_from_dict(space), genes, 0).tokens  # every genome's: 64 per step
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    url = f"sqlite:///{workdir / 'e.db'}"
    assert evo(["run", "space.yaml", "--local", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "search.budget.tokens: 1,000 cannot carry one genome through the rungs" in err
    assert f"{ladder:,} tokens each" in err
    assert Storage(url).list_runs() == []
