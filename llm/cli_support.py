"""What both command-line tools share: how errors reach the user, and logging setup."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from llm.atomic import STORAGE_ERRNOS
from llm.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int | None]


DEBUG_HELP = "show tracebacks of user errors"
# What `run_command` does with errors, said once for both tools' --help.
EPILOG = (
    "A user error is one line on stderr and exit code 2; so is an output path that cannot "
    "be written (no permission, a file where a folder should be, a full or read-only "
    "disk). Ctrl-C exits with code 130."
)


class CommandLine:
    """A tool made of subcommands; each accepts --debug and runs through `run_command`."""

    def __init__(self, prog: str, description: str | None) -> None:
        self.prog = prog
        self.parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG)
        self.parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        self._commands = self.parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        self, name: str, func: Handler, help: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        """A subcommand: `help` is its line in the tool's --help, `description` (default:
        the same) heads its own."""
        sub = self._commands.add_parser(name, help=help, description=description or help)
        sub.set_defaults(func=func)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        return sub

    @property
    def commands(self) -> dict[str, argparse.ArgumentParser]:
        """Each subcommand's parser, by name, in the order they were added."""
        return dict(self._commands.choices)

    def main(self, argv: list[str] | None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        args = self.parser.parse_args(argv)
        args.argv = argv  # a command that starts copies of itself passes them on
        return run_command(lambda: args.func(args), prog=self.prog, debug=args.debug)


def run_command(command: Callable[[], int | None], *, prog: str, debug: bool) -> int:
    """Run a subcommand: a user error becomes one line on stderr and exit code 2 (with the
    traceback only under --debug); Ctrl-C exits with 130.

    A filesystem error that names its path (a folder without permission, a file where a
    folder should be) or is the disk's (full, read-only) is a user error too: the user
    named the path, and fixes it there.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    try:
        return command() or 0
    except UserError as err:
        if debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        message = os_error_message(err)
        if debug or message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def os_error_message(err: OSError) -> str | None:
    """`err` as one line naming its paths and the problem; None when it names no path and
    is not the disk's, which makes it a bug (a socket, a pipe) to show with its traceback."""
    reason = err.strerror or str(err)
    if err.filename is None:
        return reason if err.errno in STORAGE_ERRNOS else None
    names = [
        os.fsdecode(name) if isinstance(name, bytes) else str(name)
        for name in (err.filename, err.filename2)
        if name is not None
    ]
    return f"{' -> '.join(names)}: {reason}"


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` and `option=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
