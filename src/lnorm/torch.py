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
        if param.device != x.device:
            raise ValueError(f"{name} is on {param.device} but the input is on {x.device}")
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(
        x.shape, normalized_shape, validation.shape_of(weight), validation.shape_of(bias)
    )
    work_dtype = validation.compute_dtype(
        x.dtype, validation.dtype_of(weight), validation.dtype_of(bias)
    )
    return normalized_shape, validation.check_eps(eps), getattr(torch, work_dtype)


class LayerNormFunction(torch.autograd.Function):
    """Forward by the shifted two-pass algorithm; backward by the centred formula.

    The forward pass saves ``x_hat`` (in the working dtype) and ``rstd`` for the
    backward pass: recomputing ``x_hat`` from ``x`` and a saved mean would
    bring back the mean's rounding error that the forward pass removed.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, work_dtype):
        batch_dims = x.dim() - len(normalized_shape)
        rows = x.reshape(x.shape[:batch_dims].numel(), x.shape[batch_dims:].numel()).to(work_dtype)
        x_hat, rstd = moments.standardize(rows, eps)
        ctx.save_for_backward(
            x_hat, rstd, None if weight is None else weight.reshape(-1).to(work_dtype)
        )
        ctx.shapes = (
            x.shape,
            x.dtype,
            validation.shape_of(weight),
            validation.dtype_of(weight),
            validation.shape_of(bias),
            validation.dtype_of(bias),
        )
        # The output is computed in the input's shape (weight and bias broadcast over its
        # trailing dimensions) so that it is a new tensor, never a view of a saved one.
        y = x_hat.view(x.shape)
        if weight is None and bias is None:
            return y.to(x.dtype, copy=True)
        if weight is not None:
            y = y * weight.to(work_dtype)
        if bias is not None:
            y = y + bias.to(work_dtype)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable  # x_hat was saved without a graph: a second derivative would be wrong, so it raises
    def backward(ctx, dy):
        x_hat, rstd, weight_row = ctx.saved_tensors
        x_shape, x_dtype, weight_shape, weight_dtype, bias_shape, bias_dtype = ctx.shapes
        dy_rows = dy.reshape(x_hat.shape).to(x_hat.dtype)
        dx, dweight, dbias = gradients.layer_norm_backward_rows(dy_rows, x_hat, rstd, weight_row)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        return (
            dx.reshape(x_shape).to(x_dtype) if needs_x else None,
            dweight.reshape(weight_shape).to(weight_dtype) if needs_weight else None,
            dbias.reshape(bias_shape).to(bias_dtype) if needs_bias else None,
            None,
            None,
            None,
        )
