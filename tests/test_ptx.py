"""The compile-only check: lnorm.triton's kernels compiled for an H100 (sm_90), without a GPU.

``python -m lnorm.bench --ptx DIR`` runs in a subprocess without TRITON_INTERPRET (the test
session switches the interpreter on, which replaces the kernels by Python functions); its CSV
is what the assertions read.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from conftest import NO_TRITON

pytest.importorskip("triton", reason=NO_TRITON)

import lnorm.ptx

#: The kernels that read and write rows (the column sums read the partial buffers).
ROW_KERNELS = ("forward", "backward", "rms_forward", "rms_backward")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ptx")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run(
        [sys.executable, "-m", "lnorm.bench", "--ptx", str(out)],
        env=environment,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = list(csv.DictReader((out / "ptx.csv").open()))
    for row in rows:
        assert (out / f"{row['kernel']}-{row['dtype']}-{row['row_length']}.ptx").exists()
    return rows


def test_every_dispatched_kernel_is_compiled_for_every_case(compiled: list[dict]) -> None:
    cases = {(r["dtype"], int(r["row_length"])) for r in compiled}
    assert cases == {
        (str(dtype).removeprefix("torch."), n)
        for dtype in lnorm.ptx.DTYPES
        for n in lnorm.ptx.ROW_LENGTHS
    }
    assert {r["kernel"] for r in compiled} == {
        "forward",
        "backward",
        "column_sum_dweight",
        "column_sum_dbias",
        "rms_forward",
        "rms_backward",  # RMSNorm's column sum is column_sum_dweight, compiled once
    }


def test_no_kernel_spills_registers(compiled: list[dict]) -> None:
    assert [r for r in compiled if int(r["spill_bytes"])] == []


def test_rows_are_read_and_written_128_bits_at_a_time(compiled: list[dict]) -> None:
    # every N of the check is a multiple of 8: one 128-bit access holds 8 16-bit or 4 32-bit values
    for r in compiled:
        if r["kernel"] in ROW_KERNELS:
            assert int(r["row_length"]) % 8 == 0
            assert (r["widest_load_bits"], r["widest_store_bits"]) == ("128", "128"), r


def test_row_offsets_are_formed_in_64_bits(compiled: list[dict]) -> None:
    assert all(r["int64_address"] == "True" for r in compiled)


def test_the_ptx_readers_on_known_lines() -> None:
    ptx = """
        ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        ld.global.b16 %rs1, [ %rd2 + 0 ];
        st.global.b16 [ %rd3 + 0 ], %rs1;
        mul.lo.s32 %r5, %r6, %r7;
        mul.wide.s32 %rd4, %r5, 2;
    """
    assert lnorm.ptx.widest_access_bits(ptx, "ld") == 128
    assert lnorm.ptx.widest_access_bits(ptx, "st") == 16
    assert not lnorm.ptx.has_int64_address(ptx)  # a 32-bit product, widened too late
    assert lnorm.ptx.has_int64_address(ptx + "mul.wide.s32 %rd5, %r8, %r9;")


def test_edge_shapes_compile_for_the_gpu() -> None:
    # Triton turns an integer argument equal to 1 into a constant: rows of one element, a single
    # row; odd lengths (no divisibility hint); multiples of 8 but not 16; rows longer than a
    # block; float64
    script = """
import torch, lnorm.ptx
for dtype in (torch.float32, torch.float64):
    for n, rows in [(1, 1), (1, 1000), (5, 1), (37, 3), (40000, 3), (776, 100), (20008, 3)]:
        for launch in lnorm.ptx.dispatched_launches(dtype, n, rows):
            compiled = lnorm.ptx.inspect_launch(launch, dtype, n)
            assert compiled.spill_bytes == 0, compiled
            if n % 8 == 0 and launch.name in ("forward", "backward", "rms_forward", "rms_backward"):
                # a multiple of 8, not of 16: Triton's own hint misses it, _aligned restates it
                assert compiled.widest_load_bits == compiled.widest_store_bits == 128, compiled
print("compiled")
"""
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "compiled" in result.stdout
