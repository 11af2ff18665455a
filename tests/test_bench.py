"""The benchmark script runs (a smoke test: no assertion depends on a timing)."""

from __future__ import annotations

import csv
import time

import pytest
import torch

import lnorm.bench
from lnorm import moments
from conftest import HAVE_TRITON, NO_TRITON


def test_cpu_benchmark_writes_its_csv(tmp_path, capsys) -> None:
    path = tmp_path / "cpu.csv"
    blocks = tmp_path / "blocks.csv"
    lnorm.bench.main(["--quick", "--repeats", "1", "--csv", str(path), "--blocks", str(blocks)])
    rows = list(csv.DictReader(path.open()))
    cases = {(r["implementation"], r["dtype"], r["affine"], r["output"]) for r in rows}
    both = "weight, bias"
    for dtype in ("float32", "float16", "bfloat16"):  # torch's kernel with and without affine
        assert ("torch.nn.functional", dtype, both, "allocated") in cases
        assert ("torch.nn.functional", dtype, "none", "allocated") in cases
        assert ("torch native_layer_norm.out", dtype, both, "preallocated") in cases
    for dtype in ("float32", "float16"):  # NumPy has no bfloat16
        assert ("lnorm.numpy", dtype, both, "allocated") in cases
        assert ("lnorm.numpy", dtype, both, "preallocated") in cases
        assert ("numpy copy", dtype, "none", "preallocated") in cases
    assert {r["implementation"] for r in rows if r["dtype"] == "float32"} >= {
        "lnorm.torch",
        "lnorm.numpy, no correction pass",
        "torch.nn.functional.rms_norm",
        "lnorm.torch.rms_norm",
        "lnorm.numpy.rms_norm",
    }
    if lnorm.bench.huge_pages_setting() not in ("", "never"):
        assert any(r["implementation"].endswith(", huge pages") for r in rows)
    for r in rows:  # GB/s counts read x, write y and the write-allocate read of y
        size = 4 if r["dtype"] == "float32" else 2
        assert int(r["bytes_moved"]) == 3 * int(r["rows"]) * int(r["row_length"]) * size
        assert r["repeats"] == "1" and r["threads"] == "1"
        assert float(r["best_ms"]) <= float(r["median_ms"]) <= float(r["max_ms"])
        assert float(r["cpu_best_ms"]) <= float(r["cpu_median_ms"]) <= float(r["cpu_max_ms"])
        assert float(r["minor_faults_per_call"]) >= 0
        # what the row says of the machine and of the code it timed
        assert r["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert r["numpy_cpu_dispatch"] == lnorm.bench.numpy_cpu_dispatch()
        assert r["source_sha256"] == lnorm.bench.source_hash()
    baseline = [  # torch's kernel with weight and bias, one thread: what time_vs_torch divides by
        r
        for r in rows
        if (r["implementation"], r["affine"], r["threads"]) == ("torch.nn.functional", both, "1")
    ]
    assert len(baseline) == 3 and all(float(r["time_vs_torch"]) == 1.0 for r in baseline)
    assert "lnorm.numpy" in capsys.readouterr().out
    sweep = list(csv.DictReader(blocks.open()))
    assert [int(r["block_bytes"]) for r in sweep] == lnorm.bench.BLOCK_SWEEP


def test_interleaved_times_calls_every_run_once_per_round() -> None:
    calls = []
    times = lnorm.bench.interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3
    )
    assert calls == ["a", "b"] * 4  # a warm-up round, then three timed rounds
    assert all(0 <= t.best <= t.median <= t.worst for t in times.values())
    assert all(0 <= t.cpu_best <= t.cpu_median <= t.cpu_worst for t in times.values())
    assert all(t.minor_faults >= 0 for t in times.values())


def test_source_hash_and_dispatch_are_recorded_as_text() -> None:
    digest = lnorm.bench.source_hash()
    assert len(digest) == 12 and int(digest, 16) >= 0 and digest == lnorm.bench.source_hash()
    assert lnorm.bench.source_hash(("numpy.py",)) != digest  # every timed file counts
    dispatch = lnorm.bench.numpy_cpu_dispatch()
    assert dispatch == "" or all(target.isupper() or "_" in target for target in dispatch.split())


@pytest.mark.skipif(not hasattr(__import__("resource"), "RUSAGE_THREAD"), reason="Linux only")
def test_first_touch_of_new_memory_counts_minor_faults() -> None:
    import numpy as np

    before = lnorm.bench.minor_faults()
    fresh = np.ones(2**23)  # 64 MiB, mapped fresh and written: at least one page fault
    assert lnorm.bench.minor_faults() > before and fresh[-1] == 1


def test_the_uncorrected_variant_is_the_plain_two_pass() -> None:
    # The benchmark's "no correction pass" row times the same loop without the second mean:
    # its result is the textbook two-pass, and lnorm.numpy is itself again afterwards.
    import numpy as np

    import lnorm.numpy

    x = np.random.default_rng(0).normal(3.0, 1.0, size=(8, 64)).astype(np.float32)
    mean, var = moments.two_pass(x)
    np.testing.assert_array_equal(
        lnorm.bench.uncorrected_numpy(x, 64), (x - mean) * (1 / np.sqrt(var + np.float32(1e-5)))
    )
    standardize_block = lnorm.numpy.standardize_block
    assert standardize_block.__module__ == "lnorm.numpy"


@pytest.mark.skipif(not HAVE_TRITON, reason=NO_TRITON)
def test_gpu_benchmark_code_runs_on_the_interpreter(tmp_path) -> None:
    # The GPU path, exercised on the CPU through Triton's interpreter with a wall-clock timer
    # (and without torch.compile, which would need a long C++ build here).
    def wall_clock_ms(run) -> tuple[float, str]:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1e3, "wall clock"

    results = lnorm.bench.measure_gpu(
        torch.device("cpu"),
        rows=lambda n, element_size: 4,
        row_lengths=[8],
        dtypes=[torch.float16, torch.float32],
        implementations=lnorm.bench.gpu_implementations(compile_torch=False),
        time_ms=wall_clock_ms,
        peak_gbs=100.0,
    )
    assert len(results) == 2 * 4 * 2  # dtypes x implementations x passes
    assert {r["pass_"] for r in results} == {"forward", "forward+backward"}
    assert {(r["implementation"], r["norm"]) for r in results} == {
        ("torch.nn.functional", "layer_norm"),
        ("lnorm.triton", "layer_norm"),
        ("torch.nn.functional.rms_norm", "rms_norm"),
        ("lnorm.triton.rms_norm", "rms_norm"),
    }
    for r in results:  # each norm against torch's kernel for it, and against F.layer_norm
        # (the interpreter can be 1000 times slower than torch: a speedup may round to 0.0)
        assert r["speedup_vs_torch"] >= 0 and r["speedup_vs_torch_layer_norm"] >= 0
        if r["implementation"].startswith("torch.nn.functional"):
            assert r["speedup_vs_torch"] == 1.0
    assert all(
        r["bytes"]
        == (2 if r["pass_"] == "forward" else 5) * 4 * 8 * (2 if r["dtype"] == "float16" else 4)
        for r in results
    )
    lnorm.bench.write_csv(str(tmp_path / "gpu.csv"), results)
    assert "fraction_of_peak" in (tmp_path / "gpu.csv").read_text().splitlines()[0]


def test_gpu_cases_read_at_least_256_mib() -> None:
    for n in lnorm.bench.GPU_ROW_LENGTHS:
        for size in (2, 4):
            assert lnorm.bench.gpu_rows(n, size) * n * size >= 256 * 2**20


@pytest.mark.skipif(not HAVE_TRITON, reason=NO_TRITON)
def test_traffic_counts_a_known_kernel() -> None:
    # a kernel that copies 10 of 16 float32 values (a mask) and reads one scalar twice: 48 bytes
    # read, 44 of them distinct, 40 written, in one launch
    import triton
    import triton.language as tl

    import lnorm.triton  # noqa: F401  (the interpreter, as conftest set it)

    @triton.jit
    def copy(source, target, scalar, n):
        offsets = tl.arange(0, 16)
        value = tl.load(scalar) + tl.load(scalar)
        tl.store(target + offsets, tl.load(source + offsets, mask=offsets < n) + value,
                 mask=offsets < n)

    source, target, scalar = torch.arange(16.0), torch.zeros(16), torch.zeros(1)
    with lnorm.bench.counted_traffic() as traffic:
        copy[(1,)](source, target, scalar, 10)
    assert torch.equal(target[:10], source[:10]) and not target[10:].any()
    assert (traffic.read, traffic.written, traffic.launches) == (48, 40, 1)
    assert (traffic.distinct("read"), traffic.distinct("written")) == (44, 40)
    with lnorm.bench.counted_traffic() as nothing:
        pass
    assert nothing.total == 0  # and the interpreter's loads are unwrapped again
    copy[(1,)](source, target, scalar, 10)
    assert nothing.total == 0


@pytest.mark.skipif(not HAVE_TRITON, reason=NO_TRITON)
def test_traffic_table_of_one_small_case() -> None:
    results = lnorm.bench.measure_traffic([64], [torch.float32], rows=64)
    assert {(r["norm"], r["pass_"]) for r in results} == {
        (norm, p) for norm in ("layer_norm", "rms_norm") for p in ("forward", "backward")
    }
    for r in results:
        ideal = {"forward": 8, "backward": 12}[r["pass_"]]  # float32: x, y; x, dy, dx
        assert r["ideal_per_element"] == ideal
        assert r["total_per_element"] >= r["distinct_per_element"] >= ideal
        assert r["launches"] == (1 if r["pass_"] == "forward" else 2)
