"""Accuracy targets of the float32 backends, against a float64 reference.

Error is measured in float32 eps x max|y_ref| (lnorm.errors.eps_units). Target: at
most 2 at every mean offset up to 1e6, for rows of N(offset, 1) and N(offset, 1e-2).
(torch.nn.functional.layer_norm's float32 error grows with the offset instead: chapter 4.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import BACKENDS
from lnorm import errors

TARGET = 2.0


@pytest.mark.parametrize("std", [1.0, 1e-2])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e6, -1e6])
@pytest.mark.parametrize("n", [1, 2, 7, 768, 4096, 65536])
def test_float32_error_within_two_eps_at_any_offset(
    layer_norm, backend_name: str, std: float, offset: float, n: int
) -> None:
    # Triton's interpreter runs one program per row in Python: fewer rows keep it quick.
    rows = max(2, (256 if backend_name == "triton" else 65536) // n)
    x = np.random.default_rng(n).normal(offset, std, size=(rows, n)).astype(np.float32)
    reference = errors.reference_layer_norm(x, n)
    x = torch.from_numpy(x)
    assert errors.eps_units(layer_norm(x, n), reference) <= TARGET


def test_float32_error_with_weight_and_bias(layer_norm) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1e4, 1.0, size=(64, 1024)).astype(np.float32)
    weight = rng.normal(1.0, 0.5, size=1024).astype(np.float32)
    bias = rng.normal(0.0, 1.0, size=1024).astype(np.float32)
    reference = errors.reference_layer_norm(x, 1024, weight, bias)
    y = layer_norm(torch.from_numpy(x), 1024, torch.from_numpy(weight), torch.from_numpy(bias))
    assert errors.eps_units(y, reference) <= TARGET


@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
def test_float64_results_are_near_exact(backend_name: str) -> None:
    x = np.random.default_rng(1).normal(1e6, 1.0, size=(2, 256))
    y = BACKENDS[backend_name](torch.from_numpy(x), 256).numpy()
    for row, y_row in zip(x, y):
        exact = errors.exact_layer_norm(row)
        assert np.max(np.abs(y_row - exact)) <= 4 * 2.0**-52 * np.max(np.abs(exact))
