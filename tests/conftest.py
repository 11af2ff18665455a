"""Every backend behind one calling convention: torch tensors in, torch tensor out.

Tests are written once against ``torch.nn.functional.layer_norm`` and run on
each backend; the NumPy backend gets NumPy copies of the tensors.
"""

from __future__ import annotations

import importlib.util
import os

# Triton's interpreter runs the kernels on the CPU; it must be on before lnorm.triton is imported.
os.environ["TRITON_INTERPRET"] = "1"
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

import lnorm.numpy
import lnorm.torch

#: Triton has Linux wheels only: elsewhere its tests are skipped, with this reason.
HAVE_TRITON = importlib.util.find_spec("triton") is not None
NO_TRITON = (
    "Triton is not installed (it ships wheels for Linux only): its backend is not tested here"
)
if HAVE_TRITON:
    import lnorm.triton

# In CI the property tests draw the same examples every run, so a red CI always reproduces.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _as_numpy(value: object) -> object:
    return value.numpy() if isinstance(value, torch.Tensor) else value


def numpy_backend(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    y = lnorm.numpy.layer_norm(
        _as_numpy(x), normalized_shape, _as_numpy(weight), _as_numpy(bias), eps
    )
    return torch.from_numpy(np.asarray(y))


def _needs_triton(name: str) -> Callable[..., object]:
    """``lnorm.triton.<name>``, looked up when called, so that a missing Triton skips the test."""

    def call(*args, **kwargs):
        if not HAVE_TRITON:
            pytest.skip(NO_TRITON)
        return getattr(lnorm.triton, name)(*args, **kwargs)

    return call


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "numpy": numpy_backend,
    "torch": lnorm.torch.layer_norm,
    "triton": _needs_triton("layer_norm"),
}

# The dtypes each backend accepts (NumPy has no bfloat16).
DTYPES = {
    "numpy": (torch.float16, torch.float32, torch.float64),
    "torch": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "triton": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def layer_norm(backend_name: str) -> Callable[..., torch.Tensor]:
    return BACKENDS[backend_name]


@pytest.fixture(params=["torch", "triton"])
def torch_backend_name(request: pytest.FixtureRequest) -> str:
    """The backends that take torch tensors (and so devices) directly."""
    return request.param


@st.composite
def layer_norm_cases(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...]) -> dict:
    """An input, its normalized_shape in one of its accepted spellings, optional weight/bias,
    and eps."""
    batch_shape = draw(st.lists(st.integers(0, 4), max_size=2))
    normalized_shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    if draw(st.booleans()):  # one long row: reductions that block or tree-sum kick in
        normalized_shape = (draw(st.integers(1, 3000)),)
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 1.0, -10.0])) * scale
    shape = (*batch_shape, *normalized_shape)

    def tensor(shape: tuple[int, ...], loc: float, spread: float) -> torch.Tensor:
        return torch.from_numpy(rng.normal(loc, spread, size=shape)).to(dtype)

    spelling = draw(st.sampled_from(["tuple", "list", "size", "int"]))
    if spelling == "int" and len(normalized_shape) == 1:
        given_shape = normalized_shape[0]
    else:
        given_shape = {"tuple": tuple, "list": list, "size": torch.Size, "int": tuple}[spelling](
            normalized_shape
        )
    param_dtype_is_float32 = dtype in (torch.float16, torch.bfloat16) and draw(st.booleans())
    param = (lambda t: t.float()) if param_dtype_is_float32 else (lambda t: t)
    return dict(
        x=tensor(shape, offset, scale),
        normalized_shape=given_shape,
        weight=param(tensor(normalized_shape, 1.0, 0.5)) if draw(st.booleans()) else None,
        bias=param(tensor(normalized_shape, 0.0, 1.0)) if draw(st.booleans()) else None,
        eps=draw(st.sampled_from([1e-12, 1e-5, 1e-3, 1.0])),
    )


def numpy_backward(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    grads = lnorm.numpy.layer_norm_backward(
        _as_numpy(dy), _as_numpy(x), normalized_shape, _as_numpy(weight), _as_numpy(bias), eps
    )
    return tuple(None if g is None else torch.from_numpy(np.asarray(g)) for g in grads)


def autograd_backward(forward: Callable[..., torch.Tensor]) -> Callable[..., tuple]:
    """(dx, dweight, dbias) of ``forward`` by torch.autograd; None for absent parameters."""

    def backward(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
        leaves = [
            None if t is None else t.detach().clone().requires_grad_(True)
            for t in (x, weight, bias)
        ]
        forward(leaves[0], normalized_shape, leaves[1], leaves[2], eps).backward(dy)
        return tuple(None if t is None else t.grad for t in leaves)

    return backward


BACKWARDS: dict[str, Callable[..., tuple]] = {
    "numpy": numpy_backward,
    "torch": autograd_backward(lnorm.torch.layer_norm),
    "triton": autograd_backward(_needs_triton("layer_norm")),
}


@pytest.fixture(params=[None, 64], ids=["one-block", "looped"])
def triton_block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs a Triton test twice: with the default block size, and with blocks of 64 bytes so that
    even short rows take the kernels' looped path for rows longer than one block."""
    if not HAVE_TRITON:
        pytest.skip(NO_TRITON)
    if request.param is None:
        return lnorm.triton.MAX_BLOCK_BYTES
    monkeypatch.setattr(lnorm.triton, "MAX_BLOCK_BYTES", request.param)
    return request.param
