"""lnorm.triton specifics: both kernel paths, autograd, and running without a GPU.

Every test of tests/test_forward.py, test_backward.py, test_bad_input.py and test_accuracy.py
runs on lnorm.triton too (it is one of conftest.BACKENDS); here, what only Triton has.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from conftest import NO_TRITON

pytest.importorskip("triton", reason=NO_TRITON)
import torch
import torch.nn.functional as F

import lnorm.triton
from conftest import autograd_backward
from gradient_tolerances import parameter_gradient_errors, within_bounds

torch_backward = autograd_backward(lambda x, shape, w, b, eps: F.layer_norm(x, shape, w, b, eps))
triton_backward = autograd_backward(lnorm.triton.layer_norm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_both_kernel_paths_match_torch(
    triton_block_bytes: int, dtype: torch.dtype, n: int
) -> None:
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
    block, one_block = lnorm.triton.block_size(100_000, 4)
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


def _gradients(layer_norm, x, weight, bias, dy, wanted=(True, True, True)):
    leaves = [t.clone().requires_grad_(w) for t, w in zip((x, weight, bias), wanted)]
    y = layer_norm(*leaves)
    return torch.autograd.grad(y, [t for t in leaves if t.requires_grad], dy)


def _triton(n):
    return lambda x, w, b: lnorm.triton.layer_norm(x, n, w, b)


def test_a_strided_input_is_read_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # every other row of a batch: a row stride of 2N, no copy before the kernel
    base = torch.randn(12, 40, dtype=torch.float64) + 5
    x = base[::2]
    assert not x.is_contiguous()
    seen = []
    original = lnorm.triton.plan.forward_launch
    monkeypatch.setattr(
        lnorm.triton.plan,
        "forward_launch",
        lambda rows, *a: seen.append(rows.data_ptr() == base.data_ptr() and rows.stride(0) == 80)
        or original(rows, *a),
    )
    weight, bias = torch.rand(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    torch.testing.assert_close(
        lnorm.triton.layer_norm(x, 40, weight, bias), F.layer_norm(x, (40,), weight, bias)
    )
    assert seen == [True]
    dy = torch.randn(12, 40, dtype=torch.float64)[1::2]  # a strided gradient too
    for ours, theirs in zip(
        _gradients(_triton(40), x, weight, bias, dy),
        _gradients(lambda *a: F.layer_norm(a[0], (40,), *a[1:]), x, weight, bias, dy),
    ):
        torch.testing.assert_close(ours, theirs)


def test_short_rows_are_tiled_several_per_program() -> None:
    tiling = lnorm.triton.tiling(512, 2, 1 << 16, lnorm.triton.FORWARD_ELEMENTS_PER_THREAD, 16384)
    assert (tiling.rows_per_program, tiling.block, tiling.one_block) == (8, 512, True)
    # 13 rows of 40: tiles of 16 rows (4096 // 64, capped), the last program's tile mostly empty
    x = torch.randn(13, 40, dtype=torch.float64) * 3 - 2
    assert lnorm.triton.forward_launch(
        x, x, None, None, *(torch.empty(13, dtype=torch.float64) for _ in range(3)), 1e-5
    ).rows_per_program == 16
    torch.testing.assert_close(lnorm.triton.layer_norm(x, 40), F.layer_norm(x, (40,)))


def test_backward_programs_without_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # more programs than tiles: the extra programs write zero partial sums
    monkeypatch.setattr(
        lnorm.triton.plan, "backward_program_count", lambda tiles, device, warps: tiles + 5
    )
    generator = torch.Generator().manual_seed(3)
    x, dy = (torch.randn(20, 24, dtype=torch.float64, generator=generator) for _ in range(2))
    weight, bias = torch.rand(24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    for ours, theirs in zip(
        _gradients(_triton(24), x, weight, bias, dy),
        _gradients(lambda *a: F.layer_norm(a[0], (24,), *a[1:]), x, weight, bias, dy),
    ):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "wanted",
    [(True, False, False), (False, True, False), (False, False, True), (False, True, True)],
)
def test_backward_computes_only_the_gradients_asked_for(
    wanted: tuple[bool, bool, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    launched = []
    original = lnorm.triton.plan.backward_launches

    def spy(*args, **kwargs):
        launches = original(*args, **kwargs)
        launched.extend((launch.name, launch.constants) for launch in launches)
        return launches

    monkeypatch.setattr(lnorm.triton.plan, "backward_launches", spy)
    x, dy = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
    weight, bias = torch.rand(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    ours = _gradients(_triton(16), x, weight, bias, dy, wanted)
    theirs = _gradients(lambda *a: F.layer_norm(a[0], (16,), *a[1:]), x, weight, bias, dy, wanted)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    kernel = dict(launched)["backward"]
    assert (kernel["COMPUTE_DX"], kernel["COMPUTE_DWEIGHT"], kernel["COMPUTE_DBIAS"]) == wanted
    # one column sum for dweight and dbias together, none when neither is wanted
    assert [name for name, _ in launched] == ["backward"] + ["column_sum"] * any(wanted[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("m, n, block_bytes", [(257, 8, None), (1000, 96, None), (300, 40, 64)])
def test_parameter_gradients_of_many_rows(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, m: int, n: int, block_bytes: int | None
) -> None:
    if block_bytes:  # rows walked in blocks: partial sums and carries in the buffers
        monkeypatch.setattr(lnorm.triton, "MAX_BLOCK_BYTES", block_bytes)
    # many tiles per program, the last tile partial: the multi-row accumulation at scale
    generator = torch.Generator().manual_seed(m)
    x = (torch.randn(m, n, generator=generator) * 2 + 3).to(dtype)
    dy = (torch.randn(m, n, generator=generator) + 0.5).to(dtype)
    weight, bias = (
        torch.rand(n, generator=generator).to(dtype),
        torch.randn(n, generator=generator).to(dtype),
    )
    ours = _gradients(_triton(n), x, weight, bias, dy)
    # the bound of each sum (tests/gradient_tolerances.py): its final rounding to the dtype and
    # the summation's growth factor times the summed magnitudes, in the compute dtype
    for ours_grad, terms in zip(ours[1:], (dy.double() * _x_hat(x), dy.double())):
        assert ours_grad.dtype == dtype
        assert within_bounds(ours_grad, dy, terms)


def _x_hat(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x_hat of the rows of x, in float64 from the (rounded) inputs."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True) + eps).sqrt()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_wrong_parameter_gradient_fails_the_bounds(dtype: torch.dtype) -> None:
    # the tolerance of the test above is tight enough to catch a zero or halved dweight
    generator = torch.Generator().manual_seed(11)
    x = (torch.randn(257, 8, generator=generator) * 2 + 3).to(dtype)
    dy = (torch.randn(257, 8, generator=generator) + 0.5).to(dtype)
    weight, bias = torch.rand(8, generator=generator).to(dtype), torch.randn(8).to(dtype)
    _, dweight, _ = _gradients(_triton(8), x, weight, bias, dy)
    terms = dy.double() * _x_hat(x)
    assert within_bounds(dweight, dy, terms)
    errors, tolerance = parameter_gradient_errors(dweight, dy, terms)
    assert (tolerance < terms.sum(0).abs() / 4).all()  # far below the gradient itself
    for wrong in (torch.zeros_like(dweight), dweight / 2, dweight * (1 + 2**-5)):
        assert not within_bounds(wrong, dy, terms)


def test_parameter_gradient_error_does_not_grow_with_the_rows() -> None:
    # chapter 6's promise for a pairwise sum: error at most log2(M) u sum|terms|; here per tile a
    # pairwise tree (log2 16), across tiles Kahan's compensated sum (2u), across programs a
    # pairwise tree (log2 16): at most 10 u sum|terms|, whatever M
    m, n = 4096, 64
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(m, n, generator=generator)
    dy = torch.randn(m, n, generator=generator) + 1.0
    weight, bias = torch.rand(n, generator=generator) + 0.5, torch.randn(n, generator=generator)
    _, dbias = _gradients(_triton(n), x, weight, bias, dy, (False, True, True))
    u = 2.0**-24
    error_units = (
        ((dbias.double() - dy.double().sum(0)).abs() / dy.double().abs().sum(0)).max() / u
    )
    assert error_units <= 10 < torch.log2(torch.tensor(m)).item()


def test_a_cpu_launch_needs_no_cuda_device_guard() -> None:
    # on a GPU the kernels launch under the input's device (torch.cuda.device); on the CPU
    # (the interpreter) there is no device to switch to
    assert isinstance(lnorm.triton.ops.on_device(torch.ones(1)), contextlib.nullcontext)


def test_rows_whose_stride_breaks_the_alignment() -> None:
    # rows of 40 inside rows of 41: a row stride of 41, so the kernels may assume nothing
    base = torch.randn(7, 41, dtype=torch.float64)
    x = base[:, :40]
    assert lnorm.triton.alignment(40, x.stride(0)) == 1
    assert lnorm.triton.alignment(40, 80) == 8 and lnorm.triton.alignment(4096, 8192) == 16
    torch.testing.assert_close(lnorm.triton.layer_norm(x, 40), F.layer_norm(x, (40,)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_rows_longer_than_the_backward_block_take_two_launches(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    # Rows within the forward's block but longer than the backward's: dx with the whole row in
    # registers, the parameter gradients over column blocks of 16 (float64: the looped path)
    monkeypatch.setattr(lnorm.triton, "BACKWARD_MAX_BLOCK", 16)
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(50, 40, generator=generator) * 2 + 3).to(dtype)
    dy = torch.randn(50, 40, generator=generator).to(dtype)
    weight, bias = torch.rand(40, generator=generator).to(dtype), torch.randn(40).to(dtype)
    launches = lnorm.triton.backward_launches(
        dy, x, weight, *(torch.empty(50) for _ in range(3)), dy, weight, bias, compute_dx=True
    )
    if dtype == torch.float64:
        assert [launch.name for launch in launches] == ["backward", "column_sum"]
        assert launches[0].constants["ONE_BLOCK"] is False
    else:
        assert [launch.name for launch in launches] == [
            "backward_dx", "backward_parameters", "column_sum"
        ]
        assert launches[1].constants["BLOCK_N"] == 16 and launches[1].grid[1] == 3
        assert launches[0].constants["BLOCK_N"] == 64  # the whole row
    ours = _gradients(_triton(40), x, weight, bias, dy)
    theirs = _gradients(
        lambda *a: F.layer_norm(a[0], (40,), *a[1:]),
        x.double(), weight.double(), bias.double(), dy.double(),
    )
    loose = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(ours[0].double(), theirs[0], **loose)  # dx
    for ours_grad, terms in zip(ours[1:], (dy.double() * _x_hat(x), dy.double())):
        assert within_bounds(ours_grad, dy, terms)


class _Block(torch.nn.Module):
    """A linear layer, LayerNorm and RMSNorm by lnorm.triton: what torch.compile must trace."""

    def __init__(self, n: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(n)
        self.linear = torch.nn.Linear(n, n, dtype=torch.float64)
        self.weight = torch.nn.Parameter(torch.rand(n, dtype=torch.float64, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(n, dtype=torch.float64, generator=generator))
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = lnorm.triton.layer_norm(self.linear(x), self.n, self.weight, self.bias)
        return lnorm.triton.rms_norm(2 * h, self.n, self.weight).pow(2).sum()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_traces_the_kernels_in_one_graph(backend: str) -> None:
    # fullgraph=True: no graph break; aot_eager also traces the backward through the operators'
    # fake implementations (inductor needs a C++ compiler here, and the GPU for Triton code)
    torch._dynamo.reset()
    block, x = _Block(16), torch.randn(4, 16, dtype=torch.float64)
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    expected = torch.autograd.grad(block(x), list(block.parameters()))
    loss = compiled(x)
    torch.testing.assert_close(loss, block(x))
    for ours, theirs in zip(torch.autograd.grad(loss, list(block.parameters())), expected):
        torch.testing.assert_close(ours, theirs)


def test_torch_func_grad() -> None:
    block, x = _Block(12), torch.randn(3, 12, dtype=torch.float64)
    parameters = {name: p.detach() for name, p in block.named_parameters()}
    grads = torch.func.grad(lambda p, x: torch.func.functional_call(block, p, (x,)))(parameters, x)
    expected = torch.autograd.grad(block(x), list(block.parameters()))
    for name, theirs in zip(parameters, expected):
        torch.testing.assert_close(grads[name], theirs)
    dx = torch.func.grad(lambda x: lnorm.triton.layer_norm(x, 12).pow(2).sum())(x)
    reference = torch.func.grad(lambda x: F.layer_norm(x, (12,)).pow(2).sum())(x)
    torch.testing.assert_close(dx, reference)


def test_the_operators_are_registered() -> None:
    x = torch.randn(3, 8, dtype=torch.float64)
    y, mean_hi, mean_lo, rstd = torch.ops.lnorm.layer_norm_forward(x, None, None, 8, 1e-5, x.dtype)
    torch.testing.assert_close(y, F.layer_norm(x, (8,)))
    torch.testing.assert_close(mean_hi + mean_lo, x.mean(-1))
    torch.library.opcheck(
        torch.ops.lnorm.rms_norm_forward,
        (x, torch.rand(8, dtype=torch.float64), 8, 1e-6, x.dtype),
        test_utils=("test_schema", "test_faketensor"),
    )
