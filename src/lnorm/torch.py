"""LayerNorm in PyTorch, written with tensor operations.

The same algorithm as :mod:`lnorm.numpy` (:func:`lnorm.moments.standardize`) and the semantics of ``torch.nn.functional.layer_norm``.
It runs on any device torch supports; weight and bias must be on the input's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lnorm import moments, validation


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
    has the input's dtype, shape and device; the input is not modified.
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
    validation.check_shapes(x.shape, normalized_shape, _shape(weight), _shape(bias))
    work_dtype = getattr(torch, validation.compute_dtype(x.dtype, _dtype(weight), _dtype(bias)))
    eps = validation.check_eps(eps)

    if x.numel() == 0:  # no rows, or empty rows: nothing to normalize (and no mean of nothing)
        return torch.empty_like(x)

    rows = x.reshape(-1, x.shape[-len(normalized_shape):].numel()).to(work_dtype)
    y = moments.standardize(rows, eps)
    if weight is not None:
        y = y * weight.reshape(-1).to(work_dtype)
    if bias is not None:
        y = y + bias.reshape(-1).to(work_dtype)
    return y.reshape(x.shape).to(x.dtype)


def _shape(t: torch.Tensor | None) -> torch.Size | None:
    return None if t is None else t.shape


def _dtype(t: torch.Tensor | None) -> torch.dtype | None:
    return None if t is None else t.dtype
