"""LayerNorm in Triton: forward and backward kernels behind a ``torch.autograd.Function``.

Same signature, semantics, errors and dtype rules as :mod:`lnorm.torch`; the
algorithm is the shifted two-pass of :mod:`lnorm.moments` and the backward
formula that of :mod:`lnorm.gradients`, written as GPU kernels.

Where it runs:

- on a CUDA tensor, compiled for the GPU;
- on a CPU tensor, through Triton's interpreter, which runs each program of the
  kernel in NumPy: correct but slow, for testing and reading. It must be
  switched on *before* this module is imported, because ``triton.jit`` decides
  at decoration time: ``TRITON_INTERPRET=1 python ...``, or set
  ``os.environ["TRITON_INTERPRET"] = "1"`` before ``import lnorm.triton``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

import lnorm.torch
from lnorm import moments

#: True when Triton's interpreter was switched on before this module was imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: The largest row segment one program holds at once: 64 KiB of input, as in Triton's tutorial.
MAX_BLOCK_BYTES = 1 << 16


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions, by Triton kernels.

    Differentiable once in x, weight and bias. float16 and bfloat16 inputs are
    loaded as they are and computed in float32; float64 is computed in float64.
    """
    normalized_shape, eps, work_dtype = lnorm.torch.checked_arguments(
        x, normalized_shape, weight, bias, eps
    )
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError(
            f"lnorm.triton runs its kernels on a CUDA GPU, but the input is on {x.device}. To run them "
            "on the CPU through Triton's interpreter, set the environment variable TRITON_INTERPRET=1 "
            "before lnorm.triton is imported."
        )
    return TritonLayerNormFunction.apply(
        x, weight, bias, normalized_shape, eps, work_dtype
    )


# fmt: off
# --- kernels -----------------------------------------------------------------
# One program normalizes one row. A row that fits in one block (ONE_BLOCK) is
# loaded once and stays in registers for all four steps: mean, correction,
# variance, output. A longer row is walked block by block, once per step; the
# re-reads mostly hit the cache.


@triton.jit
def _load_block(row_ptr, start, n_cols, COMPUTE: tl.constexpr,
                BLOCK: tl.constexpr):
    """Columns start .. start+BLOCK-1 of a row in the compute dtype, and
    which of them lie in the row; 0 beyond the row's end."""
    cols = start + tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(COMPUTE)
    return x, cols, mask


@triton.jit
def _divide(a, count, COMPUTE: tl.constexpr):
    """a / count, correctly rounded: on a GPU float32 division is otherwise
    approximate (2 ulp)."""
    if COMPUTE == tl.float32:
        return tl.div_rn(a, count.to(tl.float32))
    else:
        return a / count.to(COMPUTE)


@triton.jit
def _reciprocal_sqrt(v, COMPUTE: tl.constexpr):
    if COMPUTE == tl.float32:
        return tl.div_rn(1.0, tl.sqrt_rn(v))
    else:
        return 1.0 / tl.sqrt(v)


@triton.jit
def _affine(x_hat, weight_ptr, bias_ptr, cols, mask, HAS_WEIGHT: tl.constexpr,
            HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr):
    y = x_hat
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols, mask=mask, other=0.0).to(COMPUTE)
    return y


# Sizes are runtime values: without do_not_specialize Triton would turn a size
# of 1 into a compile-time constant, which has no dtype to convert.
@triton.jit(do_not_specialize=["n_cols"])
def _forward_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, eps_ptr,
    mean_hi_ptr, mean_lo_ptr, rstd_ptr, n_cols,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row * n_cols
    y_row = y_ptr + row * n_cols
    eps = tl.load(eps_ptr)
    if ONE_BLOCK:
        x, cols, mask = _load_block(x_row, 0, n_cols, COMPUTE, BLOCK)
        # 1. the mean, rounded
        hi = _divide(tl.sum(x, axis=0), n_cols, COMPUTE)
        # 2. exact (Sterbenz's lemma) for rows far from zero mean
        centred = tl.where(mask, x - hi, 0.0)
        # 3. the rounding error of hi, removed
        lo = _divide(tl.sum(centred, axis=0), n_cols, COMPUTE)
        centred = tl.where(mask, centred - lo, 0.0)
        # 4. variance, rstd and the output
        var = _divide(tl.sum(centred * centred, axis=0), n_cols, COMPUTE)
        rstd = _reciprocal_sqrt(var + eps, COMPUTE)
        y = _affine(centred * rstd, weight_ptr, bias_ptr, cols, mask,
                    HAS_WEIGHT, HAS_BIAS, COMPUTE)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # the same four steps, each a walk over the row's blocks
        total = tl.zeros([BLOCK], dtype=COMPUTE)
        for start in range(0, n_cols, BLOCK):
            x, cols, mask = _load_block(x_row, start, n_cols, COMPUTE, BLOCK)
            total += x
        hi = _divide(tl.sum(total, axis=0), n_cols, COMPUTE)
        total = tl.zeros([BLOCK], dtype=COMPUTE)
        for start in range(0, n_cols, BLOCK):
            x, cols, mask = _load_block(x_row, start, n_cols, COMPUTE, BLOCK)
            total += tl.where(mask, x - hi, 0.0)
        lo = _divide(tl.sum(total, axis=0), n_cols, COMPUTE)
        total = tl.zeros([BLOCK], dtype=COMPUTE)
        for start in range(0, n_cols, BLOCK):
            x, cols, mask = _load_block(x_row, start, n_cols, COMPUTE, BLOCK)
            centred = tl.where(mask, (x - hi) - lo, 0.0)
            total += centred * centred
        var = _divide(tl.sum(total, axis=0), n_cols, COMPUTE)
        rstd = _reciprocal_sqrt(var + eps, COMPUTE)
        for start in range(0, n_cols, BLOCK):
            x, cols, mask = _load_block(x_row, start, n_cols, COMPUTE, BLOCK)
            y = _affine(((x - hi) - lo) * rstd, weight_ptr, bias_ptr, cols,
                        mask, HAS_WEIGHT, HAS_BIAS, COMPUTE)
            tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    # The mean is saved as the unevaluated sum hi + lo, so that the backward
    # pass can recompute x_hat as accurately as the forward pass did: hi + lo
    # rounded to one number would lose lo.
    tl.store(mean_hi_ptr + row, hi)
    tl.store(mean_lo_ptr + row, lo)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_block(
    x_row,
    dy_row,
    weight_ptr,
    start,
    n_cols,
    hi,
    lo,
    rstd,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """For one block of a row: x_hat (recomputed from x and the saved
    statistics), g = dy * weight, and dy."""
    x, cols, mask = _load_block(x_row, start, n_cols, COMPUTE, BLOCK)
    dy, cols, mask = _load_block(dy_row, start, n_cols, COMPUTE, BLOCK)
    x_hat = tl.where(mask, ((x - hi) - lo) * rstd, 0.0)
    g = dy
    if HAS_WEIGHT:
        g = dy * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(COMPUTE)
    return x_hat, g, dy, cols, mask


@triton.jit(do_not_specialize=["n_rows", "n_cols", "rows_per_program"])
def _backward_kernel(
    dy_ptr, x_ptr, weight_ptr, mean_hi_ptr, mean_lo_ptr, rstd_ptr, dx_ptr,
    partial_dweight_ptr, partial_dbias_ptr, n_rows, n_cols, rows_per_program,
    HAS_WEIGHT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    # Each program takes a run of rows and adds up its own partial dweight and
    # dbias in its own row of the partial buffers: no two programs write the
    # same place, so no locks are needed. The partial rows are summed pairwise
    # afterwards, in float32 (or float64).
    program = tl.program_id(0)
    first_row = program * rows_per_program
    last_row = tl.minimum(first_row + rows_per_program, n_rows)
    partial_dweight_row = partial_dweight_ptr + program * n_cols
    partial_dbias_row = partial_dbias_ptr + program * n_cols
    if ONE_BLOCK:  # the partial sums stay in registers across the rows
        dweight = tl.zeros([BLOCK], dtype=COMPUTE)
        dbias = tl.zeros([BLOCK], dtype=COMPUTE)
        for row in range(first_row, last_row):
            x_row, dy_row = x_ptr + row * n_cols, dy_ptr + row * n_cols
            hi, lo = tl.load(mean_hi_ptr + row), tl.load(mean_lo_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            x_hat, g, dy, cols, mask = _backward_block(
                x_row, dy_row, weight_ptr, 0, n_cols, hi, lo, rstd,
                HAS_WEIGHT, COMPUTE, BLOCK)
            mean_g = _divide(tl.sum(g, axis=0), n_cols, COMPUTE)
            mean_gx = _divide(tl.sum(g * x_hat, axis=0), n_cols, COMPUTE)
            dx = (g - mean_g - x_hat * mean_gx) * rstd
            dx_row = dx_ptr + row * n_cols
            tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dweight += dy * x_hat
            dbias += dy
        cols = tl.arange(0, BLOCK)
        tl.store(partial_dweight_row + cols, dweight, mask=cols < n_cols)
        tl.store(partial_dbias_row + cols, dbias, mask=cols < n_cols)
    else:  # two passes over each row; the partial sums live in the buffer
        for row in range(first_row, last_row):
            x_row, dy_row = x_ptr + row * n_cols, dy_ptr + row * n_cols
            hi, lo = tl.load(mean_hi_ptr + row), tl.load(mean_lo_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            sum_g = tl.zeros([BLOCK], dtype=COMPUTE)
            sum_gx = tl.zeros([BLOCK], dtype=COMPUTE)
            for start in range(0, n_cols, BLOCK):
                x_hat, g, dy, cols, mask = _backward_block(
                    x_row, dy_row, weight_ptr, start, n_cols, hi, lo, rstd,
                    HAS_WEIGHT, COMPUTE, BLOCK)
                sum_g += g
                sum_gx += g * x_hat
            mean_g = _divide(tl.sum(sum_g, axis=0), n_cols, COMPUTE)
            mean_gx = _divide(tl.sum(sum_gx, axis=0), n_cols, COMPUTE)
            for start in range(0, n_cols, BLOCK):
                x_hat, g, dy, cols, mask = _backward_block(
                    x_row, dy_row, weight_ptr, start, n_cols, hi, lo, rstd,
                    HAS_WEIGHT, COMPUTE, BLOCK)
                dx = (g - mean_g - x_hat * mean_gx) * rstd
                dx_row = dx_ptr + row * n_cols
                tl.store(
                    dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask
                )
                # this program's own partial row: read, add, write back
                dweight = tl.load(partial_dweight_row + cols, mask=mask)
                tl.store(
                    partial_dweight_row + cols, dweight + dy * x_hat, mask=mask
                )
                dbias = tl.load(partial_dbias_row + cols, mask=mask)
                tl.store(partial_dbias_row + cols, dbias + dy, mask=mask)


# fmt: on
# --- launching ---------------------------------------------------------------


def _launch_config(n_cols: int, element_size: int) -> tuple[int, bool]:
    """The block size (a power of two) and whether a whole row fits in one block."""
    max_block = MAX_BLOCK_BYTES // element_size
    block = min(max_block, triton.next_power_of_2(max(n_cols, 1)))
    return block, n_cols <= block


def _num_warps(block: int) -> int:
    """Warps per program: more for larger blocks, so that each thread holds
    few elements (Triton's tutorial heuristic); the interpreter ignores it."""
    return min(max(block // 256, 1), 8)


def _program_count(n_rows: int, device: torch.device) -> int:
    """How many programs share the backward pass: enough to fill the GPU, few enough that the
    partial sums stay small. (The interpreter runs programs one after another: the count only
    changes the size of the partial buffers there.)"""
    if device.type == "cuda":
        return max(
            1,
            min(
                n_rows,
                4
                * torch.cuda.get_device_properties(
                    device
                ).multi_processor_count,
            ),
        )
    return max(1, min(n_rows, 64))


class TritonLayerNormFunction(torch.autograd.Function):
    """Forward and backward by the kernels above; saves x, the two-part mean and rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, work_dtype):
        n_cols = x.shape[x.dim() - len(normalized_shape) :].numel()
        n_rows = x.numel() // n_cols if n_cols else 0
        rows = x.contiguous().reshape(n_rows, n_cols)
        y = torch.empty_like(rows)
        mean_hi, mean_lo, rstd = (
            torch.empty(n_rows, dtype=work_dtype, device=x.device)
            for _ in range(3)
        )
        if rows.numel():
            block, one_block = _launch_config(n_cols, x.element_size())
            _forward_kernel[(n_rows,)](
                rows,
                y,
                _pointer(weight, rows),
                _pointer(bias, rows),
                torch.tensor([eps], dtype=work_dtype, device=x.device),
                mean_hi,
                mean_lo,
                rstd,
                n_cols,
                HAS_WEIGHT=weight is not None,
                HAS_BIAS=bias is not None,
                COMPUTE=_triton_dtype(work_dtype),
                BLOCK=block,
                ONE_BLOCK=one_block,
                num_warps=_num_warps(block),
            )
        ctx.save_for_backward(rows, weight, bias, mean_hi, mean_lo, rstd)
        ctx.x_shape = x.shape
        return y.reshape(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        rows, weight, bias, mean_hi, mean_lo, rstd = ctx.saved_tensors
        n_rows, n_cols = rows.shape
        dy_rows = dy.contiguous().reshape(n_rows, n_cols)
        dx = torch.empty_like(rows)
        programs = _program_count(n_rows, rows.device)
        partial_dweight = torch.zeros(
            programs, n_cols, dtype=rstd.dtype, device=rows.device
        )
        partial_dbias = torch.zeros_like(partial_dweight)
        if rows.numel():
            block, one_block = _launch_config(n_cols, rows.element_size())
            _backward_kernel[(programs,)](
                dy_rows,
                rows,
                _pointer(weight, rows),
                mean_hi,
                mean_lo,
                rstd,
                dx,
                partial_dweight,
                partial_dbias,
                n_rows,
                n_cols,
                triton.cdiv(n_rows, programs),
                HAS_WEIGHT=weight is not None,
                COMPUTE=_triton_dtype(rstd.dtype),
                BLOCK=block,
                ONE_BLOCK=one_block,
                num_warps=_num_warps(block),
            )
        dweight = dbias = None
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = (
                moments.pairwise_column_sum(partial_dweight)
                .reshape(weight.shape)
                .to(weight.dtype)
            )
        if bias is not None and ctx.needs_input_grad[2]:
            dbias = (
                moments.pairwise_column_sum(partial_dbias)
                .reshape(bias.shape)
                .to(bias.dtype)
            )
        return dx.reshape(ctx.x_shape), dweight, dbias, None, None, None


def _pointer(
    param: torch.Tensor | None, fallback: torch.Tensor
) -> torch.Tensor:
    """A tensor to pass where a kernel expects a pointer; unused (HAS_WEIGHT=False) when param is None."""
    return fallback if param is None else param.contiguous()


def _triton_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32
