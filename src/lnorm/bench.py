"""Benchmark: time, bandwidth and peak memory of the LayerNorm implementations.

    python -m lnorm.bench                            # CPU: the table, on the default shapes
    python -m lnorm.bench --csv results.csv          # and a CSV the book can plot
    python -m lnorm.bench --device cuda --csv gpu.csv  # GPU: Triton vs torch, forward and backward
    python -m lnorm.bench --ptx DIR                  # no GPU needed: compile for sm_90, read the PTX
    python -m lnorm.bench --traffic --csv t.csv      # no GPU needed: bytes each kernel moves

On the CPU it times, on float32 rows of N(0, 1) of four shapes (128 MiB each) and
the first shape's rows rounded to float16 and bfloat16: ``torch.nn.functional.layer_norm``
with weight and bias (the baseline of ``time_vs_torch``) and without (without both,
``LayerNormKernelImplInternal`` in aten/src/ATen/native/cpu/layer_norm_kernel.cpp takes a
scalar loop instead of its vectorized ``vec::map3``), ``lnorm.numpy.layer_norm`` with weight and bias into a new array and
into a preallocated one (``out=``), torch's kernel into a preallocated one too
(``torch.ops.aten.native_layer_norm.out``), ``lnorm.torch.layer_norm``, lnorm.numpy without its
correction pass, plain copies of x into a new and into a preallocated array (the least any
LayerNorm costs, and what allocating and first touching the output costs), RMSNorm beside
LayerNorm (``torch.nn.functional.rms_norm``, ``lnorm.torch.rms_norm``,
``lnorm.numpy.rms_norm``, eps=None, no weight). A child
process times torch's kernel again with ``THP_MEM_ALLOC_ENABLE=1``, so that its output comes
in 2 MiB pages as NumPy's does ("huge pages" rows). Every case runs on one thread, with
``torch.set_num_threads(1)`` (NumPy's operations are single-threaded anyway), pinned to one CPU
(``--cpu``, default 0). The cases of one input are timed in interleaved rounds, after a
warm-up round: ``best_ms``, ``median_ms`` and ``max_ms`` are the wall-clock time's best, median
and worst over ``--repeats`` rounds, ``cpu_best_ms``, ``cpu_median_ms`` and ``cpu_max_ms`` the
same of the calling thread's CPU time (on a shared machine, the time the thread itself ran),
``minor_faults_per_call`` the median of the thread's minor page faults in one call
(``resource.getrusage``).
``gbytes_per_s`` counts three passes over x's bytes: read x, write y, and read y's lines before
writing them (write-allocate). Peak memory is what ``tracemalloc`` sees allocated during one
call (NumPy reports its allocations to tracemalloc; torch does not, so its memory is not
measured here). Each row records the CPU, the kernel build torch selected
(``torch.backends.cpu.get_cpu_capability()``) and the SIMD targets NumPy dispatches to, the
libraries' versions, lnorm's git commit and a hash of the timed source files
(:data:`TIMED_SOURCES`), the pinned CPU and the kernel's huge-page setting.

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
import json
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch

#: Bytes of x per GPU case: M = GPU_CASE_BYTES / (N * element size) rows.
GPU_CASE_BYTES = 256 * 2**20
GPU_ROW_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768]
GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]

SHAPES = [(8192, 4096), (32768, 1024), (131072, 256), (2048, 16384)]
#: The 16-bit inputs are timed on the first shape only (NumPy has no bfloat16: torch alone).
SIXTEEN_BIT_DTYPES = ["float16", "bfloat16"]
#: Bytes a LayerNorm moves at the least, per element of x, in units of the element size:
#: read x, write y, and read y's cache lines before writing them (write-allocate).
PASSES_OVER_MEMORY = 3
#: The files whose code a CPU row times (beside NumPy and torch): their hash is recorded.
TIMED_SOURCES = ("numpy.py", "moments.py", "bench.py")


@dataclass(frozen=True)
class Timing:
    """Seconds of one run over the timed rounds: wall clock (best, median, worst), and the CPU
    time of the calling thread (the same three), which leaves out the time the scheduler gave to
    other jobs on a shared machine (page faults are the thread's: they count); and the median
    number of minor page faults of one call (a page first touched: mapped and zeroed)."""

    best: float
    median: float
    worst: float
    cpu_best: float
    cpu_median: float
    cpu_worst: float
    minor_faults: float


def minor_faults() -> int:
    """Minor page faults of the calling thread so far (of the process where Linux's per-thread
    count is not available)."""
    import resource

    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_minflt


def interleaved_times(
    runs: dict[object, Callable[[], object]], repeats: int
) -> dict[object, Timing]:
    """The :class:`Timing` of each run over ``repeats`` rounds after one warm-up round; every
    round calls each run once, in turn, so that a disturbance of the machine (other jobs on a
    shared host) spreads over all of them instead of falling on one."""
    for run in runs.values():
        run()
    wall: dict[object, list[float]] = {key: [] for key in runs}
    cpu: dict[object, list[float]] = {key: [] for key in runs}
    faults: dict[object, list[int]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start_faults = minor_faults()
            start, start_cpu = time.perf_counter(), time.thread_time()
            run()
            cpu[key].append(time.thread_time() - start_cpu)
            wall[key].append(time.perf_counter() - start)
            faults[key].append(minor_faults() - start_faults)
    return {
        key: Timing(
            min(wall[key]), statistics.median(wall[key]), max(wall[key]),
            min(cpu[key]), statistics.median(cpu[key]), max(cpu[key]),
            statistics.median(faults[key]),
        )
        for key in runs
    }


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


def huge_pages_setting() -> str:
    """The kernel's transparent huge page mode (always, madvise or never; '' where unknown).

    NumPy asks for huge pages (madvise) for large arrays; torch's CPU allocator does only with
    THP_MEM_ALLOC_ENABLE=1. Under 'madvise' a fresh 128 MiB torch tensor is first touched as
    32768 pages of 4 KiB, each a page fault, a NumPy array as 64 pages of 2 MiB."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()


def lnorm_commit() -> str:
    """The git commit of the lnorm being measured, with '+changes' if src/ differs from it."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "src"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{commit}+changes" if commit and changed else commit


def source_hash(files: tuple[str, ...] = TIMED_SOURCES) -> str:
    """The first 12 hex digits of the SHA-256 of the timed source files of lnorm, in order: a
    record made by other code than the files here now has another hash."""
    digest = hashlib.sha256()
    for name in files:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def numpy_cpu_dispatch() -> str:
    """The SIMD targets beyond its baseline that NumPy dispatches to on this CPU (space-separated,
    e.g. 'X86_V3 X86_V4 AVX512_ICL'; NPY_DISABLE_CPU_FEATURES removes some), '' where unknown."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1
        from numpy.core import _multiarray_umath as umath
    features = getattr(umath, "__cpu_features__", {})
    return " ".join(t for t in getattr(umath, "__cpu_dispatch__", []) if features.get(t))


def standardize_block_without_correction(source, eps, out, squares, statistics) -> None:
    """:func:`lnorm.numpy.standardize_block` without the correction (the second mean and its
    subtraction): the plain two-pass, to time what the extra pass costs in the same loop."""
    lnorm.numpy._row_mean(source, out=statistics)
    np.subtract(source, statistics, out=out)
    np.multiply(out, out, out=squares)
    lnorm.numpy._row_mean(squares, out=statistics)
    np.add(statistics, eps, out=statistics)
    np.sqrt(statistics, out=statistics)
    np.divide(1, statistics, out=statistics)
    np.multiply(out, statistics, out=out)


@contextlib.contextmanager
def numpy_without_correction() -> Iterator[None]:
    """Runs lnorm.numpy's blocked loop with :func:`standardize_block_without_correction` in
    place of the corrected two-pass, so that the two are timed in the same loop."""
    original = lnorm.numpy.standardize_block
    lnorm.numpy.standardize_block = standardize_block_without_correction
    try:
        yield
    finally:
        lnorm.numpy.standardize_block = original


def uncorrected_numpy(x: np.ndarray, n: int, *parameters: np.ndarray) -> np.ndarray:
    with numpy_without_correction():
        return lnorm.numpy.layer_norm(x, n, *parameters)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Runs the body on ``cpus`` only (``None``: wherever it ran), then restores the affinity."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class CpuCase:
    """One timed call: what it is (implementation, its threads), and how it treats the
    output: ``affine`` is 'weight, bias' or 'none'; ``output`` 'allocated' (the call allocates
    and first-touches it) or 'preallocated' (written into an array that exists already)."""

    implementation: str
    threads: int
    affine: str
    output: str
    run: Callable[[], object]


def cpu_cases(x: torch.Tensor) -> list[CpuCase]:
    """The calls timed on one input, all on one thread: torch's kernel with and without weight
    and bias, and into a preallocated output, the two lnorm backends with them, lnorm.numpy also
    into a preallocated output and without its correction pass, plain copies (the least a
    LayerNorm costs), RMSNorm beside LayerNorm. 16-bit inputs: the LayerNorms only."""
    n = x.shape[-1]
    generator = torch.Generator().manual_seed(1)
    weight = torch.rand(n, generator=generator).to(x.dtype)
    bias = torch.randn(n, generator=generator).to(x.dtype)
    both = "weight, bias"
    # torch's kernel writing y (and the per-row mean and 1/std it returns) into existing tensors
    y_torch, row_mean, row_rstd = torch.empty_like(x), x.new_empty(x.shape[0], 1), x.new_empty(
        x.shape[0], 1)
    into = dict(out0=y_torch, out1=row_mean, out2=row_rstd)
    cases = [
        CpuCase("torch.nn.functional", 1, both, "allocated",
                lambda: F.layer_norm(x, (n,), weight, bias)),
        CpuCase("torch.nn.functional", 1, "none", "allocated", lambda: F.layer_norm(x, (n,))),
        CpuCase("torch native_layer_norm.out", 1, both, "preallocated",
                lambda: torch.ops.aten.native_layer_norm.out(x, [n], weight, bias, 1e-5, **into)),
    ]
    if x.dtype == torch.bfloat16:  # no NumPy dtype for it
        return cases
    x_np, weight_np, bias_np = x.numpy(), weight.numpy(), bias.numpy()
    y_np, y = np.empty_like(x_np), torch.empty_like(x)
    cases += [
        CpuCase("lnorm.numpy", 1, both, "allocated",
                lambda: lnorm.numpy.layer_norm(x_np, n, weight_np, bias_np)),
        CpuCase("lnorm.numpy", 1, both, "preallocated",
                lambda: lnorm.numpy.layer_norm(x_np, n, weight_np, bias_np, out=y_np)),
        CpuCase("numpy copy", 1, "none", "allocated", lambda: x_np.copy()),
        CpuCase("numpy copy", 1, "none", "preallocated", lambda: np.copyto(y_np, x_np)),
        CpuCase("torch copy", 1, "none", "allocated", lambda: x.clone()),
        CpuCase("torch copy", 1, "none", "preallocated", lambda: y.copy_(x)),
    ]
    if x.dtype == torch.float16:  # the two conversions lnorm.numpy makes of a float16 input
        work = np.empty(x_np.shape, np.float32)
        cases += [
            CpuCase("numpy float16 to float32", 1, "none", "preallocated",
                    lambda: np.copyto(work, x_np)),
            CpuCase("numpy float32 to float16", 1, "none", "preallocated",
                    lambda: np.copyto(y_np, work, casting="same_kind")),
        ]
    if x.dtype != torch.float32:
        return cases
    cases += [
        CpuCase("lnorm.numpy, no correction pass", 1, both, "allocated",
                lambda: uncorrected_numpy(x_np, n, weight_np, bias_np)),
        CpuCase("lnorm.torch", 1, both, "allocated",
                lambda: lnorm.torch.layer_norm(x, n, weight, bias)),
        # RMSNorm beside LayerNorm, both without weight or bias (chapter 10)
        CpuCase("lnorm.numpy", 1, "none", "allocated", lambda: lnorm.numpy.layer_norm(x_np, n)),
        CpuCase("lnorm.torch", 1, "none", "allocated", lambda: lnorm.torch.layer_norm(x, n)),
        CpuCase("torch.nn.functional.rms_norm", 1, "none", "allocated",
                lambda: F.rms_norm(x, (n,))),
        CpuCase("lnorm.torch.rms_norm", 1, "none", "allocated",
                lambda: lnorm.torch.rms_norm(x, n)),
        CpuCase("lnorm.numpy.rms_norm", 1, "none", "allocated",
                lambda: lnorm.numpy.rms_norm(x_np, n)),
    ]
    return cases


def cpu_inputs(
    shapes: list[tuple[int, int]], sixteen_bit: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """(dtype name, x) for each case: float32 rows of N(0, 1) for every shape, then the first
    shape's rows rounded to each 16-bit dtype."""
    for k, (m, n) in enumerate(shapes):
        x = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
        yield "float32", x
        if k == 0 and sixteen_bit:
            for name in SIXTEEN_BIT_DTYPES:
                yield name, x.to(getattr(torch, name))


def measure(
    shapes: list[tuple[int, int]],
    repeats: int,
    cpu: int | None = 0,
    sixteen_bit: bool = True,
    only_torch: bool = False,
) -> list[dict]:
    """One row per case and input (see :func:`cpu_cases`), timed by :func:`interleaved_times`.

    Every case runs with ``torch.set_num_threads(1)``, pinned to CPU ``cpu`` (None: not
    pinned). ``gbytes_per_s`` counts
    :data:`PASSES_OVER_MEMORY` passes over x's bytes (read x, write y, write-allocate).
    ``only_torch`` keeps torch's F.layer_norm alone (the huge-page child process)."""
    torch.set_num_threads(1)
    one_cpu = None if cpu is None or not hasattr(os, "sched_setaffinity") else {cpu}
    common = dict(
        cpu=cpu_name(),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        numpy_cpu_dispatch=numpy_cpu_dispatch(),
        pinned_cpu="" if one_cpu is None else cpu,
        huge_pages=huge_pages_setting(),
        torch_huge_pages=os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
        numpy=np.__version__,
        torch=torch.__version__,
        lnorm_commit=lnorm_commit(),
        source_sha256=source_hash(),
        date=datetime.date.today().isoformat(),
    )
    rows = []
    for dtype, x in cpu_inputs(shapes, sixteen_bit):
        m, n = x.shape
        cases = cpu_cases(x)
        if only_torch:
            cases = [c for c in cases if c.implementation == "torch.nn.functional"]
        with pinned(one_cpu):
            times = interleaved_times({k: c.run for k, c in enumerate(cases)}, repeats)
        baseline = times[0]  # torch's kernel with weight and bias, one thread
        for k, case in enumerate(cases):
            timing = times[k]
            memory = ""
            if case.implementation.startswith("lnorm.numpy") and case.threads == 1:
                memory = round(peak_extra_bytes(case.run) / (m * n * x.element_size()), 3)
            moved = PASSES_OVER_MEMORY * m * n * x.element_size()
            rows.append(
                dict(
                    implementation=case.implementation,
                    rows=m,
                    row_length=n,
                    dtype=dtype,
                    threads=case.threads,
                    affine=case.affine,
                    output=case.output,
                    repeats=repeats,
                    best_ms=round(timing.best * 1e3, 2),
                    median_ms=round(timing.median * 1e3, 2),
                    max_ms=round(timing.worst * 1e3, 2),
                    time_vs_torch=round(timing.best / baseline.best, 3),
                    cpu_best_ms=round(timing.cpu_best * 1e3, 2),
                    cpu_median_ms=round(timing.cpu_median * 1e3, 2),
                    cpu_max_ms=round(timing.cpu_worst * 1e3, 2),
                    cpu_time_vs_torch=round(timing.cpu_best / baseline.cpu_best, 3),
                    minor_faults_per_call=timing.minor_faults,
                    peak_memory_vs_output=memory,
                    bytes_moved=moved,
                    gbytes_per_s=round(moved / timing.best / 1e9, 2),
                    **common,
                )
            )
    return rows


def measure_torch_huge_pages(
    shapes: list[tuple[int, int]], repeats: int, cpu: int | None, sixteen_bit: bool
) -> list[dict]:
    """torch's kernel again, in a child process started with THP_MEM_ALLOC_ENABLE=1 (read once,
    when torch first allocates), so that its output comes in huge pages as NumPy's does. Its
    rows are named 'torch.nn.functional, huge pages'; none where the kernel has no huge pages."""
    if huge_pages_setting() in ("", "never"):
        return []
    command = [sys.executable, "-m", "lnorm.bench", "--huge-pages-child", "--repeats",
               str(repeats), "--cpu", "none" if cpu is None else str(cpu),
               "--shapes", ",".join(f"{m}x{n}" for m, n in shapes)]
    if not sixteen_bit:
        command.append("--no-16-bit")
    child = subprocess.run(
        command, env={**os.environ, "THP_MEM_ALLOC_ENABLE": "1"},
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(child.stdout)
    for row in rows:
        row["implementation"] += ", huge pages"
    return rows


def merged_with_huge_pages(rows: list[dict], huge: list[dict]) -> list[dict]:
    """Each huge-page row placed after its input's rows, timed against the same baseline."""
    key = lambda r: (r["rows"], r["row_length"], r["dtype"])  # noqa: E731
    baseline = {
        key(r): (r["best_ms"], r["cpu_best_ms"])
        for r in rows
        if r["implementation"] == "torch.nn.functional" and r["threads"] == 1
        and r["affine"] == "weight, bias"
    }
    merged = []
    for index, row in enumerate(rows):
        merged.append(row)
        last_of_input = index + 1 == len(rows) or key(rows[index + 1]) != key(row)
        if last_of_input:
            for extra in huge:
                if key(extra) == key(row):
                    wall, cpu = baseline[key(row)]
                    extra["time_vs_torch"] = round(extra["best_ms"] / wall, 3)
                    extra["cpu_time_vs_torch"] = round(extra["cpu_best_ms"] / cpu, 3)
                    merged.append(extra)
    return merged


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


def measure_blocks(
    repeats: int, shape: tuple[int, int] = (4096, 4096), cpu: int | None = 0
) -> list[dict]:
    """lnorm.numpy's time against its block size (``lnorm.numpy.BLOCK_BYTES``), one thread,
    with weight and bias, into a preallocated output (the loop alone), sizes interleaved."""
    m, n = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    weight, bias = rng.random(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    y = np.empty_like(x)
    default, rows = lnorm.numpy.BLOCK_BYTES, []
    caches = cache_sizes()

    def with_block(block_bytes: int) -> Callable[[], object]:
        def run():
            lnorm.numpy.BLOCK_BYTES = block_bytes
            try:
                return lnorm.numpy.layer_norm(x, n, weight, bias, out=y)
            finally:
                lnorm.numpy.BLOCK_BYTES = default

        return run

    one_cpu = {cpu} if cpu is not None and hasattr(os, "sched_setaffinity") else None
    with pinned(one_cpu):
        times = interleaved_times({size: with_block(size) for size in BLOCK_SWEEP}, repeats)
    for block_bytes, timing in times.items():
        rows.append(
            dict(
                block_bytes=block_bytes,
                rows=m,
                row_length=n,
                best_ms=round(timing.best * 1e3, 2),
                median_ms=round(timing.median * 1e3, 2),
                cpu_best_ms=round(timing.cpu_best * 1e3, 2),
                cpu_median_ms=round(timing.cpu_median * 1e3, 2),
                cpu_max_ms=round(timing.cpu_worst * 1e3, 2),
                **{f"{key}_bytes": size for key, size in caches.items()},
                cpu=cpu_name(),
                numpy=np.__version__,
                lnorm_commit=lnorm_commit(),
                source_sha256=source_hash(),
                date=datetime.date.today().isoformat(),
            )
        )
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
        "--cpu",
        default="0",
        help="CPU: the CPU the one-thread cases are pinned to (default 0; 'none': not pinned)",
    )
    parser.add_argument(
        "--shapes", help="CPU: M x N to time, e.g. 8192x4096,2048x16384 (default: four shapes)"
    )
    parser.add_argument(
        "--no-16-bit", action="store_true", help="CPU: float32 inputs only (no float16, bfloat16)"
    )
    parser.add_argument("--huge-pages-child", action="store_true", help=argparse.SUPPRESS)
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

    cpu = None if args.cpu == "none" else int(args.cpu)
    shapes = [(256, 1024)] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(k) for k in shape.split("x")) for shape in args.shapes.split(",")]
    sixteen_bit = not args.no_16_bit
    if args.huge_pages_child:  # torch's kernel alone, for the parent's huge-page rows
        print(json.dumps(measure(shapes, args.repeats, cpu, sixteen_bit, only_torch=True)))
        return
    results = merged_with_huge_pages(
        measure(shapes, args.repeats, cpu, sixteen_bit),
        measure_torch_huge_pages(shapes, args.repeats, cpu, sixteen_bit),
    )
    print_cpu_table(results)
    if args.csv:
        write_csv(args.csv, results)
    if args.blocks:
        blocks = measure_blocks(args.repeats, (256, 1024) if args.quick else (4096, 4096), cpu)
        for r in blocks:
            print(f"block {r['block_bytes'] // 1024:>6} KiB: {r['best_ms']:>8.1f} ms")
        write_csv(args.blocks, blocks)


def print_cpu_table(results: list[dict]) -> None:
    print(
        f"{'implementation':<42}{'dtype':<9}{'thr':>4}{'M x N':>14}  {'affine':<13}"
        f"{'output':<13}{'best ms':>8}{'vs torch':>9}{'cpu ms':>8}{'vs torch':>9}{'GB/s':>7}"
        f"{'mem':>7}"
    )
    for r in results:
        memory = f"{r['peak_memory_vs_output']:.2f}x" if r["peak_memory_vs_output"] != "" else "-"
        cpu_ms = f"{r['cpu_best_ms']:.1f}" if r["cpu_best_ms"] != "" else "-"
        cpu_ratio = f"{r['cpu_time_vs_torch']:.2f}" if r["cpu_time_vs_torch"] != "" else "-"
        print(
            f"{r['implementation']:<42}{r['dtype']:<9}{r['threads']:>4}"
            f"{r['rows']:>7} x {r['row_length']:<5}  {r['affine']:<13}{r['output']:<13}"
            f"{r['best_ms']:>8.1f}{r['time_vs_torch']:>9.2f}{cpu_ms:>8}{cpu_ratio:>9}"
            f"{r['gbytes_per_s']:>7.1f}{memory:>7}"
        )

if __name__ == "__main__":
    main()
