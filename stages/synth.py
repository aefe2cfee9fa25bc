"""Stage ``synth``: render every video of ``synth.videos`` (name -> seed) into ``data/synth/<name>/``
(video.mp4, intrinsics.json, gt.zarr.zip); videos already rendered with the same params and code are
skipped."""

import argparse
from pathlib import Path

from videomamba_depth.config import load_section
from videomamba_depth.pervideo import run_videos
from videomamba_depth.synth import SynthConfig, synth_tasks

OUT_DIR = Path("data/synth")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="videos to render (default: all of data/synth_videos.yaml)")
    args = parser.parse_args(argv)
    config = load_section(SynthConfig, "synth")
    unknown = sorted(set(args.names) - set(config.videos))
    if unknown:
        parser.error(f"not in data/synth_videos.yaml: {unknown}")
    tasks = [t for t in synth_tasks(config, OUT_DIR) if not args.names or t.name in args.names]
    run_videos("synth", tasks, code_module="videomamba_depth.synth", root=OUT_DIR, prune=not args.names)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
