"""The video manifest (data/manifest.yaml) and the decode/prepare sections of the real params.yaml."""

import pytest
import yaml

from videomamba_depth.config import ConfigError, load_params, load_section
from videomamba_depth.decode import DecodeConfig
from videomamba_depth.manifest import (
    MANIFEST_FILE,
    VideoEntry,
    load_manifest,
    parse_manifest,
    select_videos,
    store_path,
    write_manifest,
)
from videomamba_depth.prepare import PrepareConfig

PARAMS = {
    "videos": {
        "kitchen": {"video": "videos/kitchen.mp4", "intrinsics": "videos/kitchen.json", "ground_truth": None},
        "walk": {"video": "videos/walk_frames"},
        "broken": {"vidoe": "typo.mp4"},
    }
}


GOOD = {"videos": {k: v for k, v in PARAMS["videos"].items() if k != "broken"}}


def test_entries_and_defaults():
    manifest = parse_manifest(GOOD)
    assert manifest["kitchen"] == VideoEntry("videos/kitchen.mp4", "videos/kitchen.json", None)
    walk = manifest["walk"]
    assert walk.video == "videos/walk_frames" and walk.intrinsics is None and walk.ground_truth is None


def test_written_manifest_reads_back(tmp_path):
    path = write_manifest(GOOD["videos"], tmp_path / "m.yaml")
    assert load_manifest(path) == parse_manifest(GOOD)
    write_manifest({"a/b": {"video": "x.mp4"}}, tmp_path / "m2.yaml")
    with pytest.raises(ConfigError, match=r"m2\.yaml: video name 'a/b' must start"):
        load_manifest(tmp_path / "m2.yaml")


def test_manifest_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"none\.yaml: cannot read the video manifest"):
        load_manifest(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("videos: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_manifest(tmp_path / "bad.yaml")
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({**GOOD, "decode": {}}))
    with pytest.raises(ConfigError, match=r"extra\.yaml: unknown top-level key\(s\) \['decode'\]"):
        load_manifest(tmp_path / "extra.yaml")


def test_a_manifest_left_in_params_yaml_is_refused(tmp_path):
    """Older projects kept the manifest as the ``videos`` section of params.yaml: say where it lives now."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**GOOD, "decode": {}}))
    with pytest.raises(ConfigError, match=r"params\.yaml: the video manifest \('videos'\) now lives in "
                                          r"data/manifest\.yaml"):
        load_params(tmp_path / "params.yaml")


def test_select_videos_keeps_manifest_order_and_lists_known_names():
    manifest = parse_manifest(GOOD)
    assert list(select_videos(manifest, [])) == ["kitchen", "walk"]
    assert list(select_videos(manifest, ["walk", "kitchen"])) == ["kitchen", "walk"]
    with pytest.raises(ConfigError, match=r"no video named 'garden'; known videos: kitchen, walk$"):
        select_videos(manifest, ["garden"])


def test_a_broken_entry_stops_the_whole_manifest():
    """A stage validates every entry before any work: no video is processed from a manifest with errors."""
    with pytest.raises(ConfigError, match=r"videos\.broken: unknown key\(s\) \['vidoe'\]"):
        parse_manifest(PARAMS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "'videos' must map video names to entries"),
        ({"videos": {"a": {"intrinsics": None}}}, r"videos\.a: missing required key 'video'"),
        ({"videos": {"a/b": {"video": "x.mp4"}}}, "video name 'a/b' must start with a letter or digit"),
        ({"videos": {"../x": {"video": "x.mp4"}}}, r"video name '\.\./x' must start with a letter or digit"),
        ({"videos": {"x;date": {"video": "x.mp4"}}}, "video name 'x;date' must start with a letter or digit"),
        ({"videos": {"a b": {"video": "x.mp4"}}}, "video name 'a b' must start with a letter or digit"),
        ({"videos": {"a": {"video": 3}}}, r"videos\.a\.video: expected a string"),
    ],
)
def test_malformed_manifest(params, message):
    with pytest.raises(ConfigError, match=message):
        parse_manifest(params)


def test_store_path():
    assert str(store_path("frames", "kitchen")) == "data/frames/kitchen.zarr.zip"


def test_project_params_parse():
    """The committed manifest and params.yaml: every entry and the decode/prepare sections are valid."""
    params = load_params("params.yaml")
    manifest = load_manifest(MANIFEST_FILE)
    assert manifest and all(isinstance(e, VideoEntry) for e in manifest.values())
    assert load_section(DecodeConfig, "decode", params).backend in ("decord", "pyav")
    assert load_section(PrepareConfig, "prepare", params).pad_multiple > 0
