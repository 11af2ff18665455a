"""LayerNorm in PyTorch, written with tensor operations, with a hand-derived gradient.

The same algorithm as :mod:`lnorm.numpy` (:func:`lnorm.moments.standardize`)
and the semantics of ``torch.nn.functional.layer_norm``. It runs on any device
torch supports; weight and bias must be on the input's device. It is
differentiable through :class:`LayerNormFunction`, whose backward pass is the
formula of :mod:`lnorm.gradients`, not autograd through the forward's operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from lnorm import gradients, moments, validation


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions.

    float16 and bfloat16 inputs are computed in float32 and rounded once at the
    end; float32 and float64 are computed in their own precision. The result
    has the input's dtype, shape and device; the input is not modified. It is
    differentiable once in x, weight and bias (a second derivative raises).
    """
    normalized_shape, eps, work_dtype = checked_arguments(x, normalized_shape, weight, bias, eps)
    return LayerNormFunction.apply(x, weight, bias, normalized_shape, eps, work_dtype)


def checked_arguments(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[tuple[int, ...], float, torch.dtype]:
    """The argument checks of every torch-based backend.

    Returns normalized_shape as a tuple, eps, and the dtype to compute in.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is None:
            continue
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(param).__name__}")
        if param.device != x.device:  # RuntimeError, as torch raises
            raise RuntimeError(f"{name} is on {param.device} but the input is on {x.device}")
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(
        x.shape, normalized_shape, validation.shape_of(weight), validation.shape_of(bias)
    )
    work_dtype = validation.compute_dtype(
        x.dtype, validation.dtype_of(weight), validation.dtype_of(bias)
    )
    return normalized_shape, validation.check_eps(eps), getattr(torch, work_dtype)


class LayerNormFunction(torch.autograd.Function):
    """Forward by the corrected two-pass algorithm; backward by the centred formula.

    It saves what torch's own kernel saves: the input (no copy: autograd keeps
    it alive anyway), the mean and ``rstd`` per row, and the weight. The mean is
    kept as its two parts ``m1 + m2`` (:func:`lnorm.moments.centre_parts`), so
    that the backward pass recomputes ``x_hat = ((x - m1) - m2) * rstd`` bit for
    bit as the forward pass did: a mean rounded to one number would bring back
    the rounding error that the forward pass removed.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, work_dtype):
        rows = _rows(x, normalized_shape, work_dtype)
        centred, mean_hi, mean_lo = moments.centre_parts(rows)
        rstd = moments.reciprocal_std(centred, eps)
        ctx.save_for_backward(x, mean_hi, mean_lo, rstd, weight)
        ctx.normalized_shape, ctx.work_dtype = normalized_shape, work_dtype
        ctx.bias_shape, ctx.bias_dtype = validation.shape_of(bias), validation.dtype_of(bias)
        # Multiplied in the input's shape, so that y is a new tensor and not a view
        # (a Function may not return a view), with rstd broadcast over each row's dimensions.
        batch_shape = x.shape[: x.dim() - len(normalized_shape)]
        y = centred.view(x.shape) * rstd.view(*batch_shape, *[1] * len(normalized_shape))
        if weight is not None:
            y = y * weight.to(work_dtype)
        if bias is not None:
            y = y + bias.to(work_dtype)
        return y.to(x.dtype)

    @staticmethod
    # nothing was saved with a graph: a second derivative would be wrong, so it raises
    @once_differentiable
    def backward(ctx, dy):
        x, mean_hi, mean_lo, rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        rows = _rows(x, ctx.normalized_shape, ctx.work_dtype)
        x_hat = ((rows - mean_hi) - mean_lo) * rstd
        dy_rows = dy.reshape(x_hat.shape).to(ctx.work_dtype)
        weight_row = None if weight is None else weight.reshape(-1).to(ctx.work_dtype)
        dx, dweight, dbias = gradients.layer_norm_backward_rows(
            dy_rows, x_hat, rstd, weight_row, needs
        )
        return (
            None if dx is None else dx.reshape(x.shape).to(x.dtype),
            None if dweight is None else dweight.reshape(weight.shape).to(weight.dtype),
            None if dbias is None else dbias.reshape(ctx.bias_shape).to(ctx.bias_dtype),
            None,
            None,
            None,
        )


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMSNorm of ``x`` over its trailing ``normalized_shape`` dimensions:
    ``x / sqrt(mean(x²) + eps) * weight``.

    The semantics of ``torch.nn.functional.rms_norm``, dtypes included: any
    floating input with any floating weight. ``x_hat`` is computed in float64
    for a float64 input, else in float32; ``eps=None`` means that dtype's machine
    epsilon; ``x_hat * weight`` is formed in
    ``torch.promote_types(x_hat.dtype, weight.dtype)`` and rounded once to the
    input's dtype; the gradients have the dtypes of x and weight. Errors and
    NaN confinement as in :func:`layer_norm`. Differentiable once in x and weight.
    """
    normalized_shape, eps, work_dtype = checked_rms_norm_arguments(
        x, normalized_shape, weight, eps
    )
    return RMSNormFunction.apply(x, weight, normalized_shape, eps, work_dtype)


def checked_rms_norm_arguments(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None,
    eps: float | None,
) -> tuple[tuple[int, ...], float, torch.dtype]:
    """The argument checks of a torch-based ``rms_norm``: normalized_shape as a tuple, eps, the
    dtype to compute in."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        if weight.device != x.device:  # RuntimeError, as torch raises
            raise RuntimeError(f"weight is on {weight.device} but the input is on {x.device}")
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(x.shape, normalized_shape, validation.shape_of(weight), None)
    work_dtype = validation.rms_norm_compute_dtype(x.dtype, validation.dtype_of(weight))
    return normalized_shape, validation.rms_norm_eps(eps, work_dtype), getattr(torch, work_dtype)


class RMSNormFunction(torch.autograd.Function):
    """Forward by :func:`lnorm.moments.rms_normalize`; backward by
    :func:`lnorm.gradients.rms_norm_backward_rows`.

    The forward pass saves the input and ``rstd``; the backward pass recomputes
    ``x_hat = x * rstd`` by the same operation, so it gets the forward's values
    bit for bit. (LayerNorm saves ``x_hat`` instead: recomputing it from ``x``
    and a saved mean would bring back the mean's rounding error. RMSNorm has
    no mean, and saving ``x`` costs half the memory for 16-bit inputs.)
    """

    @staticmethod
    def forward(ctx, x, weight, normalized_shape, eps, work_dtype):
        x_hat, rstd = moments.rms_normalize(_rows(x, normalized_shape, work_dtype), eps)
        product_dtype = getattr(  # torch's promote_types(x_hat's dtype, weight's dtype)
            torch,
            validation.rms_norm_product_dtype(
                validation.dtype_name(work_dtype), validation.dtype_of(weight)
            ),
        )
        weight_row = None if weight is None else weight.reshape(-1).to(product_dtype)
        ctx.save_for_backward(x, rstd, weight_row)
        ctx.normalized_shape = normalized_shape
        ctx.weight_shape_dtype = (validation.shape_of(weight), validation.dtype_of(weight))
        # x_hat is a new tensor, saved nowhere: the output never aliases what backward needs.
        y = x_hat.view(x.shape)
        if weight is not None:
            y = y.to(product_dtype) * weight.to(product_dtype)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable  # built from saved tensors without a graph: a second derivative raises
    def backward(ctx, dy):
        x, rstd, weight_row = ctx.saved_tensors
        weight_shape, weight_dtype = ctx.weight_shape_dtype
        x_hat = _rows(x, ctx.normalized_shape, rstd.dtype) * rstd
        product_dtype = rstd.dtype if weight_row is None else weight_row.dtype
        dy_rows = dy.reshape(x_hat.shape).to(product_dtype)
        if product_dtype == rstd.dtype:
            dx, dweight = gradients.rms_norm_backward_rows(dy_rows, x_hat, rstd, weight_row)
        else:  # a float64 weight with a float32 x_hat: g = dy * weight formed in float64
            g = (dy_rows * weight_row).to(rstd.dtype)
            dx, _ = gradients.rms_norm_backward_rows(g, x_hat, rstd, None)
            dweight = moments.pairwise_column_sum(dy_rows * x_hat.to(product_dtype))
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        return (
            dx.reshape(x.shape).to(x.dtype) if needs_x else None,
            dweight.reshape(weight_shape).to(weight_dtype) if needs_weight else None,
            None,
            None,
            None,
        )


def _rows(
    x: torch.Tensor, normalized_shape: tuple[int, ...], work_dtype: torch.dtype
) -> torch.Tensor:
    """``x`` as a matrix of rows of length prod(normalized_shape), in the working dtype."""
    batch_dims = x.dim() - len(normalized_shape)
    return x.reshape(x.shape[:batch_dims].numel(), x.shape[batch_dims:].numel()).to(work_dtype)
