"""dvc.yaml declares, for every stage, each library file the stage's code can import.

A missing code dependency means DVC reports a stage as up to date after the code that produced its outputs
changed: silently stale caches. The imports are traced statically (function-level imports included, so
lazily imported backends count) from ``stages/<stage>.py`` through ``videomamba_depth``.
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "videomamba_depth"


def _module_file(dotted: str) -> Path | None:
    """The file of a ``videomamba_depth`` module or package, if ``dotted`` names one."""
    path = ROOT.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(file: Path) -> set[Path]:
    """Library files imported anywhere in ``file`` (names imported from a package count as its submodules)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            # Importing a.b.c also runs a/__init__.py and a/b/__init__.py.
            for i in range(1, len(parts) + 1):
                module = _module_file(".".join(parts[:i]))
                if module is not None:
                    found.add(module)
    return found


def _closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        file = todo.pop()
        for module in _imports(file) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_declares_every_library_file_it_imports(stage):
    spec = _stages()[stage]
    spec = spec.get("do", spec)
    module = spec["cmd"].split("python -m ")[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    deps = [ROOT / d for d in spec["deps"] if not d.startswith("${")]
    assert entry in deps, f"{stage}: {entry.relative_to(ROOT)} is not a dependency"
    missing = sorted(
        str(f.relative_to(ROOT)) for f in _closure(entry) if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage '{stage}' imports undeclared library files: {missing}"


def test_train_params_never_reach_data_stages():
    for name, spec in _stages().items():
        spec = spec.get("do", spec)
        if name not in ("train", "evaluate"):
            assert not any(str(p).startswith("train") for p in spec.get("params", [])), name
