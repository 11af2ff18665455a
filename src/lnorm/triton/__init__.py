"""LayerNorm and RMSNorm in Triton: forward and backward kernels behind torch custom operators.

Same signatures, semantics, errors and dtype rules as :mod:`lnorm.torch` (``layer_norm``,
``rms_norm``); the algorithms are those of :mod:`lnorm.moments` (the corrected two-pass for a
row in one block, sums shifted by the first block's mean for longer rows; RMSNorm's mean of
squares) and the backward formulas those of :mod:`lnorm.gradients`, written as GPU kernels.
Three modules, by role:

- :mod:`lnorm.triton.kernels`: one forward and one backward kernel body for both norms (a
  ``CENTRED`` constant switches LayerNorm's mean on), and the column sum of the parameter
  gradients;
- :mod:`lnorm.triton.plan`: the launch plan (tiling, program counts, :class:`KernelLaunch`);
- :mod:`lnorm.triton.ops`: ``layer_norm`` and ``rms_norm``, their argument checks, and the
  kernels registered as ``torch.library`` custom operators with autograd, so that
  ``torch.compile(fullgraph=True)`` and ``torch.func.grad`` work.

How the work is shared (``tiling``): rows of up to 16384 elements (8192 in float64: a block is
also capped at ``MAX_BLOCK_BYTES``) are held in registers, in both passes, several short rows per
program as one ``[BLOCK_M, BLOCK_N]`` tile; longer rows are walked in blocks of that size and read
twice. Programs are persistent: a pass starts a few programs per streaming multiprocessor, and
each takes tiles round robin, loading the weight and bias once. The backward pass keeps each
program's partial parameter gradients in registers, adding tiles by pairwise trees and Kahan's
compensated summation, so that their error does not grow with the number of rows, and writes them
once per program; one column sum adds the programs' partials. ``lnorm.ptx`` compiles every launch
for an H100 without a GPU and checks registers, spills, access width and 64-bit addresses;
``python -m lnorm.bench --traffic`` counts the bytes each kernel moves, in the interpreter.

Where it runs:

- on a CUDA tensor, compiled for the GPU;
- on a CPU tensor, through Triton's interpreter, which runs each program of the kernel in NumPy:
  correct but slow, for testing and reading. (Its conversion of float32 to bfloat16 truncates;
  the kernels round to nearest there by hand, as a GPU does.) It must be switched on *before*
  this module is imported, because ``triton.jit`` decides at decoration time:
  ``TRITON_INTERPRET=1 python ...``, or set ``os.environ["TRITON_INTERPRET"] = "1"`` before
  ``import lnorm.triton``.
"""

import sys
import types

try:
    import triton  # noqa: F401
except ImportError as error:  # Triton ships wheels for Linux only
    raise ImportError(
        "lnorm.triton needs Triton, which is not installed (it has wheels for Linux only). "
        "lnorm.numpy and lnorm.torch work without it."
    ) from error

from lnorm.triton import kernels, ops, plan
from lnorm.triton.kernels import INTERPRETED
from lnorm.triton.ops import layer_norm, rms_norm
from lnorm.triton.plan import (
    BACKWARD_ELEMENTS_PER_THREAD,
    BACKWARD_MAX_BLOCK,
    FORWARD_ELEMENTS_PER_THREAD,
    FORWARD_MAX_BLOCK,
    MAX_BLOCK_BYTES,
    MAX_ROWS_PER_PROGRAM,
    MAX_WARPS,
    TILE_ELEMENTS,
    KernelLaunch,
    Tiling,
    alignment,
    backward_launches,
    backward_program_count,
    block_size,
    forward_launch,
    num_warps,
    program_count,
    rms_backward_launches,
    rms_forward_launch,
    rows_per_program,
    tiling,
)

__all__ = [
    "INTERPRETED", "layer_norm", "rms_norm", "kernels", "ops", "plan",
    "BACKWARD_ELEMENTS_PER_THREAD", "BACKWARD_MAX_BLOCK", "FORWARD_ELEMENTS_PER_THREAD",
    "FORWARD_MAX_BLOCK", "MAX_BLOCK_BYTES", "MAX_ROWS_PER_PROGRAM", "MAX_WARPS", "TILE_ELEMENTS",
    "KernelLaunch", "Tiling", "alignment", "backward_launches", "backward_program_count",
    "block_size", "forward_launch", "num_warps", "program_count", "rms_backward_launches",
    "rms_forward_launch", "rows_per_program", "tiling",
]

#: The launch plan's constants that a caller may change on this package (the tests and chapter
#: 8 shrink MAX_BLOCK_BYTES): setting one here sets it in :mod:`lnorm.triton.plan`, which reads
#: it at every launch.
TUNABLES = frozenset({
    "MAX_BLOCK_BYTES", "FORWARD_ELEMENTS_PER_THREAD", "BACKWARD_ELEMENTS_PER_THREAD",
    "FORWARD_MAX_BLOCK", "BACKWARD_MAX_BLOCK", "TILE_ELEMENTS", "MAX_ROWS_PER_PROGRAM",
    "MAX_WARPS",
})


class _Package(types.ModuleType):
    """This package, with its tunable constants read from and written to the plan."""

    def __getattribute__(self, name: str):
        if name in TUNABLES:
            return getattr(plan, name)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in TUNABLES:
            setattr(plan, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
