"""Stage ``synth_images``: render the synthetic image set (one independent scene per image) into
``data/synth_images/`` in the file-list format (``train.txt``, ``val.txt``), with the ``synth`` section's
scene ranges and image size."""

import argparse
from pathlib import Path

from videomamba_depth.config import load_params, load_section
from videomamba_depth.synth.images import SynthImagesConfig, write_synth_images
from videomamba_depth.synth.scene import SynthConfig

OUT_DIR = Path("data/synth_images")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load_params()
    config = load_section(SynthImagesConfig, "synth_images", params)
    write_synth_images(config, load_section(SynthConfig, "synth", params), OUT_DIR)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
