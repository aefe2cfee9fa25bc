"""Stage ``synth@<name>``: render synthetic video ``<name>`` (seed ``synth.videos.<name>``) into
``data/synth/<name>/`` (video.mp4, intrinsics.json, gt.zarr)."""

import argparse
from pathlib import Path

from videomamba_depth.config import load_section
from videomamba_depth.synth import SynthConfig, write_synth_video

OUT_DIR = Path("data/synth")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="video name: a key of 'synth.videos' in params.yaml")
    args = parser.parse_args(argv)
    config = load_section(SynthConfig, "synth")
    write_synth_video(OUT_DIR / args.name, config, args.name)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
