"""The ``videomamba-depth`` command line: one subcommand per entry of :data:`COMMANDS`.

A subcommand is a :class:`Command`: a help line, a function adding its arguments to an argparse subparser,
and a function running it that returns an exit status. Adding one (e.g. ``infer``) is one new entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from videomamba_depth.errors import call


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a Zarr v3 store of the pipeline, e.g. data/prepared/scene_06.zarr.zip")
    parser.add_argument("--png", metavar="OUT", help="also draw a frame (or with --xt an x-t slice) into OUT")
    parser.add_argument("--array", help="array to draw, e.g. depth or gt/depth (default: rgb, else depth)")
    parser.add_argument("--frame", type=int, default=0, help="frame to draw (default 0; negative: from end)")
    parser.add_argument("--xt", action="store_true", help="draw one image row over time instead of a frame")
    parser.add_argument("--row", type=int, help="image row y of the x-t slice (default: the middle row)")
    parser.add_argument("--no-stats", action="store_true", help="skip per-array statistics (reads no chunks)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def _inspect(args: argparse.Namespace) -> int:
    # Imported here so each subcommand loads only its own dependencies (the CLI starts fast).
    from videomamba_depth.inspect import describe_store, format_report, render_png
    from videomamba_depth.zarrio import StoreError

    description = describe_store(args.path, stats=not args.no_stats)
    print(json.dumps(description, indent=2) if args.json else format_report(description))
    problems = description["problems"]
    if problems:  # after the report, which lists them all: the exit status and one line on stderr flag it
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        raise StoreError(f"{args.path}: incomplete or corrupt store: {problems[0]}{more}")
    if args.png:
        out = render_png(args.path, args.png, array=args.array, frame=args.frame, row=args.row, xt=args.xt)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _camera_and_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``infer`` and ``infer-image`` share: assumed field of view, model input overrides, device."""
    parser.add_argument("--hfov", type=float, metavar="DEG",
                        help="no K file: assume this horizontal field of view (default: UniDepthV2 estimate "
                             "when installed, else 60 degrees with a warning)")
    parser.add_argument("--long-edge", type=int,
                        help="override the model input long edge recorded in the checkpoint (warns)")
    parser.add_argument("--pad-multiple", type=int,
                        help="override the model input padding multiple recorded in the checkpoint (warns)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="a video file (.mp4, .mov, ...) or a folder of frames")
    parser.add_argument("--checkpoint", required=True,
                        help="a trained student, e.g. data/train/model_best.safetensors")
    parser.add_argument("--out", required=True,
                        help="output Zarr store, e.g. OUT.zarr (written only when complete)")
    parser.add_argument("--intrinsics", metavar="K",
                        help=".json/.npy K (3x3 or per-frame T x 3 x 3) in pixels of the original frames")
    _camera_and_input_arguments(parser)
    parser.add_argument("--preview", metavar="OUT.mp4", help="also write a colour-mapped depth video")
    parser.add_argument("--preview-range", type=float, nargs=2, metavar=("NEAR", "FAR"),
                        help="preview colour range in metres (default: first frame's 1st-99th percentile)")
    parser.add_argument("--points-every", type=int, default=0, metavar="N",
                        help="write a PLY point cloud every N frames into OUT.points/ (default 0: none)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (default: half the cores, at most 4; the rest decode and write)")
    parser.add_argument("--force", action="store_true",
                        help="replace outputs of a previous infer run (never other files or folders)")
    parser.add_argument("--backend", choices=("pyav", "decord"), default="pyav", help="video decoder")
    parser.add_argument("--anchoring", action="store_true",
                        help="keyframe anchoring with its default settings (see evaluate.anchoring)")


def _infer(args: argparse.Namespace) -> int:
    from videomamba_depth.inference.infer import InferConfig, infer_video

    # Through from_dict, so an impossible flag value is a ConfigError (one line), not a bare ValueError.
    config = InferConfig.from_dict(
        {
            "long_edge": args.long_edge, "pad_multiple": args.pad_multiple, "video_backend": args.backend,
            "device": args.device, "threads": args.threads, "hfov_deg": args.hfov,
            "points_every": args.points_every, "preview_range": args.preview_range,
            "anchoring": {"enabled": args.anchoring},
        },
        where="flags",
    )
    result = infer_video(args.video, args.checkpoint, args.out, config, intrinsics=args.intrinsics,
                         preview=args.preview, force=args.force)
    written = [str(p) for p in (result.store, result.preview, result.points) if p is not None]
    print(f"{result.num_frames} frames at {result.fps:.1f} frames/s -> {', '.join(written)}", file=sys.stderr)
    return 0


def _infer_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files (.png, .jpg, ...)")
    parser.add_argument("--checkpoint", required=True,
                        help="a trained student, e.g. data/train/model_best.safetensors")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: <stem>.npy (float32 metres), <stem>.png (colour-mapped depth)")
    parser.add_argument("--intrinsics", metavar="K",
                        help=".json/.npy 3x3 K in pixels of the original images (checked against each size)")
    _camera_and_input_arguments(parser)
    parser.add_argument("--ply", action="store_true", help="also write <stem>.ply point clouds")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (default: half the cores, at most 4)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing output files (never inputs, folders or links)")


def _infer_image(args: argparse.Namespace) -> int:
    from videomamba_depth.inference.image import InferImageConfig, infer_images

    config = InferImageConfig.from_dict(
        {"long_edge": args.long_edge, "pad_multiple": args.pad_multiple, "device": args.device,
         "threads": args.threads, "hfov_deg": args.hfov, "ply": args.ply},
        where="flags",
    )
    result = infer_images(args.images, args.checkpoint, args.out, config, intrinsics=args.intrinsics,
                          force=args.force)
    count = len(result.outputs)
    print(f"{count} image{'' if count == 1 else 's'} at {result.images_per_s:.1f} images/s -> {args.out}",
          file=sys.stderr)
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a trained student, e.g. data/train/model_best.safetensors")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    parser.add_argument("--out", required=True,
                        help="output file, e.g. step.onnx (written only when complete)")
    parser.add_argument("--size", type=int, nargs=2, default=(168, 224), metavar=("H", "W"),
                        help="frame size of the graph: the prepared frames' (default 168 224)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="any frame size (H, W symbolic; --size is then only the tracing example)")


def _export(args: argparse.Namespace) -> int:
    from videomamba_depth.export import export_onnx
    from videomamba_depth.inference.predictor import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    height, width = args.size
    meta = export_onnx(model, args.out, height=height, width=width, dynamic=args.dynamic_size)
    size = "dynamic" if meta["image_size"] is None else f"{height}x{width}"
    print(f"wrote {args.out}: streaming step, frame size {size}, {len(meta['states'])} state tensors "
          f"({', '.join(s['input'] for s in meta['states'])})", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "inspect": Command("describe a store (tree, layout, bytes, statistics, attributes); draw a PNG",
                       _inspect_arguments, _inspect),
    "infer": Command("streaming metric depth of a video with a trained student (Zarr, preview, PLY)",
                     _infer_arguments, _infer),
    "infer-image": Command("metric depth of single images with a trained student (.npy, .png, .ply)",
                           _infer_image_arguments, _infer_image),
    "export": Command("export the streaming step (states as explicit inputs/outputs) to ONNX",
                      _export_arguments, _export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videomamba-depth", description="VideoMambaDepth tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``videomamba-depth`` script.

    Bad input prints one line ``videomamba-depth COMMAND: error: ...`` and exits 2 (``VMD_DEBUG=1``: the
    traceback); bugs keep their traceback (:mod:`videomamba_depth.errors`).
    """
    args = build_parser().parse_args(argv)
    try:
        return call(lambda: args.run(args), f"videomamba-depth {args.command}")
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
