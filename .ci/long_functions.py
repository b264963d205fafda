"""Functions longer than the project allows (80 lines, from `def` to the last line of the
body, decorators left out), in the packages given (default: llm and evo).

Prints one line per function over the limit, `path:line name (N lines)`, longest first,
and exits 1 when there is any; 0 and nothing printed when there is none. The test suite
holds llm and evo to it (tests/test_long_functions.py).

    python .ci/long_functions.py
    python .ci/long_functions.py llm evo bench --limit 60
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import NamedTuple

LIMIT = 80
REPO = Path(__file__).resolve().parents[1]


class LongFunction(NamedTuple):
    path: Path
    line: int
    name: str
    lines: int

    def describe(self) -> str:
        return f"{self.path}:{self.line} {self.name} ({self.lines} lines)"


def long_functions(folder: Path, limit: int = LIMIT) -> list[LongFunction]:
    """Every function and method under `folder` longer than `limit` lines. A nested
    function counts on its own and inside the function around it."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(LongFunction(path, node.lineno, node.name, lines))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("packages", nargs="*", default=["llm", "evo"], help="folders of the repo")
    p.add_argument("--limit", type=int, default=LIMIT, help=f"lines (default {LIMIT})")
    args = p.parse_args()
    found = [f for name in args.packages for f in long_functions(REPO / name, args.limit)]
    for function in sorted(found, key=lambda f: -f.lines):
        print(function._replace(path=function.path.relative_to(REPO)).describe())
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
