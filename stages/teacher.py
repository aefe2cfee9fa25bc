"""Stage ``teacher``: every ``data/prepared/<name>.zarr.zip`` -> ``data/teacher/<name>.zarr.zip`` (metric
depth)."""

import argparse

from videomamba_depth.config import load_params, load_section
from videomamba_depth.manifest import DATA_DIR, load_manifest, select_videos
from videomamba_depth.pervideo import PrecomputeConfig, run_videos
from videomamba_depth.teacher import TeacherConfig, teacher_tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="videos to run (default: all of data/manifest.yaml)")
    args = parser.parse_args(argv)
    params = load_params()
    names = list(select_videos(load_manifest(), args.names))
    config = load_section(TeacherConfig, "teacher", params)
    precompute = load_section(PrecomputeConfig, "precompute", params, required=False)
    tasks = teacher_tasks(names, config)
    run_videos("teacher", tasks, code_module="videomamba_depth.teacher",
               root=DATA_DIR / "teacher", prune=not args.names, workers=precompute.workers)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
