"""Two figures of the code's shape (issue 10): function-local imports, and the largest
functions of ``training/`` and ``serving/``.

    python scripts/code_metrics.py        # from the repository root

An import inside a function (or class body) hides a dependency from a reader and from
``lint-imports``; a long function hides the steps. Counted with ``ast``, per file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("features", "modelstore", "training", "serving", "refracture")


def local_imports(path: Path) -> int:
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    return sum(1 for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top)


def functions(path: Path) -> list[tuple[int, str]]:
    return [(n.end_lineno - n.lineno + 1, f"{path}:{n.name}") for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def main() -> None:
    files = [p for pkg in PACKAGES if Path(pkg).is_dir() for p in sorted(Path(pkg).rglob("*.py"))]
    counts = {str(p): n for p in files if (n := local_imports(p))}
    print(f"function-local imports: {sum(counts.values())}")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d}  {name}")
    for pkg in ("training", "serving"):
        lines, name = max(f for p in Path(pkg).rglob("*.py") for f in functions(p))
        print(f"largest function in {pkg}/: {name} ({lines} lines)")


if __name__ == "__main__":
    main()
