"""DVC stage ``teacher@<video>``: data/prepared/<video>.zarr -> data/teacher/<video>.zarr."""

from __future__ import annotations

import argparse

from videomamba_depth.config import load_params, load_section
from videomamba_depth.manifest import load_manifest_entry, store_path
from videomamba_depth.teacher import TeacherConfig, run_teacher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video", help="video name: a key of 'videos' in params.yaml")
    args = parser.parse_args(argv)
    params = load_params()
    load_manifest_entry(args.video, params)  # checks the name; the prepared store holds all the teacher needs
    cfg = load_section(TeacherConfig, "teacher", params)
    run_teacher(cfg, store_path("prepared", args.video), store_path("teacher", args.video), video=args.video)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
