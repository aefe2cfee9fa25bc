"""Stage ``pretrain``: pre-train the student's per-frame path (``train.model``, temporal blocks bypassed) on
the image datasets of ``pretrain.datasets``, at ``prepare``'s image size (``data/pretrain/``).

One process: ``python -m stages.pretrain``. DDP: ``torchrun --nproc_per_node N -m stages.pretrain``.
"""

import argparse

from videomamba_depth.config import ConfigError, load_params, load_section
from videomamba_depth.models import ModelConfig
from videomamba_depth.prepare import PrepareConfig
from videomamba_depth.pretraining import PretrainConfig, pretrain


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load_params()
    config = load_section(PretrainConfig, "pretrain", params)
    prepare = load_section(PrepareConfig, "prepare", params)
    train = params.get("train")
    if not isinstance(train, dict) or "model" not in train:
        raise ConfigError("params.yaml: pretrain builds the student of 'train.model', which is missing")
    model = ModelConfig.from_dict(train["model"], where="params.yaml: train.model")
    pretrain(config, model, {"long_edge": prepare.long_edge, "pad_multiple": prepare.pad_multiple})


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
