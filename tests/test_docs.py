"""The documentation cannot rot: the tutorials' commands run here as they are written, and
the generated reference names every key and flag the code has.

The tutorials' `bash` blocks are taken from their markdown and run in order, tutorial
after tutorial in the order of the site's navigation, in one folder that holds the small
local corpus and, as `search_spaces/tiny.yaml`, the suite's steady-state space of tiny
models (rungs of 2, 4 and 8 steps). Each command runs in this process, through `evo`'s or
`llm`'s `main`, with two changes that keep it to seconds and off Ray: searches and
validations run `--local` (searches `--quiet` too), and a budget given on the command line
(`--steps`, `--tokens`, `--seconds`, `--set train.max_steps=`) is cut to a few steps.
`console` blocks (output, servers that run until stopped, other machines) are not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import steady_space_dict, write_corpus
from pydantic import BaseModel, Field

import evo.space
from evo.cli import build_command_line as evo_command_line
from evo.cli import main as evo_main
from llm.cli import build_command_line as llm_command_line
from llm.cli import main as llm_main
from llm.config import DataConfig, ModelConfig, RunConfig, TrainConfig, setting

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "docs_reference.py"
spec = importlib.util.spec_from_file_location("docs_reference", SCRIPT)
assert spec is not None and spec.loader is not None
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)

BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
MAINS: dict[str, Callable[[list[str]], int]] = {"evo": evo_main, "llm": llm_main}
SHORT_BUDGETS = {"--steps": "8", "--tokens": "512", "--seconds": "2"}
SHORT_OVERRIDES = {"train.max_steps": "8", "train.max_tokens": "512", "train.max_seconds": "2"}
OFF_RAY = {"run": ["--local", "--quiet"], "resume": ["--local", "--quiet"], "validate": ["--local"]}


def tutorials() -> list[Path]:
    """The tutorial pages, in the order of the site's navigation."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    (section,) = [entry["Tutorials"] for entry in nav if "Tutorials" in entry]
    return [REPO / "docs" / path for entry in section for path in entry.values()]


def commands(markdown: str) -> list[list[str]]:
    """The commands of a page's `bash` blocks, in order: one per line, a line ending in a
    backslash continued on the next, comments dropped."""
    out = []
    for block in BASH_BLOCK.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def on_a_tiny_budget(argv: list[str]) -> list[str]:
    """A tutorial's command as the test runs it: a budget on the command line cut to a few
    steps, and searches and validations in this process rather than on Ray."""
    tool, command, *rest = argv
    out = [command]
    for i, arg in enumerate(rest):
        before = rest[i - 1] if i else None
        key = arg.partition("=")[0]
        if before in SHORT_BUDGETS:
            out.append(SHORT_BUDGETS[before])
        elif before == "--set" and key in SHORT_OVERRIDES:
            out.append(f"{key}={SHORT_OVERRIDES[key]}")
        else:
            out.append(arg)
    return out + (OFF_RAY.get(command, []) if tool == "evo" else [])


def test_a_pages_bash_blocks_are_its_commands_and_console_blocks_are_not():
    page = (
        "Text.\n\n```bash\nevo run space.yaml  # a search\n\n"
        "llm generate models/m --prompt 'a b' \\\n    --stop \"\\n\"\n```\n\n"
        "```console\n$ llm serve models/m\n```\n\n```bash\nevo status tiny\n```\n"
    )
    assert commands(page) == [
        ["evo", "run", "space.yaml"],
        ["llm", "generate", "models/m", "--prompt", "a b", "--stop", "\\n"],
        ["evo", "status", "tiny"],
    ]


def test_budgets_are_cut_and_searches_run_off_ray():
    promote = ["evo", "promote", "tiny", "--width", "384", "--tokens", "20000000"]
    assert on_a_tiny_budget(promote) == ["promote", "tiny", "--width", "384", "--tokens", "512"]
    sft = ["llm", "sft", "m", "--set", "train.max_steps=800", "--set", "train.learning_rate=3"]
    assert on_a_tiny_budget(sft)[-3:] == ["train.max_steps=8", "--set", "train.learning_rate=3"]
    assert on_a_tiny_budget(["evo", "run", "s.yaml"]) == ["run", "s.yaml", "--local", "--quiet"]
    assert on_a_tiny_budget(["evo", "validate", "t"]) == ["validate", "t", "--local"]
    assert on_a_tiny_budget(["llm", "eval", "m"]) == ["eval", "m"]


@pytest.fixture
def tutorial_folder(workdir: Path) -> Iterator[Path]:
    """A folder to follow the tutorials in, as from the repository's root: the suite's
    steady-state space as `search_spaces/tiny.yaml`, over the small local corpus, with
    bytes as tokens (a prompt may be any text) and room in the context for prompts."""
    space = steady_space_dict(
        write_corpus(workdir / "corpus"), rungs=[2, 4, 8], target={"max_steps": 8}
    )
    space["data"].update(tokenizer="byte", vocab_size=259)
    space["fixed"]["model"]["max_seq_len"] = 64
    (workdir / "search_spaces").mkdir()
    (workdir / "search_spaces" / "tiny.yaml").write_text(yaml.safe_dump(space))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a promotion trains with the process's threads
    yield workdir
    torch.set_num_threads(threads)


def test_the_tutorials_commands_run_as_written(tutorial_folder):
    ran = {}
    for page in tutorials():
        ran[page.name] = commands(page.read_text(encoding="utf-8"))
        for argv in ran[page.name]:
            where = f"{page.relative_to(REPO)}: {shlex.join(argv)}"
            assert argv[0] in MAINS, f"{where}: a tutorial's bash blocks run evo and llm only"
            assert MAINS[argv[0]](on_a_tiny_budget(argv)) == 0, where
    assert [name for name, run in ran.items() if not run] == []
    assert (tutorial_folder / "models" / "tiny" / "provenance.json").exists()


def generated(page: str) -> str:
    return reference.PAGES[page]()


def rows(page: str) -> set[str]:
    """The keys that head a row of a page's tables (`| \\`name\\` |`)."""
    return set(re.findall(r"^\| `([^`]+)` \|", page, re.MULTILINE))


def test_the_reference_names_every_key_of_every_section_of_a_space():
    keys = rows(generated(reference.SPACE_PAGE))
    models = [
        model
        for model in vars(evo.space).values()
        if isinstance(model, type) and issubclass(model, BaseModel) and model is not BaseModel
    ]
    assert len(models) > 10
    for model in [*models, evo.space.SearchSpace]:
        for name, info in model.__pydantic_fields__.items():
            assert (info.alias or name) in keys, f"{model.__name__}.{name}"
    assert set(evo.space.GENE_TYPES) <= keys


def test_the_reference_names_every_key_of_the_training_configs():
    keys = rows(generated(reference.CONFIG_PAGE))
    for config in (RunConfig, DataConfig, ModelConfig, TrainConfig):
        missing = {f.name for f in dataclasses.fields(config)} - keys
        assert missing == set(), config.__name__


@pytest.mark.parametrize(
    ("build", "page"),
    [(evo_command_line, reference.EVO_PAGE), (llm_command_line, reference.LLM_PAGE)],
)
def test_the_reference_names_every_command_and_flag(build, page):
    text, cli = generated(page), build()
    for name, parser in cli.commands.items():
        assert f"## `{cli.prog} {name}`" in text
        section = text.split(f"## `{cli.prog} {name}`")[1].split("\n## ")[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert reference.flag_name(action) in rows(section), f"{cli.prog} {name} {action}"


def test_a_key_or_flag_without_a_description_stops_the_build():
    @dataclasses.dataclass(frozen=True)
    class Config:
        described: int = setting(1, "A described setting.")
        bare: int = 2

    class Section(BaseModel):
        described: int = Field(1, description="A described key.")
        bare: int = 2

    parser = argparse.ArgumentParser()
    parser.add_argument("--described", help="a described flag")
    parser.add_argument("--bare")
    problems: list[tuple[Callable[[], Any], str]] = [
        (lambda: reference.config_keys(Config), "Config.bare"),
        (lambda: reference.space_keys(reference.Section("s", Section), {}), "s: bare"),
        (lambda: reference.flag_keys(parser, "tool cmd"), "tool cmd --bare BARE"),
    ]
    for make, where in problems:
        with pytest.raises(reference.MissingDescription, match=re.escape(where)):
            make()


def test_the_readme_stays_short_with_its_test_command_and_links_that_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    lines = readme.splitlines()
    assert 'pip install -e ".[dev]" && pytest' in lines  # .ci/run runs it
    assert 'pip install -e ".[dev]" && evo run search_spaces/tiny.yaml' in lines
    links = re.findall(r"\]\(((?!https?:|#)[^)#]+)", readme)
    assert links, "the README links into docs/"
    assert [link for link in links if not (REPO / link).exists()] == []
