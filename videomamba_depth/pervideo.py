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

The heavy stages (teacher, flow) fan out over processes with PyTorch's elastic launcher, the engine behind
``torchrun`` (:func:`run_videos` with ``workers``; README "Many videos, many GPUs"). Videos are independent
and each is computed whole by one process, so the stores are byte-identical whatever the number of workers.
The same code runs one rank of a user's multi-node ``torchrun -m stages.teacher``: each rank takes its share
of the manifest and skips what is up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from videomamba_depth.codehash import code_fingerprint
from videomamba_depth.config import StageConfig
from videomamba_depth.errors import InputError
from videomamba_depth.provenance import file_sha256, package_versions
from videomamba_depth.zarrio import (
    PARTIAL_MARK,
    REPLACED_MARK,
    atomic_file,
    is_packed,
    node_metadata,
    recording_attributes,
)

FINGERPRINT_ATTR = "fingerprint"


@dataclass(frozen=True)
class PrecomputeConfig(StageConfig):
    """The ``precompute`` section of ``params.yaml``: how teacher and flow fan out over processes.

    ``workers``: processes on this machine (``torchrun --nproc-per-node``); with CUDA, one per GPU, each bound
    to its own device. Results do not depend on it (not part of any fingerprint, not a DVC param of a stage).
    """

    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


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
    - ``run``: does the work (picklable: a ``functools.partial`` of a module-level function, so that a
      worker process can run it).
    - ``cost``: relative work (e.g. frames x pixels), to balance the videos over workers.
    """

    name: str
    out: Path
    inputs: Mapping[str, Any]
    run: Callable[[], object]
    marker: Path | None = None
    packages: tuple[str, ...] = field(default=())
    cost: float = 1.0

    @property
    def marker_path(self) -> Path:
        return self.out if self.marker is None else self.marker


def fingerprint(stage: str, code: str, versions: Mapping[str, str], inputs: Mapping[str, Any]) -> str:
    """sha256 of the stage name, code hash, package versions and inputs (canonical JSON)."""
    blob = json.dumps({"stage": stage, "code": code, "versions": versions, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stored_fingerprint(marker: str | Path) -> str | None:
    """The fingerprint recorded in the Zarr group ``marker`` (its ``zarr.json``); None when absent or
    unreadable."""
    value = _attrs(marker).get(FINGERPRINT_ATTR)
    return value if isinstance(value, str) else None


def _attrs(node: str | Path) -> dict:
    attrs = node_metadata(node).get("attributes")
    return attrs if isinstance(attrs, dict) else {}


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


def array_cost(store: str | Path, array: str = "rgb") -> float:
    """Elements of ``store/array`` (frames x pixels x channels), from its ``zarr.json``: a task's ``cost``;
    1 when unreadable (a missing input store fails in the task itself, with its clear error)."""
    shape = node_metadata(Path(store) / array).get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        return 1.0
    return float(np.prod(shape))


def run_videos(
    stage: str, tasks: Iterable[VideoTask], *, code_module: str, root: Path, prune: bool = True,
    workers: int = 1,
) -> dict[str, str]:
    """Run every task whose output lacks this run's fingerprint; return ``{name: "computed"|"up to date"}``.

    ``code_module`` (dotted) is the library code the tasks run: its import closure's hash is part of every
    fingerprint. With ``prune``, before any work, entries of ``root`` that are ours but belong to no task
    (stores of videos removed from the manifest, leftovers of killed writers) are removed, so the stage's DVC
    output holds exactly the manifest's videos, and at the end, when every video is done, the fingerprints of
    all of them are written to the folder's index (:func:`write_index`). Expected errors of one video
    (:class:`~videomamba_depth.errors.InputError` and ``OSError``: bad input, bad store, disk full) are
    reported and the other videos go on; then :class:`VideoFailures` is raised. Anything else is a bug and
    stops the stage with its traceback.

    ``workers > 1``: the videos to compute are balanced by ``cost`` over that many processes started by
    PyTorch's elastic launcher. Inside a rank of a ``torchrun`` launch (``WORLD_SIZE > 1``) this process
    computes only its share of all tasks (the same split on every rank, whatever is already done) and does
    not prune: another rank may be writing.
    """
    tasks = list(tasks)
    code = code_fingerprint(code_module)
    rank, world = torchrun_rank()
    if prune and world == 1:
        remove_foreign_outputs(root, {task.out for task in tasks})
    versions = {packages: package_versions(*packages) for packages in {task.packages for task in tasks}}
    wanted = {task.name: fingerprint(stage, code, versions[task.packages], task.inputs) for task in tasks}
    if world > 1:
        bind_worker(rank, world)
        tasks = balanced_shares(tasks, world)[rank]
    status: dict[str, str] = {}
    pending = []
    for task in tasks:
        if task.out.exists() and stored_fingerprint(task.marker_path) == wanted[task.name]:
            status[task.name] = "up to date"
            print(f"{stage}: {task.name}: up to date", flush=True)
        else:
            pending.append(task)
    nproc = min(workers, len(pending)) if world == 1 else 1
    if nproc > 1:
        results = launch_workers(stage, balanced_shares(pending, nproc), wanted)
    else:
        results = run_pending(stage, pending, wanted)
    failures = {name: exc for name, exc in results.items() if exc is not None}
    status.update({name: "computed" for name, exc in results.items() if exc is None})
    if failures:
        summary = f"{len(failures)} of {len(tasks)} videos failed; the others are done and kept"
        lines = [f"{name}: {exc}" for name, exc in failures.items()]
        raise VideoFailures("; ".join(lines) + f" ({summary})", failures)
    if prune and world == 1:
        write_index(root, {task.name: wanted[task.name] for task in tasks})
    return status


def index_path(root: str | Path) -> Path:
    """``data/index/<kind>.json`` for the stores under ``data/<kind>``: what DVC tracks for its consumers."""
    root = Path(root)
    return root.parent / "index" / f"{root.name}.json"


def write_index(root: Path, fingerprints: Mapping[str, str]) -> Path:
    """Write the index of ``root``: every video's fingerprint (sorted; atomically).

    The stages that read these stores depend on this small file, not on the folder: DVC then walks each
    folder of stores once (as its stage's output) instead of once more per reader, and a reader re-runs
    exactly when a store it may read was recomputed (its fingerprint changed).
    """
    path = index_path(root)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"videos": dict(sorted(fingerprints.items()))}, indent=1) + "\n")
    return path


def read_index(root: str | Path) -> dict[str, str]:
    """``{video: fingerprint}`` of :func:`write_index`; an error naming the file when it is missing."""
    path = index_path(root)
    try:
        return dict(json.loads(path.read_text())["videos"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: missing or unreadable ({exc}); run `dvc repro`") from exc


def run_pending(
    stage: str, tasks: Iterable[VideoTask], wanted: Mapping[str, str]
) -> dict[str, Exception | None]:
    """Compute ``tasks`` here, one after the other; ``{name: None (computed) | the expected error}``."""
    results: dict[str, Exception | None] = {}
    for task in tasks:
        try:
            # The fingerprint goes into the store as it is written, so it is there exactly when the store
            # is complete: a store killed mid-write never appeared, and is computed by the next run.
            with recording_attributes({FINGERPRINT_ATTR: wanted[task.name]}):
                task.run()
        except (InputError, OSError) as exc:
            results[task.name] = exc
            say(f"{stage}: {task.name}: {exc}")
            continue
        if stored_fingerprint(task.marker_path) != wanted[task.name]:
            raise RuntimeError(f"{stage}: {task.name}: {task.marker_path} lacks its fingerprint (a bug)")
        results[task.name] = None
        say(f"{stage}: {task.name}: computed")
    return results


def say(line: str) -> None:
    """Print ``line`` with one write: worker processes share stdout, and an unbuffered ``print`` writes the
    line and its newline separately, so two workers' lines could interleave mid-line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def balanced_shares(tasks: Iterable[VideoTask], n: int) -> list[list[VideoTask]]:
    """Split ``tasks`` into ``n`` shares of about equal total ``cost`` (largest first, to the lightest share).

    Deterministic: it depends only on the tasks' costs and names, so every rank computes the same split.
    """
    shares: list[list[VideoTask]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for task in sorted(tasks, key=lambda t: (-t.cost, t.name)):
        i = loads.index(min(loads))
        shares[i].append(task)
        loads[i] += task.cost
    return shares


def torchrun_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process in a ``torchrun`` launch, ``(0, 1)`` outside one."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return 0, 1
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def bind_worker(rank: int, world: int) -> None:
    """Give this worker its share of the machine: its own GPU (``LOCAL_RANK``) and of the CPU threads."""
    import torch

    from videomamba_depth.devices import cpu_threads

    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    threads = cpu_threads(local_world)
    torch.set_num_threads(threads)
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(threads)


def launch_workers(
    stage: str, shares: list[list[VideoTask]], wanted: Mapping[str, str]
) -> dict[str, Exception | None]:
    """Run each share in its own process (PyTorch elastic launcher, one node); merge their results.

    A bug in a worker stops them all and is raised with the worker's traceback; the stores already written
    keep their fingerprints, so the next run resumes.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=len(shares), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=f"{stage}-{os.getpid()}", max_restarts=0,
                          monitor_interval=0.1)
    print(f"{stage}: {sum(map(len, shares))} videos over {len(shares)} worker processes", flush=True)
    per_rank = elastic_launch(config, _worker_main)(stage, shares, dict(wanted))
    return {name: exc for rank in sorted(per_rank) for name, exc in per_rank[rank].items()}


def _worker_main(
    stage: str, shares: list[list[VideoTask]], wanted: dict[str, str]
) -> dict[str, Exception | None]:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    bind_worker(rank, world)
    results = run_pending(stage, shares[rank], wanted)
    return {name: _picklable(exc) for name, exc in results.items()}


def _picklable(exc: Exception | None) -> Exception | None:
    """The error itself when it survives the trip back to the launcher, else an InputError with its text."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any pickling problem: keep the message
        return InputError(str(exc))
    return exc


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
    if _is_store(entry):
        return _has_kind(entry)
    return entry.is_dir() and any(_is_store(c) and _has_kind(c) for c in entry.iterdir())


def _is_store(entry: Path) -> bool:
    """A packed store file, or a folder with a group's ``zarr.json``."""
    return entry.is_file() if is_packed(entry) else (entry / "zarr.json").is_file()


def _has_kind(path: Path) -> bool:
    return "kind" in _attrs(path)
