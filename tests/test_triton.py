"""lnorm.triton specifics: both kernel paths, autograd, and running without a GPU.

Every test of tests/test_forward.py, test_backward.py, test_bad_input.py and test_accuracy.py
runs on lnorm.triton too (it is one of conftest.BACKENDS); here, what only Triton has.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lnorm.triton
from conftest import autograd_backward

torch_backward = autograd_backward(lambda x, shape, w, b, eps: F.layer_norm(x, shape, w, b, eps))
triton_backward = autograd_backward(lnorm.triton.layer_norm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_both_kernel_paths_match_torch(triton_block_bytes: int, dtype: torch.dtype, n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    x = (torch.randn(6, n, generator=generator) * 2 + 3).to(dtype)
    weight, bias = (
        torch.rand(n, generator=generator).to(dtype),
        torch.randn(n, generator=generator).to(dtype),
    )
    dy = torch.randn(6, n, generator=generator).to(dtype)
    y = lnorm.triton.layer_norm(x, n, weight, bias)
    torch.testing.assert_close(
        y, F.layer_norm(x.double(), (n,), weight.double(), bias.double()).to(dtype)
    )
    ours = triton_backward(dy, x, n, weight, bias)
    reference = torch_backward(dy.double(), x.double(), (n,), weight.double(), bias.double())
    for actual, expected in zip(ours, reference):
        assert actual.dtype == dtype
        torch.testing.assert_close(
            actual,
            expected.to(dtype),
            atol=2e-2 if dtype == torch.bfloat16 else None,
            rtol=None if dtype != torch.bfloat16 else 2e-2,
        )


def test_a_long_row_takes_the_looped_path() -> None:
    block, one_block = lnorm.triton._launch_config(100_000, 4)
    assert (block, one_block) == (16384, False)
    x = torch.randn(2, 100_000) + 1e4
    torch.testing.assert_close(
        lnorm.triton.layer_norm(x, 100_000), F.layer_norm(x.double(), (100_000,)).float()
    )


def test_gradcheck_in_float64(triton_block_bytes: int) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
        for shape in [(3, 2, 5), (2, 5), (2, 5)]
    ]
    assert torch.autograd.gradcheck(
        lambda x, w, b: lnorm.triton.layer_norm(x, (2, 5), w, b), inputs
    )


def test_double_backward_raises_a_clear_error() -> None:
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(lnorm.triton.layer_norm(x, 4).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_parameter_gradients_sum_many_programs() -> None:
    # more rows than programs: each program adds up several rows, then the partials are summed
    x, dy = torch.randn(300, 8, dtype=torch.float64), torch.randn(300, 8, dtype=torch.float64)
    weight, bias = torch.rand(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    tiling = lnorm.triton.tiling(8, 8, 300, lnorm.triton.BACKWARD_ELEMENTS_PER_THREAD, 4096)
    tiles = -(-300 // tiling.rows_per_program)
    assert lnorm.triton.backward_program_count(tiles, x.device) < tiles
    for actual, expected in zip(
        triton_backward(dy, x, 8, weight, bias), torch_backward(dy, x, (8,), weight, bias)
    ):
        torch.testing.assert_close(actual, expected)


def test_cpu_tensor_without_the_interpreter_says_how_to_run_it() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = "import torch, lnorm.triton; lnorm.triton.layer_norm(torch.ones(2, 3), 3)"
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "set the environment variable TRITON_INTERPRET=1" in result.stderr
    assert "runs its kernels on a CUDA GPU, but the input is on cpu" in result.stderr
