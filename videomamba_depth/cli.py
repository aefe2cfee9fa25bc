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


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a Zarr v3 store of the pipeline, e.g. data/prepared/scene_00.zarr")
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

    description = describe_store(args.path, stats=not args.no_stats)
    print(json.dumps(description, indent=2) if args.json else format_report(description))
    if args.png:
        out = render_png(args.path, args.png, array=args.array, frame=args.frame, row=args.row, xt=args.xt)
        print(f"wrote {out}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "inspect": Command("describe a store (tree, layout, bytes, statistics, attributes); draw a PNG",
                       _inspect_arguments, _inspect),
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
    """Entry point of the ``videomamba-depth`` script. Errors about inputs print one line and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as exc:  # our errors (store, video, intrinsics, config) are ValueErrors
        print(f"videomamba-depth {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
