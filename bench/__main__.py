"""Run the benchmarks: ``python -m bench [NAME ...]`` (default: all, in pipeline order).

Each benchmark runs in its own interpreter, so timings and peak memory of one do not leak into the next.
Every script prints its numbers and writes ``bench/results/<name>.{json,md}``; this runner then collects
the markdown tables into ``bench/results/README.md``, which the project README quotes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import RESULTS

# Pipeline order: data stages, then the model, training and streaming inference.
BENCHMARKS = (
    "bench_synth",
    "bench_data",
    "bench_image_datasets",
    "bench_teacher",
    "bench_flow",
    "bench_ssm",
    "bench_model",
    "bench_pretrain",
    "bench_train",
    "bench_stream",
    "bench_infer",
    "bench_export",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
        print(f"== {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    tables = [(RESULTS / f"{n}.md") for n in BENCHMARKS if (RESULTS / f"{n}.md").exists()]
    summary = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (`make bench`), one section a script.",
        "",
    ]
    summary += [p.read_text().strip() + "\n" for p in tables]
    (RESULTS / "README.md").write_text("\n".join(summary))
    print(f"summary: {RESULTS / 'README.md'}")


if __name__ == "__main__":
    main()
