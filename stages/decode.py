"""Stage ``decode``: every video of ``data/manifest.yaml`` -> ``data/frames/<name>.zarr.zip`` (up-to-date
stores are skipped)."""

import argparse

from videomamba_depth.config import load_params, load_section
from videomamba_depth.decode import KIND, DecodeConfig, decode_tasks
from videomamba_depth.manifest import DATA_DIR, load_manifest, select_videos
from videomamba_depth.pervideo import run_videos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="videos to decode (default: all of data/manifest.yaml)")
    args = parser.parse_args(argv)
    params = load_params()
    manifest = select_videos(load_manifest(), args.names)
    config = load_section(DecodeConfig, "decode", params)
    tasks = decode_tasks(manifest, config)
    run_videos("decode", tasks, code_module="videomamba_depth.decode",
               root=DATA_DIR / KIND, prune=not args.names)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
