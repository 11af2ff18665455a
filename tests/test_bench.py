"""The benchmark script runs (a smoke test: no assertion depends on a timing)."""

from __future__ import annotations

import csv
import time

import torch

import lnorm.bench


def test_cpu_benchmark_writes_its_csv(tmp_path, capsys) -> None:
    path = tmp_path / "cpu.csv"
    lnorm.bench.main(["--quick", "--repeats", "1", "--csv", str(path)])
    rows = list(csv.DictReader(path.open()))
    assert {r["implementation"] for r in rows} == {
        "torch.nn.functional",
        "lnorm.torch",
        "lnorm.numpy",
        "torch.nn.functional.rms_norm",
        "lnorm.torch.rms_norm",
        "lnorm.numpy.rms_norm",
    }
    assert "lnorm.numpy" in capsys.readouterr().out


def test_gpu_benchmark_code_runs_on_the_interpreter(tmp_path) -> None:
    # The GPU path, exercised on the CPU through Triton's interpreter with a wall-clock timer
    # (and without torch.compile, which would need a long C++ build here).
    def wall_clock_ms(run) -> float:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1e3

    results = lnorm.bench.measure_gpu(
        torch.device("cpu"),
        rows=4,
        row_lengths=[8],
        dtypes=[torch.float16, torch.float32],
        implementations=lnorm.bench.gpu_implementations(compile_torch=False),
        time_ms=wall_clock_ms,
        peak_gbs=100.0,
    )
    assert len(results) == 2 * 2 * 2  # dtypes x implementations x passes
    assert {r["pass_"] for r in results} == {"forward", "forward+backward"}
    assert all(
        r["bytes"]
        == (2 if r["pass_"] == "forward" else 5) * 4 * 8 * (2 if r["dtype"] == "float16" else 4)
        for r in results
    )
    lnorm.bench.write_csv(str(tmp_path / "gpu.csv"), results)
    assert "fraction_of_peak" in (tmp_path / "gpu.csv").read_text().splitlines()[0]
