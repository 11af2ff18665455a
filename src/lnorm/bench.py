"""Benchmark: time, bandwidth and peak memory of the LayerNorm implementations.

    python -m lnorm.bench                            # CPU: the table, on the default shapes
    python -m lnorm.bench --csv results.csv          # and a CSV the book can plot
    python -m lnorm.bench --device cuda --csv gpu.csv  # GPU: Triton vs torch, forward and backward
    python -m lnorm.bench --ptx DIR                  # no GPU needed: compile for sm_90, read the PTX
    python -m lnorm.bench --traffic --csv t.csv      # no GPU needed: bytes each kernel moves

The CPU table times RMSNorm (``torch.nn.functional.rms_norm``, ``lnorm.torch.rms_norm``,
``lnorm.numpy.rms_norm``, all with eps=None) beside LayerNorm, on the same inputs.
Every implementation runs single-threaded (``torch.set_num_threads(1)``; NumPy's
element-wise operations and reductions are single-threaded anyway), on float32
rows of N(0, 1). Each time is the best of ``--repeats`` runs after one warm-up
run: the best run is the one least disturbed by the rest of the machine. Peak
memory is what ``tracemalloc`` sees allocated during one call beyond what
existed before it (NumPy reports its allocations to tracemalloc; torch does not,
so its memory is not measured here).

On a GPU (``--device cuda``) it times, for N from 512 to 32768 in float16,
bfloat16 and float32 and M = 256 MiB / (N x element size) rows (every case
reads at least 256 MiB, far beyond any L2 cache): ``lnorm.triton``, torch's
native kernel and ``torch.compile`` of ``lnorm.torch``, forward and
forward+backward, for LayerNorm (with weight and bias) and beside it RMSNorm
(with weight, eps=None: ``lnorm.triton.rms_norm``, ``torch.nn.functional.rms_norm``,
``torch.compile(lnorm.torch.rms_norm)``); ``speedup_vs_torch`` compares with torch's
kernel for the same norm, ``speedup_vs_torch_layer_norm`` with ``F.layer_norm``. Each case is captured once in a CUDA graph of
GRAPH_REPEATS calls and the graph is replayed (``triton.testing.do_bench_cudagraph``,
median of its replays), so the CPU's launch overhead is not in the time; an
implementation that cannot be captured is timed with ``triton.testing.do_bench``
instead, and the row says which. Effective bandwidth counts the bytes a LayerNorm must move at the
least, the same for both norms: forward, read x and write y (2 M N elements);
forward+backward, that plus read x and dy and write dx (5 M N elements); the
parameters and the per-row statistics are left out (at most 2N + 3M elements). The fraction of peak divides
by the memory bandwidth the device reports (2 x memory clock x bus width).

This is a measurement, not a test: no assertion depends on the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch
from lnorm import moments

#: Bytes of x per GPU case: M = GPU_CASE_BYTES / (N * element size) rows.
GPU_CASE_BYTES = 256 * 2**20
GPU_ROW_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768]
GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]

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


def standardize_without_correction(rows, eps, out=None, scratch=None):
    """The plain two-pass, written like :func:`lnorm.moments.standardize` minus the correction
    (no second mean): what the blocked loop costs without the extra pass."""
    out = rows.copy() if out is None else out
    out[...] = rows
    out -= rows.mean(axis=-1, keepdims=True)
    rstd = moments.reciprocal_std(out, eps, scratch)
    out *= rstd
    return out, rstd


@contextlib.contextmanager
def numpy_without_correction() -> Iterator[None]:
    """Runs lnorm.numpy's blocked loop with :func:`standardize_without_correction` in place of
    the corrected two-pass, so that the two are timed in the same loop."""
    original = lnorm.numpy.moments
    lnorm.numpy.moments = types.SimpleNamespace(standardize=standardize_without_correction)
    try:
        yield
    finally:
        lnorm.numpy.moments = original


def uncorrected_numpy(x: np.ndarray, n: int) -> np.ndarray:
    with numpy_without_correction():
        return lnorm.numpy.layer_norm(x, n)


def torch_threads(threads: int, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with torch using ``threads`` threads (and one again afterwards)."""

    def threaded():
        torch.set_num_threads(threads)
        try:
            return run()
        finally:
            torch.set_num_threads(1)

    return threaded


def measure(shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    date = datetime.date.today().isoformat()
    threads = os.cpu_count() or 1
    for m, n in shapes:
        x = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
        x_numpy = x.numpy()
        runs = {  # (implementation, threads): run
            ("torch.nn.functional", 1): lambda: F.layer_norm(x, (n,)),
            ("lnorm.torch", 1): lambda: lnorm.torch.layer_norm(x, n),
            ("lnorm.numpy", 1): lambda: lnorm.numpy.layer_norm(x_numpy, n),
            ("lnorm.numpy, no correction pass", 1): lambda: uncorrected_numpy(x_numpy, n),
            # RMSNorm beside LayerNorm: its time_vs_torch is relative to F.layer_norm
            ("torch.nn.functional.rms_norm", 1): lambda: F.rms_norm(x, (n,)),
            ("lnorm.torch.rms_norm", 1): lambda: lnorm.torch.rms_norm(x, n),
            ("lnorm.numpy.rms_norm", 1): lambda: lnorm.numpy.rms_norm(x_numpy, n),
        }
        if threads > 1:
            runs[("torch.nn.functional", threads)] = torch_threads(
                threads, lambda: F.layer_norm(x, (n,))
            )
        baseline = None
        for (name, run_threads), run in runs.items():
            best, median = best_time(run, repeats)
            baseline = baseline or best
            rows.append(
                dict(
                    implementation=name,
                    rows=m,
                    row_length=n,
                    dtype="float32",
                    threads=run_threads,
                    best_ms=round(best * 1e3, 2),
                    median_ms=round(median * 1e3, 2),
                    time_vs_torch=round(best / baseline, 3),
                    peak_memory_vs_output=(
                        round(peak_extra_bytes(run) / x_numpy.nbytes, 3)
                        if name.startswith("lnorm.numpy") and run_threads == 1
                        else ""
                    ),
                    gbytes_per_s=round(2 * x_numpy.nbytes / best / 1e9, 2),  # read x, write y
                    cpu=cpu_name(),
                    numpy=np.__version__,
                    torch=torch.__version__,
                    date=date,
                )
            )
    return rows


BLOCK_SWEEP = [1 << k for k in range(12, 27, 2)]  # 4 KiB to 64 MiB


def cache_sizes() -> dict[str, int]:
    """One core's data cache sizes in bytes, as Linux reports them in sysfs (0 where unknown)."""
    sizes = {"l1d": 0, "l2": 0, "l3": 0}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            sizes[{"1": "l1d", "2": "l2", "3": "l3"}.get(level, "other")] = (
                int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
            )
    sizes.pop("other", None)
    return sizes


def measure_blocks(repeats: int, shape: tuple[int, int] = (4096, 4096)) -> list[dict]:
    """lnorm.numpy's time against its block size (``lnorm.numpy.BLOCK_BYTES``), one thread."""
    m, n = shape
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    default, rows = lnorm.numpy.BLOCK_BYTES, []
    caches = cache_sizes()
    try:
        for block_bytes in BLOCK_SWEEP:
            lnorm.numpy.BLOCK_BYTES = block_bytes
            best, median = best_time(lambda: lnorm.numpy.layer_norm(x, n), repeats)
            rows.append(
                dict(
                    block_bytes=block_bytes,
                    rows=m,
                    row_length=n,
                    best_ms=round(best * 1e3, 2),
                    median_ms=round(median * 1e3, 2),
                    **{f"{key}_bytes": size for key, size in caches.items()},
                    cpu=cpu_name(),
                    numpy=np.__version__,
                    date=datetime.date.today().isoformat(),
                )
            )
    finally:
        lnorm.numpy.BLOCK_BYTES = default
    return rows


@dataclass(frozen=True)
class GpuImplementation:
    """One implementation a GPU run times: its norm, ``"layer_norm"`` (called as
    ``run(x, n, weight, bias)``) or ``"rms_norm"`` (called as ``run(x, n, weight)``)."""

    norm: str
    run: Callable[..., torch.Tensor]


def gpu_implementations(compile_torch: bool = True) -> dict[str, GpuImplementation]:
    """The implementations a GPU run compares: LayerNorm's, then RMSNorm's, torch's kernel first."""
    import lnorm.triton  # needs triton, and a GPU or the interpreter

    layer_norm, rms_norm = "layer_norm", "rms_norm"
    implementations = {
        "torch.nn.functional": GpuImplementation(
            layer_norm, lambda x, n, w, b: F.layer_norm(x, (n,), w, b)
        ),
        "lnorm.triton": GpuImplementation(
            layer_norm, lambda x, n, w, b: lnorm.triton.layer_norm(x, n, w, b)
        ),
    }
    if compile_torch:
        compiled = torch.compile(lnorm.torch.layer_norm)
        implementations["torch.compile(lnorm.torch)"] = GpuImplementation(
            layer_norm, lambda x, n, w, b: compiled(x, n, w, b)
        )
    implementations["torch.nn.functional.rms_norm"] = GpuImplementation(
        rms_norm, lambda x, n, w: F.rms_norm(x, (n,), w)
    )
    implementations["lnorm.triton.rms_norm"] = GpuImplementation(
        rms_norm, lambda x, n, w: lnorm.triton.rms_norm(x, n, w)
    )
    if compile_torch:
        compiled_rms = torch.compile(lnorm.torch.rms_norm)
        implementations["torch.compile(lnorm.torch.rms_norm)"] = GpuImplementation(
            rms_norm, lambda x, n, w: compiled_rms(x, n, w)
        )
    return implementations


def gpu_rows(row_length: int, element_size: int, case_bytes: int = GPU_CASE_BYTES) -> int:
    """Rows of a GPU case: enough that x alone is case_bytes (256 MiB), whatever N and dtype."""
    return max(1, case_bytes // (row_length * element_size))


def cuda_time_ms(run: Callable[[], object]) -> tuple[float, str]:
    """(median milliseconds of one ``run``, how it was timed). Replays of a CUDA graph of the
    call: no launch overhead from the CPU in the time. A call that cannot be captured (a host
    sync inside it) falls back to ``do_bench``, whose per-call launch overhead (a few
    microseconds) is below 2% of a call on 256 MiB (over 100 us at 3.35 TB/s)."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(run, return_mode="median")), "cuda graph"
    except RuntimeError:
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(run, return_mode="median")), "do_bench"


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """The device's theoretical memory bandwidth in GB/s, from its memory clock and bus width."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = (
        getattr(props, "memory_clock_rate", 0),
        getattr(props, "memory_bus_width", 0),
    )
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def driver_version() -> str:
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.strip().splitlines()[0] if result.returncode == 0 else "unknown"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def measure_gpu(
    device: torch.device,
    rows: Callable[[int, int], int],
    row_lengths: list[int],
    dtypes: list[torch.dtype],
    implementations: dict[str, GpuImplementation],
    time_ms: Callable[[Callable[[], object]], tuple[float, str]],
    peak_gbs: float | None,
) -> list[dict]:
    """Forward and forward+backward times and bandwidths of each implementation, per shape and
    dtype; ``rows(N, element size)`` gives M for each case. LayerNorm's implementations get the
    weight and bias, RMSNorm's the weight; both the same x and dy."""
    import triton

    common = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        driver=driver_version() if device.type == "cuda" else "",
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.date.today().isoformat(),
    )
    results = []
    for dtype in dtypes:
        for n in row_lengths:
            m = rows(n, torch.empty((), dtype=dtype).element_size())
            generator = torch.Generator(device=device).manual_seed(0)
            x = (
                torch.randn(m, n, device=device, generator=generator)
                .to(dtype)
                .requires_grad_(True)
            )
            weight = (
                torch.rand(n, device=device, generator=generator).to(dtype).requires_grad_(True)
            )
            bias = torch.randn(n, device=device, generator=generator).to(dtype).requires_grad_(True)
            dy = torch.randn(m, n, device=device, generator=generator).to(dtype)
            baseline = {}  # (norm, pass): the first implementation's time, torch's kernel
            for name, implementation in implementations.items():
                parameters = (weight, bias) if implementation.norm == "layer_norm" else (weight,)

                def forward(run=implementation.run, parameters=parameters):
                    with torch.no_grad():
                        return run(x, n, *parameters)

                def forward_backward(run=implementation.run, parameters=parameters):
                    return torch.autograd.grad(run(x, n, *parameters), (x, *parameters), dy)

                for pass_name, run, elements in [
                    ("forward", forward, 2),
                    ("forward+backward", forward_backward, 5),
                ]:
                    ms, timer = time_ms(run)
                    baseline.setdefault((implementation.norm, pass_name), ms)
                    layer_norm_ms = baseline.get(("layer_norm", pass_name))
                    gbs = elements * m * n * x.element_size() / (ms * 1e-3) / 1e9
                    results.append(
                        dict(
                            implementation=name,
                            norm=implementation.norm,
                            pass_=pass_name,
                            dtype=str(dtype).removeprefix("torch."),
                            rows=m,
                            row_length=n,
                            ms=round(ms, 4),
                            timer=timer,
                            bytes=elements * m * n * x.element_size(),
                            gbytes_per_s=round(gbs, 1),
                            fraction_of_peak=round(gbs / peak_gbs, 3) if peak_gbs else "",
                            speedup_vs_torch=round(baseline[(implementation.norm, pass_name)] / ms, 3),
                            speedup_vs_torch_layer_norm=(
                                round(layer_norm_ms / ms, 3) if layer_norm_ms else ""
                            ),
                            peak_gbytes_per_s=peak_gbs or "",
                            **common,
                        )
                    )
    return results


#: ``--traffic``: the cases counted. 512 rows: the interpreter runs 16 programs (the plan's
#: INTERPRETER_PROGRAMS), 32 rows each, so that what a program loads once (weight, bias) and writes
#: once (partial gradients) weighs per row as on an H100's 132 programs over about 4,200 rows.
TRAFFIC_ROWS = 512
TRAFFIC_ROW_LENGTHS = [768, 4096, 5120, 8192, 16384]
TRAFFIC_DTYPES = [torch.bfloat16, torch.float32]
#: Ideal traffic in elements of x per element: forward reads x and writes y; backward reads x
#: and dy and writes dx.
IDEAL_ELEMENTS = {"forward": 2, "backward": 3}


class MemoryTraffic:
    """Bytes that Triton's interpreter loads and stores, counting active (unmasked) lanes only:
    ``read`` and ``written`` in total, and the distinct bytes of each (one bitmap of 1 MiB per
    page of address space touched), and the kernel launches."""

    PAGE_BITS = 20

    def __init__(self) -> None:
        self.read = self.written = self.launches = 0
        self._touched = {"read": {}, "written": {}}

    def add(self, kind: str, addresses: np.ndarray, mask: np.ndarray, element_size: int) -> None:
        active = np.asarray(addresses, dtype=np.uint64)[np.broadcast_to(mask, np.shape(addresses))]
        setattr(self, kind, getattr(self, kind) + active.size * element_size)
        pages = active >> np.uint64(self.PAGE_BITS)
        for page in np.unique(pages):
            bitmap = self._touched[kind].setdefault(int(page), np.zeros(1 << self.PAGE_BITS, bool))
            offsets = (active[pages == page] & np.uint64((1 << self.PAGE_BITS) - 1)).astype(np.int64)
            for byte in range(element_size):  # elements are aligned: never across a page
                bitmap[offsets + byte] = True

    def distinct(self, kind: str) -> int:
        return sum(int(bitmap.sum()) for bitmap in self._touched[kind].values())

    @property
    def total(self) -> int:
        return self.read + self.written


@contextlib.contextmanager
def counted_traffic() -> Iterator[MemoryTraffic]:
    """Counts every masked load and store (and launch) of Triton's interpreter while open, by
    wrapping the interpreter's builder (its unmasked loads and stores call the masked ones)."""
    from triton.runtime import interpreter

    builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
    load, store, launch = builder.create_masked_load, builder.create_masked_store, executor.__call__
    traffic = MemoryTraffic()

    def size(ptrs) -> int:
        return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)

    def counting_load(self, ptrs, mask, other, *rest):
        traffic.add("read", ptrs.data, mask.data, size(ptrs))
        return load(self, ptrs, mask, other, *rest)

    def counting_store(self, ptrs, value, mask, *rest):
        traffic.add("written", ptrs.data, mask.data, size(ptrs))
        return store(self, ptrs, value, mask, *rest)

    def counting_launch(self, *args, **kwargs):
        traffic.launches += 1
        return launch(self, *args, **kwargs)

    builder.create_masked_load, builder.create_masked_store = counting_load, counting_store
    executor.__call__ = counting_launch
    try:
        yield traffic
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store
        executor.__call__ = launch


def measure_traffic(
    row_lengths: list[int] = TRAFFIC_ROW_LENGTHS,
    dtypes: list[torch.dtype] = TRAFFIC_DTYPES,
    rows: int = TRAFFIC_ROWS,
) -> list[dict]:
    """Bytes per element of x that lnorm.triton's kernels read and write, forward and backward,
    LayerNorm (weight and bias) and RMSNorm (weight), against the ideal, in Triton's
    interpreter (which must have been switched on before lnorm.triton was imported)."""
    import lnorm.triton

    if not lnorm.triton.INTERPRETED:
        raise RuntimeError("--traffic counts in Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before lnorm.triton is imported")
    results = []
    for norm in ("layer_norm", "rms_norm"):
        for dtype in dtypes:
            for n in row_lengths:
                generator = torch.Generator().manual_seed(n)
                x = torch.randn(rows, n, generator=generator).to(dtype)
                dy = torch.randn(rows, n, generator=generator).to(dtype)
                params = [torch.rand(n, generator=generator).to(dtype)]
                if norm == "layer_norm":
                    params.append(torch.randn(n, generator=generator).to(dtype))
                function = getattr(lnorm.triton, norm)
                with counted_traffic() as forward:
                    function(x, n, *params)
                leaves = [t.clone().requires_grad_(True) for t in (x, *params)]
                y = function(leaves[0], n, *leaves[1:])
                with counted_traffic() as backward:
                    torch.autograd.grad(y, leaves, dy)
                for pass_name, traffic in (("forward", forward), ("backward", backward)):
                    elements = rows * n
                    ideal = IDEAL_ELEMENTS[pass_name] * x.element_size()
                    distinct = traffic.distinct("read") + traffic.distinct("written")
                    results.append(dict(
                        norm=norm, pass_=pass_name, dtype=str(dtype).removeprefix("torch."),
                        rows=rows, row_length=n, launches=traffic.launches,
                        read_per_element=round(traffic.read / elements, 3),
                        written_per_element=round(traffic.written / elements, 3),
                        total_per_element=round(traffic.total / elements, 3),
                        distinct_per_element=round(distinct / elements, 3),
                        ideal_per_element=ideal,
                        total_vs_ideal=round(traffic.total / elements / ideal, 3),
                        distinct_vs_ideal=round(distinct / elements / ideal, 3),
                    ))
    return results


def print_traffic_table(results: list[dict]) -> None:
    print(f"{'norm':<11}{'pass':<10}{'dtype':<10}{'N':>7}{'launch':>7}{'read':>8}{'written':>8}"
          f"{'total':>8}{'distinct':>9}{'ideal':>7}{'total/i':>8}{'dist/i':>8}")
    for r in results:
        print(f"{r['norm']:<11}{r['pass_']:<10}{r['dtype']:<10}{r['row_length']:>7}"
              f"{r['launches']:>7}{r['read_per_element']:>8.2f}{r['written_per_element']:>8.2f}"
              f"{r['total_per_element']:>8.2f}{r['distinct_per_element']:>9.2f}"
              f"{r['ideal_per_element']:>7}{r['total_vs_ideal']:>8.2f}{r['distinct_vs_ideal']:>8.2f}")


def print_gpu_table(results: list[dict]) -> None:
    print(
        f"{'implementation':<38}{'pass':<18}{'dtype':<10}{'N':>7}{'ms':>9}{'GB/s':>8}{'peak':>7}{'vs torch':>9}"
    )
    for r in results:
        peak = f"{r['fraction_of_peak']:.0%}" if r["fraction_of_peak"] != "" else "-"
        print(
            f"{r['implementation']:<38}{r['pass_']:<18}{r['dtype']:<10}{r['row_length']:>7}"
            f"{r['ms']:>9.3f}{r['gbytes_per_s']:>8.0f}{peak:>7}{r['speedup_vs_torch']:>9.2f}"
        )


def write_csv(path: str, results: list[dict]) -> None:
    with open(path, "w", newline="") as out:
        fieldnames = [key.rstrip("_") for key in results[0]]
        writer = csv.DictWriter(out, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({key.rstrip("_"): value for key, value in row.items()} for row in results)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to measure (default cpu)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="CPU: timed runs per case (default 7)"
    )
    parser.add_argument("--csv", help="also write the results to this CSV file")
    parser.add_argument("--quick", action="store_true", help="one small shape, for a smoke test")
    parser.add_argument(
        "--blocks",
        metavar="CSV",
        help="CPU: also time lnorm.numpy against its block size (4 KiB to 64 MiB) into this CSV",
    )
    parser.add_argument(
        "--ptx",
        metavar="DIR",
        help="no GPU needed: compile every Triton kernel for sm_90, write DIR/<kernel>-<dtype>-<N>.ptx "
        "and DIR/ptx.csv, print registers, spills and access widths",
    )
    parser.add_argument(
        "--traffic",
        action="store_true",
        help="no GPU needed: count the bytes each Triton kernel reads and writes, in Triton's "
        "interpreter, per element of x, against the ideal (with --csv: write them there)",
    )
    parser.add_argument(
        "--peak-gbs",
        type=float,
        help="GPU: the memory bandwidth to compare with, if the device does not report it",
    )
    args = parser.parse_args(argv)

    if args.ptx:
        import lnorm.ptx

        compiled = lnorm.ptx.compile_all(args.ptx)
        print(lnorm.ptx.format_table(compiled))
        rows = lnorm.ptx.table_rows(compiled)
        write_csv(f"{args.ptx}/ptx.csv", rows)
        if args.csv:
            write_csv(args.csv, rows)
        return

    if args.traffic:
        os.environ["TRITON_INTERPRET"] = "1"  # before lnorm.triton is imported
        results = measure_traffic([768] if args.quick else TRAFFIC_ROW_LENGTHS)
        print_traffic_table(results)
        if args.csv:
            write_csv(args.csv, results)
        return

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda needs a CUDA GPU, and torch sees none")
        device = torch.device("cuda")
        results = measure_gpu(
            device,
            gpu_rows,
            [1024] if args.quick else GPU_ROW_LENGTHS,
            GPU_DTYPES,
            gpu_implementations(),
            cuda_time_ms,
            args.peak_gbs or peak_bandwidth_gbs(device),
        )
        print_gpu_table(results)
        if args.csv:
            write_csv(args.csv, results)
        return

    results = measure([(256, 1024)] if args.quick else SHAPES, args.repeats)
    print(
        f"{'implementation':<33}{'threads':>8}{'M x N':>14}{'best ms':>10}{'vs torch':>10}"
        f"{'GB/s':>8}{'peak mem':>10}"
    )
    for r in results:
        memory = f"{r['peak_memory_vs_output']:.2f}x" if r["peak_memory_vs_output"] != "" else "-"
        print(
            f"{r['implementation']:<33}{r['threads']:>8}{r['rows']:>7} x {r['row_length']:<5}"
            f"{r['best_ms']:>10.1f}{r['time_vs_torch']:>10.2f}{r['gbytes_per_s']:>8.1f}{memory:>10}"
        )
    if args.csv:
        write_csv(args.csv, results)
    if args.blocks:
        blocks = measure_blocks(args.repeats, (256, 1024) if args.quick else (4096, 4096))
        for r in blocks:
            print(f"block {r['block_bytes'] // 1024:>6} KiB: {r['best_ms']:>8.1f} ms")
        write_csv(args.blocks, blocks)


if __name__ == "__main__":
    main()
