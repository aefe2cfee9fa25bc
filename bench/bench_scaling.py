"""Scaling study: held-out accuracy and flicker against pre-training data and steps, as DVC experiments.

Two axes, three sizes each, the middle one the params.yaml default (the workspace's own run, so it is not
queued again): the number of pre-training images (``synth_images.count``) and of pre-training steps
(``pretrain.steps``). Every other setting stays the default, so each point re-runs only what its change
touches (``synth_images`` and/or ``pretrain``, then ``train`` and ``evaluate``). After ``make repro``::

    python -m bench.bench_scaling queue    # dvc exp run --queue -n scaling-<axis>-<size> -S <key>=<size>
    dvc exp run --run-all                  # runs the queue (about 55 minutes on 2 CPU cores)
    python -m bench.bench_scaling collect  # dvc exp show --json -> bench/results/bench_scaling.*
    dvc exp show --only-changed            # the same numbers in DVC's own table
    dvc plots diff scaling-data-500 scaling-data-4500   # per-frame plots of two points side by side

``collect`` reads the default's numbers from the workspace (``data/evaluate/metrics.json``) and the
others from the experiments DVC keeps, and writes bench/results/bench_scaling.{json,md,csv,png}: held-out
AbsRel (student, streaming; alignment none) and its ratio to the teacher's, δ1, moving-object and
near-view AbsRel, TAE, and the stream-vs-reset ratios of TAE and near-view AbsRel for every point.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import yaml

from bench.common import PARAMS, RESULTS, write_results

METRICS = "data/evaluate/metrics.json"
# axis -> (params.yaml key, sizes); the default of each key must be one of its sizes.
AXES = {
    "data": ("synth_images.count", (500, 1500, 4500)),
    "steps": ("pretrain.steps", (1000, 3000, 9000)),
}
PREFIX = "scaling"


def param(params: dict, dotted: str) -> object:
    value = params
    for key in dotted.split("."):
        value = value[key]
    return value


def experiment_name(axis: str, size: int) -> str:
    return f"{PREFIX}-{axis}-{size}"


def queued(params: dict) -> list[tuple[str, str, int]]:
    """``(name, key, size)`` of every point but the defaults."""
    points = []
    for axis, (key, sizes) in AXES.items():
        default = param(params, key)
        if default not in sizes:
            raise SystemExit(f"{PARAMS}: {key} is {default}, not one of the study's sizes {list(sizes)}")
        points += [(experiment_name(axis, size), key, size) for size in sizes if size != default]
    return points


def queue(params: dict) -> None:
    for name, key, size in queued(params):
        command = ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"{key}={size}"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def summary(metrics: dict) -> dict[str, float]:
    """The study's numbers from one ``metrics.json``."""
    aggregate = metrics["aggregate"]["none"]
    stream, reset, teacher = aggregate["student_stream"], aggregate["student_reset"], aggregate["teacher"]
    return {
        "abs_rel": stream["abs_rel"],
        "abs_rel_vs_teacher": stream["abs_rel"] / teacher["abs_rel"],
        "delta1": stream["delta1"],
        "moving_abs_rel": stream["moving_abs_rel"],
        "tae": stream["tae"],
        "tae_vs_teacher": stream["tae"] / teacher["tae"],
        "tae_vs_reset": stream["tae"] / reset["tae"],
        "near_abs_rel": stream["near_abs_rel"],
        "near_abs_rel_vs_reset": stream["near_abs_rel"] / reset["near_abs_rel"],
        "teacher_abs_rel": teacher["abs_rel"],
    }


def experiments(names: set[str]) -> dict[str, dict]:
    """Experiment name -> its ``metrics.json``, for the ``names`` DVC has finished."""
    shown = json.loads(
        subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout
    )
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = (data.get("metrics") or {}).get(METRICS, {}).get("data")
                if rev.get("name") in names and metrics:
                    found[rev["name"]] = metrics
    return found


def collect(params: dict, workspace_metrics: Path = Path(METRICS), out: Path = RESULTS) -> list[dict]:
    """Write the study's tables and plot to ``out``; returns the rows."""
    points = queued(params)
    finished = experiments({name for name, _, _ in points})
    missing = sorted({name for name, _, _ in points} - set(finished))
    if missing:
        raise SystemExit(f"no finished experiment for {missing}: run `dvc exp run --run-all` first")
    workspace = summary(json.loads(workspace_metrics.read_text()))
    rows = []
    for axis, (key, sizes) in AXES.items():
        default = param(params, key)
        for size in sizes:
            name = "workspace (default)" if size == default else experiment_name(axis, size)
            numbers = workspace if size == default else summary(finished[name])
            rows.append({"axis": axis, "key": key, "size": size, "experiment": name, **numbers})
    results = {"axes": {axis: key for axis, (key, _) in AXES.items()}, "rows": rows}
    write_results("bench_scaling", results, markdown(rows), out)
    with open(out / "bench_scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "bench_scaling.png")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# bench_scaling",
        "",
        "Held-out videos, alignment none, student streaming (`dvc exp show` of the `scaling-*` experiments).",
        "",
        "| key | size | AbsRel | / teacher | δ1 | moving AbsRel | near-view AbsRel | TAE (%) | TAE / teacher"
        " | TAE stream / reset | near-view AbsRel stream / reset |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['key']}` | {r['size']} | {r['abs_rel']:.3f} | {r['abs_rel_vs_teacher']:.2f} "
            f"| {r['delta1']:.3f} | {r['moving_abs_rel']:.3f} | {r['near_abs_rel']:.3f} | {r['tae']:.2f} "
            f"| {r['tae_vs_teacher']:.3f} | {r['tae_vs_reset']:.3f} | {r['near_abs_rel_vs_reset']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (metric, label) in zip(axes, (("abs_rel_vs_teacher", "AbsRel / teacher's"),
                                          ("tae_vs_teacher", "TAE / teacher's")), strict=True):
        for axis, (key, _) in AXES.items():
            points = [r for r in rows if r["axis"] == axis]
            ax.plot([r["size"] for r in points], [r[metric] for r in points], "o-", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("size (images or steps)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(1.5, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("Held-out videos, streaming student, alignment none")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("queue", "collect"))
    args = parser.parse_args(argv)
    params = yaml.safe_load(PARAMS.read_text())
    queue(params) if args.action == "queue" else collect(params)


if __name__ == "__main__":
    main()
