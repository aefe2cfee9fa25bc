"""Which library files a piece of code can run, and a hash of them.

Imports are traced statically: every ``import videomamba_depth...`` anywhere in a file, function-level
(lazy) imports included, and the packages' ``__init__.py`` files that importing a submodule runs. Used by
the training resume check (a state is resumed only by the same code) and by the test that ``dvc.yaml``
declares each stage's code dependencies.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "videomamba_depth"
# The directory that holds the package (the repository root in an editable install).
ROOT = Path(__file__).resolve().parents[1]


def module_file(dotted: str, root: Path = ROOT) -> Path | None:
    """The file of the package module or subpackage ``dotted`` names, or None."""
    path = root.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_files(file: Path, root: Path = ROOT) -> set[Path]:
    """Library files imported anywhere in ``file`` (a name imported from a package counts as a submodule)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            # Importing a.b.c also runs a/__init__.py and a/b/__init__.py.
            for i in range(1, len(parts) + 1):
                module = module_file(".".join(parts[:i]), root)
                if module is not None:
                    found.add(module)
    return found


def import_closure(start: Path, root: Path = ROOT) -> set[Path]:
    """Every library file reachable by imports from ``start`` (``start`` itself included)."""
    seen, todo = {start}, [start]
    while todo:
        for module in imported_files(todo.pop(), root) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def code_fingerprint(module: str) -> str:
    """sha256 of the files in the import closure of ``module`` (dotted name): relative paths and contents."""
    start = module_file(module)
    if start is None:
        raise ValueError(f"{module}: not a module of {PACKAGE}")
    digest = hashlib.sha256()
    for path in sorted(import_closure(start)):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
