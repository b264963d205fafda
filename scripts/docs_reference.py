"""The documentation site's reference pages, generated from the code whenever the site is
built (mkdocs.yml names this file as a hook): every key of a search space (the pydantic
models of `evo.space`), every key of a training config (the dataclasses of `llm.config`,
which a space's `fixed` sections set and its genes vary), and every command and flag of
`evo` and `llm` (their argparse parsers).

Each key's meaning is written once, in the code: `Field(description=...)` in the space's
models, `setting(default, description)` in the configs, `help=` in the parsers. A key or
flag without one stops the build (`MissingDescription`), so the reference cannot fall
behind the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from evo.metrics import METRICS
from evo.space import GENE_TYPES, SPECIAL_GENES, SearchSpace
from llm.cli_support import CommandLine
from llm.config import ModelConfig, RunConfig, TrainConfig

SPACE_PAGE = "reference/search-space.md"
CONFIG_PAGE = "reference/config.md"
EVO_PAGE = "reference/evo.md"
LLM_PAGE = "reference/llm.md"
# The width argparse wraps usage lines at, whatever the terminal that builds the site.
USAGE_WIDTH = 88
PRIMITIVES = {int: "int", float: "float", str: "string", bool: "bool", type(None): "null"}


class MissingDescription(ValueError):
    """A key or flag whose meaning is not written in the code."""


class Key(NamedTuple):
    """One documented key: its name, its type and default as text, and its meaning."""

    name: str
    type: str
    default: str
    meaning: str


# Types and values, as a reader of a YAML file or a command line writes them.


def type_text(annotation: Any, sections: dict[type, str] | None = None) -> str:
    """A type in words: `int or null`, `one of rope, alibi`, `list of float`; a section's
    model as a link to its table (`sections`: model → anchor)."""
    sections = sections or {}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0], sections)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value_text(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a, sections) for a in args)
    if origin is list:
        return f"list of {type_text(args[0], sections)}"
    if origin is dict:
        return f"mapping of {type_text(args[0], sections)} to {type_text(args[1], sections)}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a, sections) for a in args) + "]"
    if annotation in sections:
        return f"[mapping](#{sections[annotation]})"
    if annotation is Any:
        return "any"
    return PRIMITIVES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def value_text(value: Any) -> str:
    """A value as YAML writes it: null, true, 0.001, a plain string, [a, b]."""
    value = to_jsonable_python(value, by_alias=True, exclude_none=True)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def default_text(value: Any) -> str:
    return f"`{value_text(value)}`"


def table(keys: list[Key], headings: tuple[str, str] = ("key", "default")) -> str:
    rows = [f"| {headings[0]} | type | {headings[1]} | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k.name}` | {k.type} | {k.default} | {cell(k.meaning)} |" for k in keys]
    return "\n".join(rows)


def cell(text: str) -> str:
    """Text in a table's cell, where a bare | would end the cell."""
    return text.replace("|", "\\|")


def required(meaning: str | None, where: str) -> str:
    if not meaning:
        raise MissingDescription(f"{where} has no description: write its meaning in the code")
    return " ".join(meaning.split())


# The configs: llm.config's dataclasses.


def config_keys(cls: type) -> list[Key]:
    """Every field of a config dataclass, in order, with its type, default and meaning."""
    hints = typing.get_type_hints(cls, include_extras=True)
    keys = []
    for f in dataclasses.fields(cls):
        meaning = required(f.metadata.get("description"), f"{cls.__name__}.{f.name}")
        if f.default is not dataclasses.MISSING:
            default = default_text(f.default)
        else:
            default = "the section's defaults"
        keys.append(Key(f.name, type_text(hints[f.name]), default, meaning))
    return keys


def config_page() -> str:
    """The page of every config key: `llm train`'s YAML file, section by section."""
    hints = typing.get_type_hints(RunConfig)
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    anchors = {hints[name]: name for name in sections}
    files = [key._replace(default=f"[its defaults](#{key.name})") for key in config_keys(RunConfig)]
    out = [
        "# Training configs",
        "",
        "`llm train CONFIG.yaml` reads a YAML file of three sections, `data`, `model` and "
        "`train`; a key left out takes its default. A search space's `fixed.model` and "
        "`fixed.train` set the same keys for every trial, and its `genes` vary them "
        "([search space](search-space.md)). Generated from `llm/config.py`.",
        "",
        table([key._replace(type=type_text(hints[key.name], anchors)) for key in files]),
    ]
    for name in sections:
        cls = hints[name]
        out += ["", f"## `{name}` {{#{name}}}", "", " ".join((cls.__doc__ or "").split())]
        out += ["", table(config_keys(cls))]
    return "\n".join(out) + "\n"


# The search space: evo.space's pydantic models.


class Section(NamedTuple):
    """A mapping of the space file: where it is (`search.budget`) and its model."""

    path: str
    model: type

    @property
    def anchor(self) -> str:
        return self.path.replace(".", "-").replace("[]", "").replace("<", "").replace(">", "")


def pydantic_fields(model: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or pydantic dataclass."""
    return dict(model.__pydantic_fields__)  # type: ignore[attr-defined]


def section_models(annotation: Any) -> Iterator[tuple[type, str]]:
    """The pydantic models inside a field's type, each with how its path continues:
    "" for the model itself, "[]" for a list's items, ".<name>" for a mapping's values."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from section_models(args[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from section_models(arg)
    elif origin is list:
        yield from ((model, "[]" + rest) for model, rest in section_models(args[0]))
    elif origin is dict:
        yield from ((model, ".<name>" + rest) for model, rest in section_models(args[1]))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, ""


def space_sections() -> list[Section]:
    """Every mapping of the space file, depth first in the order the file's keys come."""
    found: list[Section] = []

    def visit(path: str, model: type) -> None:
        found.append(Section(path, model))
        for name, info in pydantic_fields(model).items():
            key = info.alias or name
            for child, rest in section_models(info.annotation):
                visit(f"{path}.{key}{rest}" if path else f"{key}{rest}", child)

    visit("", SearchSpace)
    return found


def space_keys(section: Section, anchors: dict[type, str]) -> list[Key]:
    keys = []
    for name, info in pydantic_fields(section.model).items():
        key = info.alias or name
        where = f"{section.path or 'the space'}: {key}"
        meaning = required(info.description, where)
        if info.default_factory in anchors:
            default = f"[its defaults](#{anchors[info.default_factory]})"
        elif info.default_factory is not None:
            default = default_text(info.default_factory())  # type: ignore[call-arg]
        elif info.default is PydanticUndefined:
            default = "required"
        else:
            default = default_text(info.default)
        keys.append(Key(key, type_text(info.annotation, anchors), default, meaning))
    return keys


def gene_keys() -> list[Key]:
    """Every setting a gene can vary: the model's, the training's, and the special genes;
    `default` names the config section it belongs to."""
    config_fields = {
        section: {f.name: f for f in dataclasses.fields(cls)}
        for section, cls in (("model", ModelConfig), ("train", TrainConfig))
    }
    keys = []
    for name, annotation in GENE_TYPES.items():
        if name in SPECIAL_GENES:
            (info,) = [m for m in typing.get_args(annotation) if isinstance(m, FieldInfo)]
            meaning, of = required(info.description, f"the special gene {name}"), "special"
        else:
            section = "model" if name in config_fields["model"] else "train"
            described = config_fields[section][name].metadata.get("description")
            meaning = required(described, f"{section}.{name}")
            of = f"[`{section}`](config.md#{section})"
        keys.append(Key(name, type_text(annotation), of, meaning))
    return keys


def objectives_table() -> str:
    rows = ["| metric | direction | unit | what it is |", "| --- | --- | --- | --- |"]
    for metric in METRICS.values():
        if not metric.objective:
            continue
        rows.append(
            f"| `{metric.name}` | {metric.direction} | {metric.unit} | {metric.description} |"
        )
    return "\n".join(rows)


def space_page() -> str:
    """The page of every search-space key, section by section, with the genes and the
    objectives a space may name."""
    sections = space_sections()
    anchors = {s.model: s.anchor for s in sections if s.path}
    out = [
        "# Search space",
        "",
        "A space is a YAML file with six sections; `search_spaces/tiny.yaml` (CPU, minutes) "
        "and `search_spaces/small.yaml` (one GPU, about an hour) are complete examples, and "
        "`search_spaces/architectures.yaml` searches the model's variants. Errors name the "
        "file and the key path, e.g. `genes.n_heads.choice[2]`, and a space in which no "
        "valid genome exists is refused when it is loaded. Any value can be changed without "
        "editing the file: `evo run SPACE --set key.path=value`. Generated from "
        "`evo/space.py`.",
    ]
    for section in sections:
        title = f"`{section.path}`" if section.path else "The file"
        out += ["", f"## {title} {{#{section.anchor or 'space'}}}", ""]
        if section.path:
            out += [" ".join((section.model.__doc__ or "").split()), ""]
        out.append(table(space_keys(section, anchors)))
        if section.path == "genes.<name>":
            out += ["", "### The genes {#gene-list}", ""]
            out += [
                "A gene is one of these settings, each with a domain. A setting that is not "
                "a gene can be fixed under `fixed.model` or `fixed.train`; the vocabulary "
                "size (set by `data.vocab_size`) and the budgets (set by `search.target` and "
                "the rungs, or `trial`) can be neither.",
                "",
                table(gene_keys(), ("gene", "of")),
            ]
        if section.path == "search.objectives[]":
            out += ["", "### The objectives {#objective-list}", "", objectives_table()]
    return "\n".join(out) + "\n"


# The command lines: evo and llm.


def flag_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest
    name = ", ".join(action.option_strings)
    if action.nargs == 0:
        return name
    if action.choices is not None:
        return name
    metavar = action.metavar or action.dest.upper()
    return f"{name} {metavar}" if action.nargs != "?" else f"{name} [{metavar}]"


def flag_keys(parser: argparse.ArgumentParser, where: str) -> list[Key]:
    keys = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        meaning = required(action.help, f"{where} {flag_name(action)}")
        if action.choices is not None:
            meaning += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
        if action.required:
            default = "required"
        elif action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
            default = ""
        else:
            default = default_text(action.default)
        keys.append(Key(flag_name(action), "", default, meaning))
    return keys


def flags_table(keys: list[Key]) -> str:
    rows = ["| argument | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k.name}` | {k.default} | {cell(k.meaning)} |" for k in keys]
    return "\n".join(rows)


def usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=USAGE_WIDTH)
    prefix = "usage: "
    lines = parser.format_usage().removeprefix(prefix).rstrip().splitlines()
    return "\n".join([lines[0], *(line[len(prefix) :] for line in lines[1:])])


def command_line_page(cli: CommandLine) -> str:
    """The page of a tool: its own flags, then each command with its usage and flags."""
    parser = cli.parser
    out = [f"# `{cli.prog}`", "", " ".join((parser.description or "").split()), ""]
    out += [f"```\n{usage(parser)}\n```", "", flags_table(flag_keys(parser, cli.prog)), ""]
    out += [" ".join((parser.epilog or "").split()), ""]
    for name, sub in cli.commands.items():
        out += [f"## `{cli.prog} {name}` {{#{name}}}", ""]
        out += [" ".join((sub.description or "").split()), ""]
        out += [f"```\n{usage(sub)}\n```", ""]
        out += [flags_table(flag_keys(sub, f"{cli.prog} {name}")), ""]
    return "\n".join(out)


def evo_page() -> str:
    from evo.cli import build_command_line

    return command_line_page(build_command_line())


def llm_page() -> str:
    from llm.cli import build_command_line

    return command_line_page(build_command_line())


PAGES: dict[str, Callable[[], str]] = {
    SPACE_PAGE: space_page,
    CONFIG_PAGE: config_page,
    EVO_PAGE: evo_page,
    LLM_PAGE: llm_page,
}


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for path, page in PAGES.items():
        files.append(File.generated(config, path, content=page()))
    return files
