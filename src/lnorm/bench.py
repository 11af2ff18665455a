"""Benchmark: time and peak memory of the LayerNorm implementations on the CPU.

    python -m lnorm.bench                      # the table, on the default shapes
    python -m lnorm.bench --csv results.csv    # and a CSV the book can plot

Every implementation runs single-threaded (``torch.set_num_threads(1)``; NumPy's
element-wise operations and reductions are single-threaded anyway), on float32
rows of N(0, 1). Each time is the best of ``--repeats`` runs after one warm-up
run: the best run is the one least disturbed by the rest of the machine. Peak
memory is what ``tracemalloc`` sees allocated during one call beyond what
existed before it (NumPy reports its allocations to tracemalloc; torch does not,
so its memory is not measured here).

This is a measurement, not a test: no assertion depends on the timings.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch

SHAPES = [(8192, 4096), (32768, 1024), (131072, 256), (2048, 16384)]


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) wall-clock seconds of ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def peak_extra_bytes(run: Callable[[], object]) -> int:
    """Peak bytes allocated during one call, as traced by tracemalloc (the output included)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    date = datetime.date.today().isoformat()
    for m, n in shapes:
        x = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
        x_numpy = x.numpy()
        runs = {
            "torch.nn.functional": lambda: F.layer_norm(x, (n,)),
            "lnorm.torch": lambda: lnorm.torch.layer_norm(x, n),
            "lnorm.numpy": lambda: lnorm.numpy.layer_norm(x_numpy, n),
        }
        baseline = None
        for name, run in runs.items():
            best, median = best_time(run, repeats)
            baseline = baseline or best
            rows.append(
                dict(
                    implementation=name, rows=m, row_length=n, dtype="float32", threads=1,
                    best_ms=round(best * 1e3, 2), median_ms=round(median * 1e3, 2),
                    time_vs_torch=round(best / baseline, 3),
                    peak_memory_vs_output=(
                        round(peak_extra_bytes(run) / x_numpy.nbytes, 3) if name == "lnorm.numpy" else ""
                    ),
                    gbytes_per_s=round(2 * x_numpy.nbytes / best / 1e9, 2),  # read x, write y
                    cpu=cpu_name(), numpy=np.__version__, torch=torch.__version__, date=date,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (default 7)")
    parser.add_argument("--csv", help="also write the results to this CSV file")
    parser.add_argument("--quick", action="store_true", help="one small shape, for a smoke test")
    args = parser.parse_args(argv)

    results = measure([(256, 1024)] if args.quick else SHAPES, args.repeats)
    print(f"{'implementation':<22}{'M x N':>14}{'best ms':>10}{'vs torch':>10}{'GB/s':>8}{'peak mem':>10}")
    for r in results:
        memory = f"{r['peak_memory_vs_output']:.2f}x" if r["peak_memory_vs_output"] != "" else "-"
        print(
            f"{r['implementation']:<22}{r['rows']:>7} x {r['row_length']:<5}{r['best_ms']:>10.1f}"
            f"{r['time_vs_torch']:>10.2f}{r['gbytes_per_s']:>8.1f}{memory:>10}"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows(results)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
