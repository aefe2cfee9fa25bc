"""Caching and name safety of the data stages, with the real dvc.yaml stages on a tiny DVC project.

Adding a video computes only that video; a prepare param never re-runs decode; train.* never touches a data
stage; a second repro does nothing; a broken video fails alone and every other store is kept; a failed
re-run keeps the previous good store; names with dots work end to end. (Hostile names: test_bad_input.py.)
"""

import re

import pytest
from dvc_project import computed, dvc, entry, make_project, project_params, ran, write_params
from video_inputs import smooth_frames, write_video

from videomamba_depth.zarrio import open_store


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


@pytest.mark.slow
def test_caching_granularity(project):
    params = project_params()
    write_params(project, params)
    assert computed(dvc(project, "repro")) == {"decode:a", "decode:b", "prepare:a", "prepare:b"}
    assert open_store(project / "data/prepared/b.zarr.zip", "prepared")["K"].shape == (5, 3, 3)

    # Nothing changed: nothing runs.
    again = dvc(project, "repro")
    assert ran(again) == set() and "Data and pipelines are up to date" in again.stdout

    # A training param is no data stage's business.
    params["train"]["lr"] = 0.01
    write_params(project, params)
    assert "up to date" in dvc(project, "status").stdout
    assert ran(dvc(project, "repro")) == set()

    # A prepare param re-runs prepare only, for every video.
    params["prepare"]["long_edge"] = 40
    write_params(project, params)
    result = dvc(project, "repro")
    assert ran(result) == {"prepare"} and computed(result) == {"prepare:a", "prepare:b"}
    assert open_store(project / "data/prepared/a.zarr.zip")["rgb"].shape == (6, 42, 42, 3)

    # A new video computes only its own outputs; its name may hold dots.
    write_video(project / "videos" / "c.mp4", smooth_frames(4, seed=3))
    params["videos"]["clip.v2"] = entry("videos/c.mp4")
    write_params(project, params)
    inode = (project / "data/frames/a.zarr.zip").stat().st_ino
    assert computed(dvc(project, "repro")) == {"decode:clip.v2", "prepare:clip.v2"}
    assert (project / "data/frames/a.zarr.zip").stat().st_ino == inode  # not rewritten
    assert open_store(project / "data/prepared/clip.v2.zarr.zip")["rgb"].shape[0] == 4

    # A broken video fails alone, with the file named, and leaves no store; the others are done and kept,
    # and the next repro does only what is left.
    (project / "videos" / "d.mp4").write_bytes(b"\x00" * 4096)
    params["videos"]["d"] = entry("videos/d.mp4")
    write_params(project, params)
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0 and computed(result) == set()
    assert "decode: d: " in result.stdout and "videos/d.mp4: not a readable video" in result.stdout
    assert re.search(r"d: videos/d.mp4: not a readable video .*\(1 of 4 videos failed", result.stderr)
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == [
        "a.zarr.zip", "b.zarr.zip", "clip.v2.zarr.zip"
    ]
    write_video(project / "videos" / "d.mp4", smooth_frames(3, seed=4))
    assert computed(dvc(project, "repro")) == {"decode:d", "prepare:d"}

    # A video removed from the manifest takes its stores with it.
    del params["videos"]["d"]
    write_params(project, params)
    dvc(project, "repro")
    assert sorted(p.name for p in (project / "data/prepared").iterdir()) == [
        "a.zarr.zip", "b.zarr.zip", "clip.v2.zarr.zip"
    ]
    assert ran(dvc(project, "repro")) == set()
