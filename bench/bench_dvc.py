"""DVC's own cost as the video count grows: ``dvc status``, a no-op ``dvc repro``, dvc.lock, adding a video.

Each project is a temporary folder with the repository's real data stages (``synth``, ``decode``,
``prepare``, ``teacher``, ``flow``) and ``split``, copied from ``dvc.yaml``, over ``N`` tiny synthetic
videos (64 x 48 pixels, 8 frames). ``pretrain``, ``train`` and ``evaluate`` are left out: their DVC cost does
not grow with the video count (train and evaluate depend on one split file each, not on the data folders).

Per ``N``: the first ``dvc repro`` (all the work); ``dvc status`` and a second ``dvc repro`` with nothing to
do; dvc.lock's size; a ``train.lr`` change must leave every stage up to date (a sweep touches no data
stage); then one held-out video is added (to data/synth_videos.yaml, data/manifest.yaml and
data/evaluate_videos.yaml) and ``dvc repro`` must compute that video only and leave
``data/split/train.json`` as it was (training is not re-run). Its time is compared with the first
``dvc repro`` of a one-video project (that video's work plus the fixed per-stage overhead).

Last, what ``decode`` pays on every run to confirm that the manifest's videos are unchanged (the content
hash in each fingerprint): ``--inputs`` files of ``--input-mb`` MB each, hashed once in full, then again,
when the hash cache (``videomamba_depth.provenance.file_sha256``) answers from each file's stat.

Run: ``python -m bench.bench_dvc --videos 8 64 256 1000`` (about 22 min on 2 idle cores, most of it the first
repro at 1,000 videos). Results go to bench/results/bench_dvc.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import write_results
from videomamba_depth.config import VIDEO_LISTS, load_video_list, write_video_list
from videomamba_depth.manifest import MANIFEST_FILE, load_manifest, write_manifest
from videomamba_depth.pervideo import path_digest
from videomamba_depth.provenance import DIGEST_CACHE_ENV, RACY_S
from videomamba_depth.synth.export import GT_STORE

REPO = Path(__file__).resolve().parents[1]
STAGES = ("synth", "decode", "prepare", "teacher", "flow", "split")
TINY_SYNTH = {"width": 64, "height": 48, "num_frames": [8, 8], "supersample": 1}
SEED0 = 500_000  # far from the embedded default's seeds


def dvc(project: Path, *args: str) -> tuple[float, str]:
    """Run ``dvc args`` in ``project``; (wall seconds, stdout + stderr). Fails loudly."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {project}:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def video_names(n: int) -> list[str]:
    return [f"v{i:05d}" for i in range(n)]


def write_project_params(root: Path, names: list[str], held_out: int) -> None:
    """params.yaml (the repository's sections, the tiny synth set, the repository's ``train.lr``), the
    video lists (the synth seeds of ``names``; the last ``held_out`` videos are evaluate's, the others
    train's) and data/manifest.yaml (their files)."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {
        "synth": {**base["synth"], **TINY_SYNTH},
        **{section: base[section] for section in ("decode", "prepare", "precompute", "teacher", "flow")},
        "train": {"lr": base["train"]["lr"]},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_video_lists(root, names, held_out)


def write_video_lists(root: Path, names: list[str], held_out: int) -> None:
    """The video lists and the manifest of :func:`write_project_params`."""
    split = len(names) - held_out
    write_video_list("synth", {n: SEED0 + i for i, n in enumerate(names)}, root)
    write_video_list("train", names[:split], root)
    write_video_list("evaluate", names[split:], root)
    manifest = {n: {"video": f"data/synth/{n}/video.mp4", "intrinsics": f"data/synth/{n}/intrinsics.json",
                    "ground_truth": f"data/synth/{n}/{GT_STORE}"} for n in names}
    write_manifest(manifest, root / MANIFEST_FILE)


def make_project(root: Path, names: list[str]) -> Path:
    """A DVC project (no Git) with the library, the stages of :data:`STAGES`, params.yaml and the manifest."""
    root.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("videomamba_depth", "stages"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: pipeline["stages"][s] for s in STAGES}},
                                                  sort_keys=False))
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    held_out = max(1, len(names) // 4)
    write_project_params(root, names, held_out)
    dvc(root, "init", "--no-scm", "-q")
    return root


def add_video(project: Path, name: str) -> None:
    """Add ``name`` as one more held-out video (synth seed, manifest entry, evaluate.videos); params.yaml and
    the training videos stay as they were."""
    names = [*load_manifest(project / MANIFEST_FILE), name]
    write_video_lists(project, names, len(load_video_list(project / VIDEO_LISTS["evaluate"])) + 1)


def sweep_train(project: Path) -> None:
    """Change ``train.lr``, as ``dvc exp run -S train.lr=...`` would."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def computed(log: str) -> list[str]:
    return re.findall(r"^(\w+): (\S+): computed$", log, re.M)


def measure(root: Path, n: int, keep: bool = False) -> dict:
    names = video_names(n + 1)
    project = make_project(root / f"n{n}", names[:n])
    first, log = dvc(project, "repro")
    assert len(computed(log)) == 5 * n, "the first repro computes every video in every data stage"
    status, log = dvc(project, "status")
    assert "up to date" in log, log
    noop, log = dvc(project, "repro")
    assert "Running stage" not in log, log
    lock = (project / "dvc.lock").read_bytes()
    files = sum(len(files) for _, _, files in os.walk(project / "data"))
    train_split = (project / "data/split/train.json").read_bytes()
    sweep_train(project)
    _, log = dvc(project, "status")
    assert "up to date" in log, f"a train.* sweep changed a data stage or split: {log}"
    add_video(project, names[n])
    add, log = dvc(project, "repro")
    work = computed(log)
    assert sorted(work) == sorted((stage, names[n]) for stage in STAGES[:5]), work
    assert (project / "data/split/train.json").read_bytes() == train_split, "a held-out video re-ran train"
    if not keep:
        shutil.rmtree(project)
    return {"videos": n, "first_repro_s": first, "status_s": status, "noop_repro_s": noop,
            "lock_bytes": len(lock), "lock_lines": lock.count(b"\n"),
            "lock_names_videos": any(name.encode() in lock for name in names), "data_files": files,
            "add_one_s": add}


def input_check(root: Path, files: int, megabytes: int) -> dict:
    """Seconds to hash ``files`` random files of ``megabytes`` MB each (as ``decode`` fingerprints its
    videos): the first time, in full; the second, from the hash cache."""
    folder = root / "inputs"
    folder.mkdir(parents=True)
    paths = [folder / f"video_{i:04d}.mp4" for i in range(files)]
    for path in paths:
        path.write_bytes(os.urandom(megabytes << 20))
    time.sleep(RACY_S + 0.5)  # older than the cache's racy window, as a user's videos are
    seconds, digests = [], []
    for _ in range(2):
        start = time.perf_counter()
        digests.append([path_digest(path) for path in paths])
        seconds.append(time.perf_counter() - start)
    assert digests[0] == digests[1], "the cached hashes differ from the full ones"
    shutil.rmtree(folder)
    return {"files": files, "megabytes": megabytes, "first_s": seconds[0], "cached_s": seconds[1]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[8, 64, 256, 1000])
    parser.add_argument("--results", type=Path, default=None, help="folder for the results (bench/results)")
    parser.add_argument("--keep", type=Path, default=None, help="build the projects here and keep them")
    parser.add_argument("--inputs", type=int, default=64, help="input files for the hash check")
    parser.add_argument("--input-mb", type=int, default=16, help="size of each, MB")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_dvc_") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        # The stages' hash cache starts empty and is not the user's (the stages inherit the variable).
        os.environ[DIGEST_CACHE_ENV] = str(Path(tmp) / "sha256.sqlite")
        single = make_project(root / "one", video_names(1))
        one_video, _ = dvc(single, "repro")
        shutil.rmtree(single)
        rows = []
        for n in args.videos:
            rows.append(measure(root, n, keep=args.keep is not None))
            print(rows[-1], flush=True)
        inputs = input_check(root, args.inputs, args.input_mb)
    results = {"one_video_repro_s": one_video, "tiny_synth": TINY_SYNTH, "stages": list(STAGES),
               "cpu_count": os.cpu_count(), "rows": rows, "input_check": inputs}
    lines = [
        f"DVC cost by video count (tiny videos: 64 x 48, 8 frames; stages {', '.join(STAGES)}). A one-video "
        f"project's first `dvc repro`: {one_video:.1f} s.",
        "",
        "| videos | first `dvc repro` | `dvc status` | no-op `dvc repro` | dvc.lock | files under data/ "
        "| adding one video (x one-video project) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['videos']} | {r['first_repro_s']:.0f} s | {r['status_s']:.1f} s | "
                     f"{r['noop_repro_s']:.1f} s | {r['lock_bytes'] / 1024:.0f} KB / {r['lock_lines']} lines "
                     "| "
                     f"{r['data_files']} | {r['add_one_s']:.1f} s ({r['add_one_s'] / one_video:.2f}x) |")
    lines += [
        "",
        f"Confirming that {inputs['files']} input videos of {inputs['megabytes']} MB are unchanged (their "
        f"content hashes): {inputs['first_s']:.2f} s the first time, {inputs['cached_s']:.3f} s from the "
        f"hash cache ({inputs['first_s'] / max(inputs['cached_s'], 1e-9):.0f}x).",
    ]
    kwargs = {} if args.results is None else {"directory": args.results}
    write_results("bench_dvc", results, "\n".join(lines) + "\n", **kwargs)


if __name__ == "__main__":
    main()
