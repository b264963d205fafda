"""Named presets in llm/configs/ (`llm train --preset NAME`), shipped in the package, and
the choice of one for a machine (`--preset auto`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llm import presets
from llm.cli import main as llm
from llm.presets import Machine, choose_preset, estimate_preset

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]


def test_the_presets_span_a_thousand_fold_range_of_sizes():
    sizes = {name: estimate_preset(name).params for name in ("nano", "tiny", "small", "base")}
    assert sizes["nano"] < 0.5e6 < sizes["tiny"] < 2e6 < sizes["small"] < 30e6 < sizes["base"]
    assert 80e6 < sizes["base"] < 150e6


@pytest.mark.parametrize(
    ("machine", "chosen", "reason"),
    [
        (Machine("cpu", 24 * GIB, 2), "tiny", "small (13.8M parameters): about 14 s per step"),
        (Machine("cpu", 4 * GIB, 1), "tiny", "too slow"),
        (Machine("cuda", 80 * GIB, 16), "base", "base (109.5M parameters)"),
        (Machine("cuda", 4 * GIB, 8), "small", "too much memory"),
    ],
    ids=["laptop", "one core", "big GPU", "small GPU"],
)
def test_auto_takes_the_largest_preset_the_machine_trains_usefully(machine, chosen, reason):
    name, why = choose_preset(machine)
    assert name == chosen
    assert why.startswith(f"preset auto: {chosen} (") and reason in why


def test_a_machine_too_small_for_any_preset_gets_the_smallest():
    assert choose_preset(Machine("cpu", 64 * 2**20, 1))[0] == "nano"


def test_train_a_preset_by_name_or_auto(workdir, capfd, monkeypatch):  # capfd: sentencepiece
    args = ["--set", "train.max_steps=2", "--set", "train.eval_interval=0"]
    assert llm(["train", "--preset", "nano", *args]) == 0
    assert (workdir / "results" / "nano" / "run.json").exists()
    capfd.readouterr()
    monkeypatch.setattr(presets, "this_machine", lambda: Machine("cpu", 128 * 2**20, 1))
    assert llm(["train", "--preset", "auto", "--out", "auto", *args]) == 0
    err = capfd.readouterr().err
    assert "preset auto: nano (0.1M parameters)" in err and "tiny (1.1M" in err
    assert (workdir / "auto" / "run.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "no preset 'huge'; the presets are base, nano, small, tiny"),
        (["configs/tiny.yaml", "--preset", "nano"], "not both or neither"),
        ([], "not both or neither"),
    ],
)
def test_a_wrong_preset_is_one_line_and_exit_2(capsys, args, message):
    assert llm(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_presets_ship_in_the_wheel_and_resolve_outside_the_repository(tmp_path):
    """A non-editable install: the package built into a wheel (from a copy of the sources,
    so the checkout gains no build folder), unpacked, and used from another folder."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "llm", source / "llm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    build += ["--no-index", "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import llm, llm.cli, llm.presets as p; print(llm.__file__); "
        "print(p.estimate_preset('tiny').describe()); llm.cli.main(['train', '--preset', 'x'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stderr
    where, tiny = lines
    assert Path(where).is_relative_to(site)
    assert tiny.startswith("tiny (1.1M parameters)")
    assert "no preset 'x'; the presets are base, nano, small, tiny" in run.stderr
