"""The scaling study's helpers: which experiments it queues, and how it reads DVC's experiment table."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import bench_scaling

PARAMS = {"synth_images": {"count": 1500}, "pretrain": {"steps": 3000}}


def metrics(abs_rel: float, tae: float = 2.0) -> dict:
    """A metrics.json with the aggregate entries the study reads."""
    return {"aggregate": {"none": {
        "teacher": {"abs_rel": 0.05, "delta1": 0.99, "moving_abs_rel": 0.07, "tae": 5.0},
        "student_stream": {"abs_rel": abs_rel, "delta1": 0.9, "moving_abs_rel": 0.3, "near_abs_rel": 0.2,
                           "tae": tae},
        "student_reset": {"abs_rel": abs_rel, "delta1": 0.9, "moving_abs_rel": 0.3, "near_abs_rel": 0.25,
                          "tae": 2 * tae},
    }}}


def test_queue_skips_the_defaults_and_rejects_a_default_outside_the_sizes():
    points = bench_scaling.queued(PARAMS)
    assert points == [
        ("scaling-data-500", "synth_images.count", 500),
        ("scaling-data-4500", "synth_images.count", 4500),
        ("scaling-steps-1000", "pretrain.steps", 1000),
        ("scaling-steps-9000", "pretrain.steps", 9000),
    ]
    with pytest.raises(SystemExit, match=r"pretrain\.steps is 2000"):
        bench_scaling.queued({**PARAMS, "pretrain": {"steps": 2000}})


def test_collect_reads_experiments_from_dvc_exp_show(tmp_path, monkeypatch):
    # The shape `dvc exp show --json` prints (DVC 3): baselines, each with its experiments' revisions.
    exps = [{"revs": [{"rev": f"{i:040x}", "name": name, "data": {"metrics": {
        bench_scaling.METRICS: {"data": metrics(abs_rel)}}}}]}
        for i, (name, abs_rel) in enumerate([("scaling-data-500", 0.2), ("scaling-data-4500", 0.1),
                                             ("scaling-steps-1000", 0.3), ("scaling-steps-9000", 0.08),
                                             ("someone-else", 9.0)])]
    shown = [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
             {"rev": "0" * 40, "name": "main", "data": {}, "experiments": exps}]

    def fake_run(command, **kwargs):
        assert command[:3] == ["dvc", "exp", "show"]
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(shown))

    monkeypatch.setattr(bench_scaling.subprocess, "run", fake_run)
    workspace = tmp_path / "metrics.json"
    workspace.write_text(json.dumps(metrics(0.15)))
    rows = bench_scaling.collect(PARAMS, workspace, tmp_path / "out")
    by_point = {(r["key"], r["size"]): r for r in rows}
    assert [r["abs_rel"] for r in rows] == [0.2, 0.15, 0.1, 0.3, 0.15, 0.08]
    assert by_point[("synth_images.count", 1500)]["experiment"] == "workspace (default)"
    assert by_point[("pretrain.steps", 9000)]["abs_rel_vs_teacher"] == pytest.approx(1.6)
    assert by_point[("pretrain.steps", 9000)]["tae_vs_reset"] == pytest.approx(0.5)
    assert by_point[("pretrain.steps", 9000)]["near_abs_rel_vs_reset"] == pytest.approx(0.8)
    for suffix in ("json", "md", "csv", "png"):
        assert (tmp_path / "out" / f"bench_scaling.{suffix}").stat().st_size > 0
    shown[1]["experiments"] = exps[:2]
    with pytest.raises(SystemExit, match="scaling-steps-1000"):
        bench_scaling.collect(PARAMS, workspace, tmp_path / "out")
