"""Static import closure and the code fingerprint that guards training resumes."""

from pathlib import Path

from videomamba_depth.codehash import ROOT, code_fingerprint, import_closure


def write(root: Path, name: str, text: str) -> Path:
    path = root / "videomamba_depth" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_closure_follows_lazy_and_package_imports_only(tmp_path):
    init = write(tmp_path, "__init__.py", "")
    sub_init = write(tmp_path, "sub/__init__.py", "from videomamba_depth.sub.c import C\n")
    lazy = "import numpy\n\ndef f():\n    from videomamba_depth.b import g\n    return g\n"
    a = write(tmp_path, "a.py", lazy)
    b = write(tmp_path, "b.py", "from videomamba_depth import sub\n")
    c = write(tmp_path, "sub/c.py", "C = 1\n")
    write(tmp_path, "unrelated.py", "import videomamba_depth.a\n")
    assert import_closure(a, tmp_path) == {a, b, init, sub_init, c}
    assert import_closure(c, tmp_path) == {c}


def test_training_fingerprint_covers_what_training_runs_and_nothing_else():
    loop = ROOT / "videomamba_depth/training/loop.py"
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(loop)}
    assert {"videomamba_depth/losses/__init__.py", "videomamba_depth/ssm/scan.py",
            "videomamba_depth/models/io.py", "videomamba_depth/training/data.py"} <= closure
    # Editing evaluation or inference code must not throw away a resumable training state.
    elsewhere = ("videomamba_depth/evaluation/", "videomamba_depth/inference/")
    assert not any(p.startswith(elsewhere) for p in closure)
    fingerprint = code_fingerprint("videomamba_depth.training.loop")
    assert len(fingerprint) == 64 and fingerprint == code_fingerprint("videomamba_depth.training.loop")
    assert fingerprint != code_fingerprint("videomamba_depth.training.data")
