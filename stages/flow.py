"""DVC stage ``flow@<video>``: data/prepared + data/teacher/<video>.zarr -> data/flow/<video>.zarr."""

from __future__ import annotations

import argparse

from videomamba_depth.config import load_section
from videomamba_depth.flow import FlowConfig, compute_flow_store
from videomamba_depth.manifest import load_manifest_entry, store_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video", help="video name (a key of `videos` in params.yaml)")
    args = parser.parse_args(argv)
    load_manifest_entry(args.video)  # only checks the name: flow reads nothing from the entry itself
    cfg = load_section(FlowConfig, "flow")
    compute_flow_store(
        store_path("prepared", args.video),
        store_path("teacher", args.video),
        store_path("flow", args.video),
        cfg,
        video=args.video,
    )


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
