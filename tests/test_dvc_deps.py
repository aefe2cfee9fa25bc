"""dvc.yaml declares, for every stage, each library file the stage's code can import.

A missing code dependency means DVC reports a stage as up to date after the code that produced its outputs
changed: silently stale caches. The imports are traced statically (function-level imports included, so
lazily imported backends count) from ``stages/<stage>.py`` through ``videomamba_depth``.
"""

import dataclasses
from pathlib import Path

import pytest
import yaml

from videomamba_depth.codehash import import_closure
from videomamba_depth.config import VIDEO_LISTS
from videomamba_depth.models import ModelConfig
from videomamba_depth.synth import SynthConfig

ROOT = Path(__file__).resolve().parents[1]


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_declares_every_library_file_it_imports(stage):
    spec = _stages()[stage]
    module = spec["cmd"].split("python -m ")[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    deps = [ROOT / d for d in spec["deps"]]
    assert entry in deps, f"{stage}: {entry.relative_to(ROOT)} is not a dependency"
    missing = sorted(
        str(f.relative_to(ROOT))
        for f in import_closure(entry, ROOT)
        if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage '{stage}' imports undeclared library files: {missing}"


def test_train_params_never_reach_data_stages():
    for name, spec in _stages().items():
        params = [str(p) for p in spec.get("params", []) if str(p).startswith("train")]
        if name == "pretrain":  # it builds the student of train.model; no other train param reaches it
            # Every architecture key, so a new ModelConfig field cannot be missed; not freeze_encoder
            # (pretrain.freeze_encoder replaces it) nor how the bypassed temporal blocks run.
            fields = {f.name for f in dataclasses.fields(ModelConfig)}
            runtime = {"freeze_encoder", "ssm_backend", "ssm_chunk_size"}
            assert sorted(params) == sorted(f"train.model.{k}" for k in fields - runtime)
        elif name not in ("train", "evaluate"):
            assert not params, name


def test_train_and_evaluate_depend_on_their_own_videos_only():
    """No data folder is a dependency of train or evaluate: adding or changing a video that is not theirs
    (a held-out one, for train) changes no file they depend on, so DVC does not re-run them."""
    stages = _stages()
    data_folders = {"data/prepared", "data/teacher", "data/flow", "data/frames", "data/synth"}
    for name in ("train", "evaluate"):
        assert not data_folders & set(stages[name]["deps"]), name
        split = f"data/split/{name}.json"
        assert split in stages[name]["deps"] and split in stages["split"]["outs"]
        # Its own list of videos (read for their order), not the other one's.
        assert str(VIDEO_LISTS[name]) in stages[name]["deps"], name
        other = "evaluate" if name == "train" else "train"
        assert str(VIDEO_LISTS[other]) not in stages[name]["deps"], name
    assert {str(VIDEO_LISTS["train"]), str(VIDEO_LISTS["evaluate"])} <= set(stages["split"]["deps"])


def test_video_lists_are_file_dependencies_never_params():
    """The lists that grow with the videos are files DVC hashes (one line of dvc.lock each), never params it
    records value by value and parses once per stage; synth and split depend on them."""
    stages = _stages()
    for name, spec in stages.items():
        for param in map(str, spec.get("params", [])):
            assert param.split(".")[-1] != "videos", (name, param)
    assert str(VIDEO_LISTS["synth"]) in stages["synth"]["deps"]
    assert not any(str(f) in stages["synth_images"]["deps"] for f in VIDEO_LISTS.values())


def test_stores_are_read_through_their_index():
    """A folder of stores is an output of its stage only; every reader depends on its index, which the
    stage writes next to it, so DVC walks the folder once."""
    stages = _stages()
    for kind in ("synth", "frames", "prepared", "teacher", "flow"):
        outs = {n: {o if isinstance(o, str) else next(iter(o)): o for o in s["outs"]}
                for n, s in stages.items()}
        writers = [n for n in stages if f"data/{kind}" in outs[n]]
        # Both persist: a failing re-run (DVC deletes other outputs first) keeps the stores and their index.
        index = outs[writers[0]].get(f"data/index/{kind}.json")
        assert len(writers) == 1 and index == {f"data/index/{kind}.json": {"persist": True}}, kind
        assert not [n for n, s in stages.items() if f"data/{kind}" in s["deps"]], kind
    assert "data/index/prepared.json" in stages["teacher"]["deps"]
    assert {"data/index/prepared.json", "data/index/teacher.json"} <= set(stages["flow"]["deps"])
    assert {f"data/index/{k}.json" for k in ("prepared", "teacher", "flow")} <= set(stages["split"]["deps"])


def test_pretrain_feeds_train():
    """A pretrain change re-runs train (its best model is a train dependency); synth_images feeds pretrain."""
    stages = _stages()
    pretrained = "data/pretrain/model_best.safetensors"
    assert pretrained in stages["pretrain"]["outs"] and pretrained in stages["train"]["deps"]
    images = "data/synth_images"
    assert images in stages["synth_images"]["outs"] and images in stages["pretrain"]["deps"]
    # Adding a video (data/synth_videos.yaml) must not re-render the image set.
    assert "synth" not in stages["synth_images"]["params"]
    # Every other key that shapes a scene's frame is listed; the video-only ones are not.
    listed = {p.removeprefix("synth.") for p in stages["synth_images"]["params"] if p.startswith("synth.")}
    video_only = {"videos", "crf", "shutter"}
    assert listed == {f.name for f in dataclasses.fields(SynthConfig)} - video_only
