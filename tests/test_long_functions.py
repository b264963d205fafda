"""The check for functions over 80 lines (.ci/long_functions.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "long_functions.py"
spec = importlib.util.spec_from_file_location("long_functions", SCRIPT)
assert spec is not None and spec.loader is not None
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def function(name: str, lines: int, indent: str = "") -> str:
    """A function of exactly `lines` lines, `def` included."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))
    return f"{indent}def {name}() -> None:\n{body}"


def test_functions_and_methods_over_the_limit_are_found_with_their_length(tmp_path):
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text(function("fits", 80) + "\n\n" + function("long", 81))
    method = function("method", 90, indent="    ")
    (package / "sub" / "b.py").write_text(f"@decorated\nclass C:\n{method}")
    found = {(f.path.name, f.name, f.lines) for f in check.long_functions(package)}
    assert found == {("a.py", "long", 81), ("b.py", "method", 90)}
    assert check.long_functions(package, limit=90) == []


def test_no_function_of_the_packages_is_over_80_lines():
    root = SCRIPT.parents[1]
    found = [
        f.describe() for package in ("llm", "evo") for f in check.long_functions(root / package)
    ]
    assert found == []
