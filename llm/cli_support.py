"""What both command-line tools share: how errors reach the user, and logging setup."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from llm.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


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
