"""Stage ``split``: ``data/split/{train,evaluate}.json``, the fingerprints of the stores each one reads."""

import argparse

from videomamba_depth.config import load_params
from videomamba_depth.split import write_split


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    write_split(load_params())


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
