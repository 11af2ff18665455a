"""What the diagnose tests share: the array operations and reduction axes their hand-written
LayerNorm and RMSNorm are written against (so that each bug exists in torch and NumPy in the
same words), and a runner for the command line ``python -m lnorm.diagnose``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

SRC = Path(__file__).resolve().parents[1] / "src"

#: An array of either framework.
Array = torch.Tensor | np.ndarray


class Ops:
    """The operations a hand-written LayerNorm or RMSNorm uses, in torch or in NumPy."""

    def __init__(self, framework: str):
        self.torch = framework == "torch"

    def mean(self, x: Array, dims: tuple[int, ...]) -> Array:
        return x.mean(dim=dims, keepdim=True) if self.torch else x.mean(axis=dims, keepdims=True)

    def var(self, x: Array, dims: tuple[int, ...], unbiased: bool) -> Array:
        """The variance over ``dims``, divided by N - 1 when ``unbiased`` (Bessel's correction)."""
        if self.torch:
            return x.var(dim=dims, keepdim=True, correction=int(unbiased))
        return x.var(axis=dims, keepdims=True, ddof=int(unbiased))

    def global_mean(self, x: Array) -> Array:
        """The mean of the whole batch, every row together."""
        return x.mean()

    def sqrt(self, x: Array) -> Array:
        return torch.sqrt(x) if self.torch else np.sqrt(x)

    def rsqrt(self, x: Array) -> Array:
        return torch.rsqrt(x) if self.torch else 1 / np.sqrt(x)

    def float32(self, x: Array) -> Array:
        return x.float() if self.torch else x.astype(np.float32)

    def cast(self, x: Array, like: Array) -> Array:
        """``x`` in the dtype of ``like``."""
        return x.to(like.dtype) if self.torch else x.astype(like.dtype)

    def machine_eps(self, x: Array) -> float:
        """The machine epsilon of ``x``'s dtype."""
        return float(torch.finfo(x.dtype).eps if self.torch else np.finfo(x.dtype).eps)

    def largest_magnitude(self, x: Array) -> float:
        """max|x|, or 1 for an empty array."""
        if (x.numel() if self.torch else x.size) == 0:
            return 1.0
        return float(x.abs().max()) if self.torch else float(np.max(np.abs(x)))

    def zero_(self, x: Array) -> None:
        """Overwrite ``x`` with zeros, in place (a function that mutates its input)."""
        x[...] = 0


def reduction_axes(bug: str, x: Array, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """The axes a hand-written norm takes its statistics over: the trailing ``normalized_shape``
    ones, or the wrong ones that the axis mistakes ``channels_axis``, ``batch_axis`` and
    ``last_axis_only`` pick."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    if bug == "channels_axis" and x.ndim == 3:  # a port from a channels-first layout
        return (1,)
    if bug == "batch_axis":  # numpy's reductions over axis 0
        return (0,)
    if bug == "last_axis_only":
        return (-1,)
    return tuple(range(-len(shape), 0))


def run_cli(tmp_path: Path, source: str, name: str, *flags: str) -> subprocess.CompletedProcess:
    """``python -m lnorm.diagnose FILE:name *flags`` on ``source`` written to a file: the
    command line as a reader runs it on their own code."""
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "lnorm.diagnose", f"{path}:{name}", *flags],
        capture_output=True, text=True, env=env, timeout=300,
    )
