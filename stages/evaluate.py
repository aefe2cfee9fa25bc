"""DVC stage ``evaluate``: held-out videos -> data/evaluate/ (metrics.json, plots/, images/)."""

from __future__ import annotations

import argparse

from videomamba_depth.config import load_section
from videomamba_depth.evaluation import EvaluateConfig, evaluate

CHECKPOINT = "data/train/model_best.safetensors"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    evaluate(load_section(EvaluateConfig, "evaluate"), CHECKPOINT, data_dir="data", out_dir="data/evaluate")


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
