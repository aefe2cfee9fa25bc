"""Stage configs: typed, frozen, unknown keys rejected with the section named."""

from dataclasses import FrozenInstanceError, dataclass, field
from typing import Literal

import pytest

from videomamba_depth.config import (
    VIDEO_LISTS,
    ConfigError,
    StageConfig,
    load_params,
    load_section,
    write_video_list,
)
from videomamba_depth.manifest import load_manifest


@dataclass(frozen=True)
class Inner(StageConfig):
    weight: float = 1.0


@dataclass(frozen=True)
class Example(StageConfig):
    lr: float
    steps: int = 10
    backend: Literal["torch", "cuda"] = "torch"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)
    note: str | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    seeds: dict[str, int] = field(default_factory=dict)


def test_builds_and_coerces():
    cfg = Example.from_dict(
        {"lr": 1, "sizes": [3, 4, 5], "pair": [1, 2], "inner": {"weight": 2}, "seeds": {"a": 1}}, "train"
    )
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.sizes == (3, 4, 5) and cfg.pair == (1.0, 2.0)
    assert cfg.inner == Inner(weight=2.0)
    assert cfg.seeds == {"a": 1}
    assert cfg.to_dict()["sizes"] == [3, 4, 5]
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": 1.0, "lrr": 2.0}, r"train: unknown key\(s\) \['lrr'\]"),
        ({}, "train: missing required key 'lr'"),
        ({"lr": "fast"}, "train.lr: expected a number"),
        ({"lr": 1.0, "steps": 2.5}, "train.steps: expected an integer"),
        ({"lr": 1.0, "steps": True}, "train.steps: expected an integer"),
        ({"lr": 1.0, "backend": "tpu"}, "train.backend: 'tpu' is not one of"),
        ({"lr": 1.0, "pair": [1.0]}, "train.pair: expected 2 values"),
        ({"lr": 1.0, "inner": {"wieght": 1}}, r"train.inner: unknown key\(s\) \['wieght'\]"),
        ({"lr": 1.0, "flag": "yes"}, "train.flag: expected true/false"),
    ],
)
def test_rejects_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        Example.from_dict(values, "train")


def test_load_params_reads_dvc_written_exponent_floats(tmp_path):
    # `dvc exp run -S train.lr=1e-5` writes `lr: 1e-05` (YAML 1.2); PyYAML's YAML 1.1 would read a string.
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 1e-05\n  steps: 3\n  name: v1e5\n  pair: [2E+3, -1e-2]\n")
    train = load_params(p)["train"]
    assert train == {"lr": 1e-5, "steps": 3, "name": "v1e5", "pair": [2000.0, -0.01]}
    assert load_section(Example, "train", {"train": {"lr": train["lr"]}}).lr == 1e-5


def test_load_section_and_errors(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 0.1\n")
    assert load_section(Example, "train", load_params(p)).lr == 0.1
    with pytest.raises(ConfigError, match="missing section 'evaluate'"):
        load_section(Example, "evaluate", load_params(p))
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(p)


def test_video_lists_live_in_their_own_files(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 0.1\n")
    write_video_list("train", ("a", "b"), tmp_path)
    write_video_list("synth", {"a": 3}, tmp_path)
    params = load_params(p)
    assert params["train"] == {"lr": 0.1, "videos": ["a", "b"]} and params["synth"] == {"videos": {"a": 3}}
    assert "evaluate" not in params  # no list file, no section
    p.write_text("train:\n  lr: 0.1\n  videos: [a]\n")
    with pytest.raises(ConfigError, match=r"train\.videos now lives in data/train_videos\.yaml"):
        load_params(p)
    p.write_text("train:\n  lr: 0.1\n")
    (tmp_path / VIDEO_LISTS["train"]).write_text("names: [a]\n")
    with pytest.raises(ConfigError, match=r"train_videos\.yaml: expected one key, 'videos' \(the list\)"):
        load_params(p)


def test_repository_params_have_every_stage_section():
    params = load_params()
    for section in ("synth", "decode", "prepare", "teacher", "flow", "train", "evaluate"):
        assert section in params, section
    for section in VIDEO_LISTS:
        assert params[section]["videos"], f"the repository's {VIDEO_LISTS[section]} lists the embedded videos"
    assert load_manifest(), "the repository's manifest (data/manifest.yaml) lists the embedded videos"


def test_device_setting_resolves_or_names_the_param(monkeypatch):
    import torch

    from videomamba_depth.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "train.device") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"train\.device is 'cuda' but torch sees no CUDA device"):
        resolve_device("cuda", "train.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
