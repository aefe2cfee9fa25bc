"""Stage ``train``: distil the teacher cache into the student (``data/train/``).

One process: ``python -m stages.train``. DDP: ``torchrun --nproc_per_node N -m stages.train``.
"""

import argparse

from videomamba_depth.config import load_section
from videomamba_depth.training import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    train(load_section(TrainConfig, "train"))


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
