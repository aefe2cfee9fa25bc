"""Stage ``prepare@<name>``: resize + pad ``data/frames/<name>.zarr`` into ``data/prepared/<name>.zarr``."""

import argparse

from videomamba_depth.config import load_params, load_section
from videomamba_depth.manifest import load_manifest_entry, store_path
from videomamba_depth.prepare import KIND, PrepareConfig, prepare_video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="video name: a key of 'videos' in params.yaml")
    args = parser.parse_args(argv)
    params = load_params()
    entry = load_manifest_entry(args.name, params)
    config = load_section(PrepareConfig, "prepare", params)
    prepare_video(
        store_path("frames", args.name), store_path(KIND, args.name), config, ground_truth=entry.ground_truth,
        name=args.name,
    )


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
