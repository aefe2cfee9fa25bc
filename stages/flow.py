"""Stage ``flow``: every ``data/prepared`` + ``data/teacher/<name>.zarr.zip`` ->
``data/flow/<name>.zarr.zip``."""

import argparse

from videomamba_depth.config import load_params, load_section
from videomamba_depth.flow import FlowConfig, flow_tasks
from videomamba_depth.manifest import DATA_DIR, load_manifest, select_videos
from videomamba_depth.pervideo import PrecomputeConfig, run_videos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="videos to run (default: all of data/manifest.yaml)")
    args = parser.parse_args(argv)
    params = load_params()
    names = list(select_videos(load_manifest(), args.names))
    config = load_section(FlowConfig, "flow", params)
    precompute = load_section(PrecomputeConfig, "precompute", params, required=False)
    tasks = flow_tasks(names, config)
    run_videos("flow", tasks, code_module="videomamba_depth.flow",
               root=DATA_DIR / "flow", prune=not args.names, workers=precompute.workers)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
