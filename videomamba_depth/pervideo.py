"""Per-video work inside one DVC stage: each data stage is one DVC stage over every manifest video.

Why not one DVC stage per video (``foreach``): DVC builds a stage's outputs from the manifest names and
deletes them before the command runs, so an unchecked name (``../../x``, ``x;rm -rf``) reached the shell and
paths outside the repository before any of our code could refuse it; and DVC's bookkeeping grows faster
than the number of videos. Here the names never appear in ``dvc.yaml``: the stage validates the whole
manifest first (:func:`videomamba_depth.manifest.load_manifest`), then works through the videos.

Each output folder (``data/<kind>/``) is declared ``persist: true``, so DVC keeps it when the stage re-runs,
and each video's store records a *fingerprint* of everything it was computed from (its manifest entry, the
stage's params, the fingerprints or content hashes of its inputs, the code and the package versions). A
video whose store carries the fingerprint of this run is skipped, so adding a video computes only that
video, and a stage re-run after a failure resumes where it stopped. A failing video does not stop the
others; the stage then exits with one line per failed video, and every store written before is kept (each
store is written atomically, so a failed re-run keeps the previous good store too).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from videomamba_depth.codehash import code_fingerprint
from videomamba_depth.errors import InputError
from videomamba_depth.provenance import file_sha256, package_versions
from videomamba_depth.zarrio import PARTIAL_MARK, REPLACED_MARK

FINGERPRINT_ATTR = "fingerprint"


class VideoFailures(InputError):
    """Some videos of a stage failed: ``errors`` maps each failed video to its error."""

    def __init__(self, message: str, errors: Mapping[str, Exception]) -> None:
        super().__init__(message)
        self.errors = dict(errors)


@dataclass(frozen=True)
class VideoTask:
    """One video's work in a stage.

    - ``out``: what the task writes (a store, or the synth folder), atomically.
    - ``marker``: the Zarr group under ``out`` whose attributes hold the fingerprint (``out`` itself for a
      store).
    - ``inputs``: a JSON-serialisable description of everything the result depends on besides code and
      package versions (params, entry, input fingerprints or hashes).
    - ``run``: does the work.
    """

    name: str
    out: Path
    inputs: Mapping[str, Any]
    run: Callable[[], object]
    marker: Path | None = None
    packages: tuple[str, ...] = field(default=())

    @property
    def marker_path(self) -> Path:
        return self.out if self.marker is None else self.marker


def fingerprint(stage: str, code: str, versions: Mapping[str, str], inputs: Mapping[str, Any]) -> str:
    """sha256 of the stage name, code hash, package versions and inputs (canonical JSON)."""
    blob = json.dumps({"stage": stage, "code": code, "versions": versions, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stored_fingerprint(marker: str | Path) -> str | None:
    """The fingerprint recorded in the Zarr group ``marker``; None when absent or unreadable."""
    marker = Path(marker)
    if not (marker / "zarr.json").is_file():
        return None
    try:
        value = zarr.open_group(marker, mode="r", zarr_format=3).attrs.get(FINGERPRINT_ATTR)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def path_digest(path: str | Path | None) -> str | None:
    """Content hash of an input file, or of a folder's files (names and contents); None when absent."""
    if path is None:
        return None
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


def input_fingerprint(path: str | Path | None) -> str | None:
    """What an input store contributes to a fingerprint: its own recorded fingerprint, else its contents."""
    if path is None:
        return None
    return stored_fingerprint(path) or path_digest(path)


def run_videos(
    stage: str, tasks: Iterable[VideoTask], *, code_module: str, root: Path, prune: bool = True
) -> dict[str, str]:
    """Run every task whose output lacks this run's fingerprint; return ``{name: "computed"|"up to date"}``.

    ``code_module`` (dotted) is the library code the tasks run: its import closure's hash is part of every
    fingerprint. With ``prune``, before any work, entries of ``root`` that are ours but belong to no task
    (stores of videos removed from the manifest, leftovers of killed writers) are removed, so the stage's DVC
    output holds exactly the manifest's videos. Expected errors of one video
    (:class:`~videomamba_depth.errors.InputError` and ``OSError``: bad input, bad store, disk full) are
    reported and the other videos go on; then :class:`VideoFailures` is raised. Anything else is a bug and
    stops the stage with its traceback.
    """
    tasks = list(tasks)
    code = code_fingerprint(code_module)
    if prune:
        remove_foreign_outputs(root, {task.out for task in tasks})
    status: dict[str, str] = {}
    failures: dict[str, Exception] = {}
    versions = {packages: package_versions(*packages) for packages in {task.packages for task in tasks}}
    for task in tasks:
        wanted = fingerprint(stage, code, versions[task.packages], task.inputs)
        if task.out.exists() and stored_fingerprint(task.marker_path) == wanted:
            status[task.name] = "up to date"
            print(f"{stage}: {task.name}: up to date", flush=True)
            continue
        try:
            task.run()
        except (InputError, OSError) as exc:
            failures[task.name] = exc
            print(f"{stage}: {task.name}: {exc}", flush=True)
            continue
        # Recorded last: a store killed before this line is simply recomputed by the next run.
        zarr.open_group(task.marker_path, mode="r+", zarr_format=3).attrs[FINGERPRINT_ATTR] = wanted
        status[task.name] = "computed"
        print(f"{stage}: {task.name}: computed", flush=True)
    if failures:
        summary = f"{len(failures)} of {len(tasks)} videos failed; the others are done and kept"
        lines = [f"{name}: {exc}" for name, exc in failures.items()]
        raise VideoFailures("; ".join(lines) + f" ({summary})", failures)
    return status


def remove_foreign_outputs(root: Path, keep: set[Path]) -> list[Path]:
    """Remove entries of ``root`` written by us that no task will write; leave anything else, with a note.

    Ours: a Zarr store (``zarr.json`` with a ``kind`` attribute), a folder with such a store inside (the
    synth folders), or a leftover of an interrupted write (``*.partial-*``, ``*.replaced-*``).
    """
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry in keep:
            continue
        leftover = PARTIAL_MARK in entry.name or REPLACED_MARK in entry.name
        if leftover or _is_our_output(entry):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
            print(f"{root}: removed {entry.name} (not in the manifest, or left by an interrupted run)")
        else:
            print(f"{root}: note: {entry.name} is not ours and is left alone (it becomes part of the output)")
    return removed


def _is_our_output(entry: Path) -> bool:
    if not entry.is_dir():
        return False
    if (entry / "zarr.json").is_file():
        return _has_kind(entry)
    children = list(entry.iterdir())
    return any(c.is_dir() and _has_kind(c) for c in children)


def _has_kind(path: Path) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "kind" in meta.get("attributes", {})

