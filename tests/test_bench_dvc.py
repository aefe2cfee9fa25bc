"""The DVC-cost benchmark's project at 8 and at 200 videos: the caching guarantees it measures hold.

``measure`` builds a DVC project with the real data stages and ``split`` over tiny synthetic videos and
asserts, through ``dvc repro``: the first run computes every video in every data stage; a second does nothing
and ``dvc status`` is clean; a ``train.lr`` change (a sweep) leaves every stage up to date; adding a held-out
video computes that video alone, in each data stage, and leaves ``data/split/train.json`` (what training
depends on) byte for byte. A broken guarantee fails the assertion.
"""

from __future__ import annotations

import pytest

from bench import bench_dvc


@pytest.mark.slow
def test_eight_videos_then_one_more(tmp_path):
    row = bench_dvc.measure(tmp_path, 8)
    assert row["videos"] == 8 and row["lock_bytes"] > 0 and not row["lock_names_videos"]
    # Per video, 7 files: the synth folder's video, intrinsics and packed ground truth, four packed stores;
    # then a few shared files (manifest, indexes, split).
    assert 7 * 8 <= row["data_files"] <= 7 * 8 + 12, row["data_files"]


@pytest.mark.slow
def test_two_hundred_videos_then_one_more(tmp_path):
    """The same guarantees where per-video bookkeeping would show (about 3 min on 2 cores)."""
    row = bench_dvc.measure(tmp_path, 200)
    assert row["videos"] == 200
    # dvc.lock holds one hash per video list, for the manifest and per folder: no video's name.
    assert not row["lock_names_videos"] and row["lock_bytes"] < 24 * 1024, row
