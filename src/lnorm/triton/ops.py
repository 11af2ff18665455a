"""The operator layer of lnorm.triton: ``layer_norm`` and ``rms_norm``, their checks, and the
kernels registered as ``torch.library`` custom operators with their autograd formulas.

The registered operators (``lnorm::layer_norm_forward`` and ``..._backward``,
``lnorm::rms_norm_...``) are opaque to ``torch.compile``, which traces a model that calls them
with ``fullgraph=True`` (their fake implementations give it the output shapes and dtypes). Their
derivatives are ``setup_context``-style autograd Functions (:class:`LayerNormFunction`,
:class:`RMSNormFunction`) that call them, the form ``torch.func.grad`` needs (an operator's
``register_autograd`` is not: torch generates a Function without ``setup_context`` for it). The
backward operators have no derivative of their own: differentiating twice raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import lnorm.torch
from lnorm.triton import kernels, plan


def _check_runs_here(x: torch.Tensor) -> None:
    """A CPU tensor runs only through the interpreter: say how to switch it on."""
    if not x.is_cuda and not kernels.INTERPRETED:
        raise RuntimeError(
            f"lnorm.triton runs its kernels on a CUDA GPU, but the input is on {x.device}. To run "
            "them on the CPU through Triton's interpreter, set the environment variable "
            "TRITON_INTERPRET=1 before lnorm.triton is imported."
        )


def _as_torch_autocasts(norm, x: torch.Tensor, *params: torch.Tensor | None) -> tuple:
    """Under CUDA autocast, torch casts the inputs of some operators to float32 (layer_norm is
    on its float32 list) and returns float32: the inputs cast as torch's ``norm`` (F.layer_norm
    or F.rms_norm) would cast them, read from a one-element call of it under the same autocast
    state, so that the output dtype matches torch's whatever its lists say."""
    if not (isinstance(x, torch.Tensor) and x.is_cuda and torch.is_autocast_enabled("cuda")):
        return (x, *params)  # (the argument checks come next, and name what is wrong)
    dtype = norm(torch.ones(1, 1, dtype=x.dtype, device=x.device), (1,)).dtype
    if dtype == x.dtype:
        return (x, *params)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in (x, *params))


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions, by Triton
    kernels.

    Differentiable once in x, weight and bias. float16 and bfloat16 inputs are loaded as they
    are and computed in float32; float64 is computed in float64. Under CUDA autocast the inputs
    are cast as torch's layer_norm casts them (to float32: the result is float32, as torch's).
    """
    x, weight, bias = _as_torch_autocasts(F.layer_norm, x, weight, bias)
    normalized_shape, eps, work_dtype = lnorm.torch.checked_arguments(
        x, normalized_shape, weight, bias, eps
    )
    _check_runs_here(x)
    n_cols = _row_length(x, normalized_shape)
    return LayerNormFunction.apply(x, weight, bias, n_cols, eps, work_dtype)[0]


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMSNorm of ``x`` over its trailing ``normalized_shape`` dimensions, by Triton kernels:
    ``x / sqrt(mean(x²) + eps) * weight``.

    The semantics, errors and dtype rules of :func:`lnorm.torch.rms_norm`, which are
    ``torch.nn.functional.rms_norm``'s (``eps=None`` is the machine epsilon of the dtype computed
    in), with one exception. Differentiable once in x and weight. float16, bfloat16 and float32
    inputs are computed in float32 and rounded once, float64 in float64; a weight of any floating
    dtype is converted exactly to that dtype, which is where torch forms ``x_hat * weight`` too.
    Under CUDA autocast, the inputs are cast as torch's rms_norm casts them. The exception: a
    float64 weight with a float32 or 16-bit input. torch forms that product in
    float64, which these kernels, computing such inputs in float32, do not: it raises a
    ``TypeError`` (convert the weight to float32, or the input to float64).
    """
    x, weight = _as_torch_autocasts(F.rms_norm, x, weight)
    normalized_shape, eps, work_dtype = lnorm.torch.checked_rms_norm_arguments(
        x, normalized_shape, weight, eps
    )
    if weight is not None and weight.dtype == torch.float64 and work_dtype != torch.float64:
        raise TypeError(
            f"lnorm.triton.rms_norm computes a {str(x.dtype).removeprefix('torch.')} input in "
            "float32 and cannot form x_hat * weight in float64, as torch does for a float64 "
            "weight: pass a float32 weight, or a float64 input"
        )
    _check_runs_here(x)
    n_cols = _row_length(x, normalized_shape)
    return RMSNormFunction.apply(x, weight, n_cols, eps, work_dtype)[0]


def _row_length(x: torch.Tensor, normalized_shape: tuple[int, ...]) -> int:
    return x.shape[x.dim() - len(normalized_shape):].numel()


def rows_view(t: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """t as an (n_rows, n_cols) matrix with unit column stride: a view when the trailing
    dimensions are contiguous (any row stride), a copy only otherwise."""
    rows = t.reshape(n_rows, n_cols)
    return rows if rows.stride(1) == 1 or n_cols <= 1 else rows.contiguous()


def input_rows(x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """x as its matrix of rows of n_cols elements (no rows when n_cols is 0)."""
    n_rows = x.numel() // n_cols if n_cols else 0
    return rows_view(x, n_rows, n_cols)


def on_device(t: torch.Tensor):
    """Launch on t's GPU, whichever is current; nothing to do on the CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _statistics(x: torch.Tensor, n_cols: int, count: int, work_dtype: torch.dtype) -> list:
    n_rows = x.numel() // n_cols if n_cols else 0
    return [x.new_empty(n_rows, dtype=work_dtype) for _ in range(count)]


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# --- LayerNorm --------------------------------------------------------------------------------


@torch.library.custom_op("lnorm::layer_norm_forward", mutates_args=())
def _layer_norm_forward(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, n_cols: int,
    eps: float, work_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean_hi, mean_lo, rstd): y in x's shape (never a view of it, so that it can be
    modified in place), the statistics per row in the compute dtype."""
    rows = input_rows(x, n_cols)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean_hi, mean_lo, rstd = _statistics(x, n_cols, 3, work_dtype)
    if rows.numel():
        with on_device(x):
            plan.forward_launch(rows, y.view(rows.shape), _contiguous(weight), _contiguous(bias),
                                mean_hi, mean_lo, rstd, eps)()
    return y, mean_hi, mean_lo, rstd


@_layer_norm_forward.register_fake
def _(x, weight, bias, n_cols, eps, work_dtype):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            *_statistics(x, n_cols, 3, work_dtype))


@torch.library.custom_op("lnorm::layer_norm_backward", mutates_args=())
def _layer_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
    mean_hi: torch.Tensor, mean_lo: torch.Tensor, rstd: torch.Tensor, n_cols: int,
    wants_dx: bool, wants_dweight: bool, wants_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); a gradient not wanted is an empty tensor."""
    wanted = (wants_dx, wants_dweight, wants_dbias)
    dx, dweight, dbias = _gradient_outputs(x, (weight, bias), wanted)
    rows = input_rows(x, n_cols)
    if rows.numel() and (wants_dx or wants_dweight or wants_dbias):
        with on_device(x):
            for launch in plan.backward_launches(
                rows_view(dy, *rows.shape), rows, _contiguous(weight), mean_hi, mean_lo, rstd,
                dx.view(rows.shape) if wants_dx else rows,
                dweight if wants_dweight else None, dbias if wants_dbias else None,
                compute_dx=wants_dx,
            ):
                launch()
    elif not rows.numel():  # no rows: the sums over rows are zero
        dweight.zero_(), dbias.zero_()
    return dx, dweight, dbias


@_layer_norm_backward.register_fake
def _(dy, x, weight, bias, mean_hi, mean_lo, rstd, n_cols, wants_dx, wants_dweight, wants_dbias):
    return _gradient_outputs(x, (weight, bias), (wants_dx, wants_dweight, wants_dbias))


def _gradient_outputs(x: torch.Tensor, params: tuple, wanted: tuple) -> tuple:
    """Uninitialised gradients of x and the parameters (their shapes and dtypes); an empty
    tensor for each one not wanted."""
    tensors = (x, *params)
    return tuple(
        torch.empty(t.shape, dtype=t.dtype, device=t.device) if want and t is not None
        else x.new_empty(0)
        for t, want in zip(tensors, wanted)
    )


def _layer_norm_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, n_cols, eps, work_dtype = inputs
    _, mean_hi, mean_lo, rstd = output
    ctx.save_for_backward(x, weight, bias, mean_hi, mean_lo, rstd)
    ctx.mark_non_differentiable(mean_hi, mean_lo, rstd)
    ctx.n_cols = n_cols


def _layer_norm_autograd(ctx, dy, _mean_hi, _mean_lo, _rstd):
    x, weight, bias, mean_hi, mean_lo, rstd = ctx.saved_tensors
    wanted = (ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
              bias is not None and ctx.needs_input_grad[2])
    with torch.no_grad():  # the operator's own (generated) autograd is not functorch's
        gradients = torch.ops.lnorm.layer_norm_backward(
            dy, x, weight, bias, mean_hi, mean_lo, rstd, ctx.n_cols, *wanted)
    gradients = _once_differentiable(
        tuple(g if w else None for g, w in zip(gradients, wanted)), dy, *ctx.saved_tensors)
    return (*gradients, None, None, None)




# --- RMSNorm ----------------------------------------------------------------------------------


@torch.library.custom_op("lnorm::rms_norm_forward", mutates_args=())
def _rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor | None, n_cols: int, eps: float,
    work_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd); x_hat = x * rstd is recomputed in the backward, bit for bit."""
    rows = input_rows(x, n_cols)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    (rstd,) = _statistics(x, n_cols, 1, work_dtype)
    if rows.numel():
        with on_device(x):
            plan.rms_forward_launch(rows, y.view(rows.shape), _contiguous(weight), rstd, eps)()
    return y, rstd


@_rms_norm_forward.register_fake
def _(x, weight, n_cols, eps, work_dtype):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            *_statistics(x, n_cols, 1, work_dtype))


@torch.library.custom_op("lnorm::rms_norm_backward", mutates_args=())
def _rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor,
    n_cols: int, wants_dx: bool, wants_dweight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight); a gradient not wanted is an empty tensor."""
    dx, dweight = _gradient_outputs(x, (weight,), (wants_dx, wants_dweight))
    rows = input_rows(x, n_cols)
    if rows.numel() and (wants_dx or wants_dweight):
        with on_device(x):
            for launch in plan.rms_backward_launches(
                rows_view(dy, *rows.shape), rows, _contiguous(weight), rstd,
                dx.view(rows.shape) if wants_dx else rows, dweight if wants_dweight else None,
                compute_dx=wants_dx,
            ):
                launch()
    elif not rows.numel():
        dweight.zero_()
    return dx, dweight


@_rms_norm_backward.register_fake
def _(dy, x, weight, rstd, n_cols, wants_dx, wants_dweight):
    return _gradient_outputs(x, (weight,), (wants_dx, wants_dweight))


def _rms_norm_setup_context(ctx, inputs, output) -> None:
    x, weight, n_cols, eps, work_dtype = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.n_cols = n_cols


def _rms_norm_autograd(ctx, dy, _rstd):
    x, weight, rstd = ctx.saved_tensors
    wanted = (ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1])
    with torch.no_grad():
        gradients = torch.ops.lnorm.rms_norm_backward(dy, x, weight, rstd, ctx.n_cols, *wanted)
    gradients = _once_differentiable(
        tuple(g if w else None for g, w in zip(gradients, wanted)), dy, *ctx.saved_tensors)
    return (*gradients, None, None, None)




class LayerNormFunction(torch.autograd.Function):
    """The LayerNorm operators as a ``setup_context``-style Function: what ``torch.func.grad``
    needs (the operators' own autograd registration serves autograd and ``torch.compile``)."""

    @staticmethod
    def forward(x, weight, bias, n_cols, eps, work_dtype):
        return torch.ops.lnorm.layer_norm_forward(x, weight, bias, n_cols, eps, work_dtype)

    setup_context = staticmethod(_layer_norm_setup_context)
    backward = staticmethod(_layer_norm_autograd)


class RMSNormFunction(torch.autograd.Function):
    """The RMSNorm operators as a ``setup_context``-style Function (see LayerNormFunction)."""

    @staticmethod
    def forward(x, weight, n_cols, eps, work_dtype):
        return torch.ops.lnorm.rms_norm_forward(x, weight, n_cols, eps, work_dtype)

    setup_context = staticmethod(_rms_norm_setup_context)
    backward = staticmethod(_rms_norm_autograd)


class _NoSecondDerivative(torch.autograd.Function):
    """Passes the first derivatives through (copies, made only when a graph of them is being
    built, ``create_graph=True``), tied to the inputs they depend on (dy, x and the
    parameters), and raises if they are differentiated: the backward kernels have no derivative
    of their own."""

    @staticmethod
    def forward(count, *gradients_and_inputs):
        return tuple(g.clone() for g in gradients_and_inputs[:count])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "lnorm.triton's backward kernels have no derivative of their own: cannot "
            "differentiate twice (use lnorm.torch for higher derivatives)"
        )


def _once_differentiable(gradients: tuple, *depends_on: torch.Tensor | None) -> tuple:
    """The gradients, made to raise if differentiated again (only when grad mode is on in the
    backward, that is under create_graph=True)."""
    if not torch.is_grad_enabled():
        return gradients
    present = [g for g in gradients if g is not None]
    inputs = [t for t in depends_on if t is not None]
    wrapped = iter(_NoSecondDerivative.apply(len(present), *present, *inputs))
    return tuple(None if g is None else next(wrapped) for g in gradients)
