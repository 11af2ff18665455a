"""Every backend behind one calling convention: torch tensors in, torch tensor out.

Tests are written once against ``torch.nn.functional.layer_norm`` and run on
each backend; the NumPy backend gets NumPy copies of the tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import settings

import lnorm.numpy
import lnorm.torch

# In CI the property tests draw the same examples every run, so a red CI always reproduces.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _as_numpy(value: object) -> object:
    return value.numpy() if isinstance(value, torch.Tensor) else value


def numpy_backend(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    y = lnorm.numpy.layer_norm(_as_numpy(x), normalized_shape, _as_numpy(weight), _as_numpy(bias), eps)
    return torch.from_numpy(np.asarray(y))


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "numpy": numpy_backend,
    "torch": lnorm.torch.layer_norm,
}

# The dtypes each backend accepts (NumPy has no bfloat16).
DTYPES = {
    "numpy": (torch.float16, torch.float32, torch.float64),
    "torch": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def layer_norm(backend_name: str) -> Callable[..., torch.Tensor]:
    return BACKENDS[backend_name]
