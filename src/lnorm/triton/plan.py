"""The launch plan of lnorm.triton: how rows are tiled, how many programs run, and each launch.

Small functions, so that every caller (the operator layer, ``lnorm.ptx``'s compile-only check,
``python -m lnorm.bench --traffic``) makes the same choices. A :class:`KernelLaunch` is one kernel
launch as the dispatcher makes it, its arguments by name.

The tunable constants below are read at call time, so that setting ``lnorm.triton.MAX_BLOCK_BYTES``
(the package forwards it here) changes the next launch: the tests shrink it to force the looped
path on short rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lnorm.triton import kernels

#: The largest row segment one program holds at once: 64 KiB of input, as in Triton's tutorial.
MAX_BLOCK_BYTES = 1 << 16
#: Elements of one loaded [rows, columns] tile a thread may hold: enough in flight to saturate
#: memory, few enough that no kernel spills registers (checked by lnorm.ptx for an H100).
FORWARD_ELEMENTS_PER_THREAD = 16
BACKWARD_ELEMENTS_PER_THREAD = 16
#: The longest block each pass holds in registers (also capped at MAX_BLOCK_BYTES of input):
#: longer rows are walked in blocks of this size, and read twice.
FORWARD_MAX_BLOCK = 16384
BACKWARD_MAX_BLOCK = 8192
#: The backward pass keeps Kahan carries of its partial gradients in registers when its block
#: has at most this many bytes of input (bfloat16 rows up to 8192, float32 up to 4096: a program
#: of 16 warps then holds x, dy, the weight and four accumulators without spilling). Larger
#: blocks add the tiles plainly, and the plan starts enough programs that none adds more than
#: MAX_TILES_WITHOUT_CARRY tiles: the error of its partial sum is then at most
#: (MAX_TILES_WITHOUT_CARRY - 1 + log2 BLOCK_M) u sum|terms| rather than about 2u.
KAHAN_MAX_BLOCK_BYTES = 1 << 14
MAX_TILES_WITHOUT_CARRY = 32
#: ... but never more programs than this, so that the partial buffer stays small beside the rows;
#: past MAX_PARTIALS * MAX_TILES_WITHOUT_CARRY tiles (65536 rows of 8192 float32 elements), a
#: program adds more tiles than MAX_TILES_WITHOUT_CARRY.
MAX_PARTIALS = 2048
#: Short rows are grouped so that one program's tile has up to this many elements.
TILE_ELEMENTS = 4096
MAX_ROWS_PER_PROGRAM = 16
#: Warps of one program (a GPU block may have 32; at 16 a thread may use 128 registers, and
#: rows of 16384 in the forward, 8192 in the backward, fit without spilling).
MAX_WARPS = 16
#: Programs are persistent: each loops over tiles. On a GPU a pass starts enough programs that
#: about WARPS_PER_SM warps are resident on each streaming multiprocessor (an H100 holds up to
#: 64), at most MAX_PROGRAMS_PER_SM of them; the interpreter runs INTERPRETER_PROGRAMS.
WARPS_PER_SM = 32
MAX_PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 16


@dataclass(frozen=True)
class Tiling:
    """How a kernel walks its rows: ``rows_per_program`` rows per tile, ``block`` columns per
    block (a power of two), whether a whole row fits in one block, and the warps per program."""

    block: int
    one_block: bool
    rows_per_program: int
    num_warps: int


def block_size(
    n_cols: int, element_size: int, max_elements: int = FORWARD_MAX_BLOCK
) -> tuple[int, bool]:
    """The column block (the next power of two of the row, capped at MAX_BLOCK_BYTES of input
    and at max_elements) and whether a whole row fits in it."""
    max_block = max(1, min(MAX_BLOCK_BYTES // element_size, max_elements))
    block = min(max_block, triton.next_power_of_2(max(n_cols, 1)))
    return block, n_cols <= block


def rows_per_program(
    block: int, one_block: bool, n_rows: int, tile_elements: int = TILE_ELEMENTS
) -> int:
    """Rows per tile: several short rows (a tile of up to tile_elements), one long row."""
    if not one_block:
        return 1
    rows = max(1, min(MAX_ROWS_PER_PROGRAM, tile_elements // block))
    return min(rows, triton.next_power_of_2(max(n_rows, 1)))


def num_warps(tile_elements: int, elements_per_thread: int) -> int:
    """Warps per program: enough that each of the 32 threads of a warp holds at most
    ``elements_per_thread`` elements of a tile, between 1 and MAX_WARPS (the interpreter
    ignores it)."""
    warps = triton.next_power_of_2(max(1, tile_elements // (32 * elements_per_thread)))
    return max(1, min(MAX_WARPS, warps))


def tiling(n_cols: int, element_size: int, n_rows: int, elements_per_thread: int,
           max_elements: int) -> Tiling:
    """The tiling of one pass; float64 elements take two registers each, so half as many a thread
    and half as large a tile."""
    tile_elements = TILE_ELEMENTS
    if element_size == 8:
        elements_per_thread, tile_elements = elements_per_thread // 2, tile_elements // 2
    block, one_block = block_size(n_cols, element_size, max_elements)
    rows = rows_per_program(block, one_block, n_rows, tile_elements)
    return Tiling(block, one_block, rows, num_warps(rows * block, elements_per_thread))


def program_count(n_tiles: int, device: torch.device, warps: int = MAX_WARPS,
                  sm_count: int | None = None) -> int:
    """Programs of a persistent pass: on a GPU, up to MAX_PROGRAMS_PER_SM per streaming
    multiprocessor, as many as keep about WARPS_PER_SM warps resident (``sm_count`` overrides
    the device's, for compiling without a GPU); INTERPRETER_PROGRAMS in the interpreter; never
    more than there are tiles."""
    if sm_count is None and device.type == "cuda":
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    if sm_count is None:
        available = INTERPRETER_PROGRAMS
    else:
        available = sm_count * max(1, min(MAX_PROGRAMS_PER_SM, WARPS_PER_SM // warps))
    return max(1, min(n_tiles, available))


def backward_program_count(n_tiles: int, device: torch.device, warps: int = MAX_WARPS) -> int:
    """Programs of the backward pass (:func:`program_count`): each loops over tiles, keeping the
    weight and its partial parameter gradients in registers, and writes them once."""
    return program_count(n_tiles, device, warps)


#: Partial rows the column sum adds by one pairwise tree (chunks of them are added by Kahan's
#: compensated summation).
COLUMN_SUM_CHUNK = 64


def column_sum_tiling(n_partials: int, n_cols: int, element_size: int = 4) -> Tiling:
    """The tiling of _column_sum_kernel: chunks of up to COLUMN_SUM_CHUNK partial rows
    (``rows_per_program``, a power of two) by as many columns (``block``) as keep the tile at
    TILE_ELEMENTS (half as many of float64), at most 8 elements a thread (4 of float64)."""
    partials = min(COLUMN_SUM_CHUNK, triton.next_power_of_2(max(n_partials, 1)))
    tile_elements = TILE_ELEMENTS // (2 if element_size == 8 else 1)
    columns = min(triton.next_power_of_2(max(n_cols, 1)), max(16, tile_elements // partials))
    warps = num_warps(partials * columns, 4 if element_size == 8 else 8)
    return Tiling(columns, False, partials, warps)


def alignment(*sizes: int) -> int:
    """The largest power of two up to 16 that divides every size (row length, row strides), in
    elements: what the kernels may declare with tl.multiple_of."""
    for align in (16, 8, 4, 2):
        if all(size % align == 0 for size in sizes):
            return align
    return 1


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch as the dispatcher makes it: the kernel, its runtime arguments by name
    (a tensor, or an int/float scalar), its compile-time constants, the grid and warps."""

    name: str
    kernel: object
    args: dict
    constants: dict
    grid: tuple[int, ...]
    num_warps: int
    rows_per_program: int

    def __call__(self) -> None:
        self.kernel[self.grid](**self.args, **self.constants, num_warps=self.num_warps)


def compute_dtype(dtype: torch.dtype):
    """The Triton dtype the kernels compute in for statistics of this torch dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pointer(param: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """A tensor to pass where a kernel expects a pointer; unused when param is None."""
    return fallback if param is None else param


def forward_launch(x_rows, y, weight, bias, mean_hi, mean_lo, rstd, eps: float,
                   sm_count: int | None = None) -> KernelLaunch:
    """The forward kernel over the rows of x_rows; ``mean_hi`` and ``mean_lo`` None for RMSNorm
    (not centred). ``sm_count`` overrides the device's (for compiling without a GPU)."""
    n_rows, n_cols = x_rows.shape
    centred = mean_hi is not None
    t = tiling(n_cols, x_rows.element_size(), n_rows, FORWARD_ELEMENTS_PER_THREAD,
               FORWARD_MAX_BLOCK)
    programs = program_count(triton.cdiv(n_rows, t.rows_per_program), x_rows.device,
                             t.num_warps, sm_count)
    return KernelLaunch(
        "forward" if centred else "rms_forward",
        kernels._forward_kernel,
        dict(x_ptr=x_rows, y_ptr=y, weight_ptr=_pointer(weight, x_rows),
             bias_ptr=_pointer(bias, x_rows), mean_hi_ptr=_pointer(mean_hi, rstd),
             mean_lo_ptr=_pointer(mean_lo, rstd), rstd_ptr=rstd, n_rows=n_rows, n_cols=n_cols,
             x_row_stride=x_rows.stride(0), y_row_stride=y.stride(0), eps=float(eps)),
        dict(CENTRED=centred, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
             COMPUTE=compute_dtype(rstd.dtype), BLOCK_M=t.rows_per_program, BLOCK_N=t.block,
             ONE_BLOCK=t.one_block, ALIGN=alignment(n_cols, x_rows.stride(0), y.stride(0))),
        (programs,),
        t.num_warps,
        t.rows_per_program,
    )


def rms_forward_launch(x_rows, y, weight, rstd, eps: float,
                       sm_count: int | None = None) -> KernelLaunch:
    """The forward kernel, not centred: RMSNorm."""
    return forward_launch(x_rows, y, weight, None, None, None, rstd, eps, sm_count)


def backward_plan(x_rows: torch.Tensor, sm_count: int | None = None,
                  weight: torch.Tensor | None = None) -> tuple[Tiling, int]:
    """The tiling of a backward pass over x_rows, and its number of programs."""
    n_rows, n_cols = x_rows.shape
    t = tiling(n_cols, x_rows.element_size(), n_rows, BACKWARD_ELEMENTS_PER_THREAD,
               BACKWARD_MAX_BLOCK // (2 if x_rows.element_size() == 8 else 1))
    return t, _backward_programs(t, n_rows, x_rows, sm_count, weight)


def _held_element_size(x_rows: torch.Tensor, weight: torch.Tensor | None) -> int:
    return max(x_rows.element_size(), 0 if weight is None else weight.element_size())


def _backward_programs(t: Tiling, n_rows: int, x_rows: torch.Tensor, sm_count: int | None,
                       weight: torch.Tensor | None) -> int:
    n_tiles = triton.cdiv(n_rows, t.rows_per_program)
    if sm_count is None:
        programs = backward_program_count(n_tiles, x_rows.device, t.num_warps)
    else:
        programs = program_count(n_tiles, x_rows.device, t.num_warps, sm_count)
    if not kahan_carries(t, _held_element_size(x_rows, weight)):
        programs = max(programs, min(MAX_PARTIALS, triton.cdiv(n_tiles, MAX_TILES_WITHOUT_CARRY)))
    return programs


def kahan_carries(t: Tiling, element_size: int) -> bool:
    """Whether the backward keeps Kahan carries of its partial gradients in registers (the
    looped path keeps them in its partial buffer); ``element_size`` the larger of the input's
    and the weight's (a float32 weight held in registers takes twice a bfloat16 one's room)."""
    return not t.one_block or t.block * element_size <= KAHAN_MAX_BLOCK_BYTES


def backward_launches(dy_rows, x_rows, weight, mean_hi, mean_lo, rstd, dx, dweight, dbias,
                      compute_dx: bool, sm_count: int | None = None) -> list[KernelLaunch]:
    """The backward kernel's launches, then one column sum for the parameter gradients asked for
    (``dweight``, ``dbias``: output tensors, or None when not wanted). ``mean_hi`` and
    ``mean_lo`` None for RMSNorm (not centred; ``dbias`` None). The partial buffer is
    allocated here, uninitialised: every program writes its own rows of it.

    Rows of up to BACKWARD_MAX_BLOCK elements: one launch, x and dy read once. Rows longer than
    that but within the forward's block (16384; not in float64) take two launches of the same
    kernel, each reading x and dy once: one computes dx with the whole row in registers, without
    the parameter gradients' accumulators, the other the parameter gradients over column blocks
    (``split``, 5 row reads or writes instead of 3). Longer rows: the looped path (x and dy read
    twice, partial sums and carries read and written in the buffer for every row)."""
    n_rows, n_cols = x_rows.shape
    centred = mean_hi is not None
    prefix = "" if centred else "rms_"
    t, programs = backward_plan(x_rows, sm_count, weight)
    split = (not t.one_block and x_rows.element_size() <= 4  # float64 rows of 8192 would spill
             and block_size(n_cols, x_rows.element_size(), FORWARD_MAX_BLOCK)[1])
    if split:
        t = Tiling(t.block, True, 1, t.num_warps)
        programs = _backward_programs(t, n_rows, x_rows, sm_count, weight)
    gradients = [out for out in (dweight, dbias) if out is not None]
    rows_per_gradient = programs * (1 if t.one_block else 2)  # looped: and the Kahan carries
    partials = (
        torch.empty((len(gradients) * rows_per_gradient, n_cols), dtype=rstd.dtype,
                    device=rstd.device)
        if gradients else rstd  # unused
    )
    common = dict(dy_ptr=dy_rows, x_ptr=x_rows, weight_ptr=_pointer(weight, x_rows),
                  mean_hi_ptr=_pointer(mean_hi, rstd), mean_lo_ptr=_pointer(mean_lo, rstd),
                  rstd_ptr=rstd, dx_ptr=dx, partial_ptr=partials, n_rows=n_rows, n_cols=n_cols,
                  dy_row_stride=dy_rows.stride(0), x_row_stride=x_rows.stride(0),
                  dx_row_stride=dx.stride(0))
    constants = dict(CENTRED=centred, HAS_WEIGHT=weight is not None, COMPUTE_DX=compute_dx,
                     COMPUTE_DWEIGHT=dweight is not None, COMPUTE_DBIAS=dbias is not None,
                     COMPUTE=compute_dtype(rstd.dtype), BLOCK_M=t.rows_per_program,
                     BLOCK_N=t.block, ONE_BLOCK=t.one_block,
                     ALIGN=alignment(n_cols, dy_rows.stride(0), x_rows.stride(0), dx.stride(0)),
                     KAHAN=kahan_carries(t, _held_element_size(x_rows, weight)))
    launches = []
    if split:
        if compute_dx:
            row = tiling(n_cols, x_rows.element_size(), n_rows, FORWARD_ELEMENTS_PER_THREAD,
                         FORWARD_MAX_BLOCK)
            launches.append(KernelLaunch(
                prefix + "backward_dx", kernels._backward_kernel, dict(common),
                dict(constants, COMPUTE_DWEIGHT=False, COMPUTE_DBIAS=False, BLOCK_M=1,
                     BLOCK_N=row.block, KAHAN=True),
                (program_count(n_rows, x_rows.device, row.num_warps, sm_count), 1),
                row.num_warps, 1,
            ))
        if gradients:
            launches.append(KernelLaunch(
                prefix + "backward_parameters", kernels._backward_kernel, dict(common),
                dict(constants, COMPUTE_DX=False),
                (programs, triton.cdiv(n_cols, t.block)), t.num_warps, 1,
            ))
    else:
        launches.append(KernelLaunch(
            prefix + "backward", kernels._backward_kernel, common, constants, (programs,),
            t.num_warps, t.rows_per_program,
        ))
    if gradients:
        sums = column_sum_tiling(programs, n_cols, rstd.element_size())
        launches.append(KernelLaunch(
            prefix + "column_sum",
            kernels._column_sum_kernel,
            dict(partial_ptr=partials, dweight_ptr=_pointer(dweight, gradients[0]),
                 dbias_ptr=_pointer(dbias, gradients[0]), n_partials=programs, n_cols=n_cols,
                 gradient_stride=rows_per_gradient * n_cols),
            dict(HAS_DWEIGHT=dweight is not None, HAS_DBIAS=dbias is not None,
                 PARTIALS=sums.rows_per_program, BLOCK_N=sums.block, ALIGN=alignment(n_cols)),
            (triton.cdiv(n_cols, sums.block), len(gradients)),
            sums.num_warps,
            sums.rows_per_program,
        ))
    return launches


def rms_backward_launches(dy_rows, x_rows, weight, rstd, dx, dweight, compute_dx: bool,
                          sm_count: int | None = None) -> list[KernelLaunch]:
    """The backward kernel, not centred (RMSNorm), then the column sum of dweight if asked for."""
    return backward_launches(dy_rows, x_rows, weight, None, None, rstd, dx, dweight, None,
                             compute_dx, sm_count)
