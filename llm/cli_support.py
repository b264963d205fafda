"""What both command-line tools share: how errors reach the user, and logging setup."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from llm.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int | None]


class CommandLine:
    """A tool made of subcommands; each accepts --debug and runs through `run_command`."""

    def __init__(self, prog: str, description: str | None) -> None:
        self.prog = prog
        self.parser = argparse.ArgumentParser(prog=prog, description=description)
        self.parser.add_argument(
            "--debug", action="store_true", help="show tracebacks of user errors"
        )
        self._commands = self.parser.add_subparsers(required=True, metavar="COMMAND")

    def command(self, name: str, func: Handler, help: str) -> argparse.ArgumentParser:
        sub = self._commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        return sub

    def main(self, argv: list[str] | None) -> int:
        args = self.parser.parse_args(argv)
        return run_command(lambda: args.func(args), prog=self.prog, debug=args.debug)


def run_command(command: Callable[[], int | None], *, prog: str, debug: bool) -> int:
    """Run a subcommand: a user error becomes one line on stderr and exit code 2 (with the
    traceback only under --debug); Ctrl-C exits with 130."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    try:
        return command() or 0
    except UserError as err:
        if debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
