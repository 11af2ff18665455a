"""Compile lnorm.triton's kernels for an H100 without a GPU, and read what the GPU would run.

Triton compiles for a GPU target on any machine: ``triton.compile`` lowers a kernel to PTX (the
GPU's portable assembly) and Triton's wheel ships NVIDIA's ``ptxas``, which assembles PTX for a
given architecture and reports the registers each thread uses and the bytes it spills to local
memory. This module compiles every kernel the dispatcher of :mod:`lnorm.triton` would launch for a
given dtype and row length, with the argument types and divisibility hints Triton's launcher would
derive, and reads from the PTX

- the widest global load and store, in bits per thread (128: ``ld.global.v4.b32``, four 32-bit
  words at once; 16: one half-precision element at a time);
- whether a row offset ``row * stride`` is formed in 64 bits, safe past 2**31 elements: a 64-bit
  multiply (``mul.lo.s64``) or a widening multiply of two registers (``mul.wide.s32 %rd, %r, %r``).
  A 32-bit product widened afterwards (``mul.lo.s32`` then ``mul.wide.s32 %rd, %r, 2``, the
  element size) has already wrapped.

``python -m lnorm.bench --ptx DIR`` writes the PTX files and prints the table.
"""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The compile-only check's cases (issue 13): every dtype the kernels load, row lengths of
#: transformer layers.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ROW_LENGTHS = (512, 1024, 4096, 8192, 16384, 32768)
#: Streaming multiprocessors of an H100 SXM, for the backward pass's program count.
H100_SM_COUNT = 132

_POINTER_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}
_DIVISIBLE_BY_16 = [["tt.divisibility", 16]]


@dataclass(frozen=True)
class CompiledKernel:
    """What ptxas and the PTX say about one compiled kernel."""

    kernel: str
    dtype: str
    row_length: int
    registers: int
    spill_bytes: int  # stores + loads to local memory, per thread
    widest_load_bits: int
    widest_store_bits: int
    int64_address: bool
    num_warps: int
    rows_per_program: int
    ptx: str = field(repr=False)


def signature_of(kernel, args: dict, constants: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``triton.compiler.ASTSource``, as Triton's launcher
    would specialize these argument values: tensors become typed pointers assumed 16-byte
    aligned (torch's allocations are); an int equal to 1 becomes the constant 1; an int
    divisible by 16 gets the divisibility hint that lets loads vectorize; parameters marked
    ``do_not_specialize`` get neither."""
    signature, constexprs, attrs = {}, dict(constants), {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if name in constants:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _POINTER_TYPES[value.dtype]
            attrs[(index,)] = _DIVISIBLE_BY_16
        elif isinstance(value, float):
            signature[name] = param.annotation_type or "fp32"
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[name] = "constexpr"
                constexprs[name] = 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(index,)] = _DIVISIBLE_BY_16
        else:
            raise TypeError(f"{name}: cannot type a {type(value).__name__}")
    return signature, constexprs, attrs


def compile_to_ptx(kernel, args: dict, constants: dict, num_warps: int, capability: int = 90) -> str:
    """The PTX of ``kernel`` for an NVIDIA GPU of this compute capability (90: H100)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not hasattr(kernel, "params"):
        raise RuntimeError(
            "lnorm.ptx compiles kernels for a GPU: import lnorm.triton without TRITON_INTERPRET=1 "
            "(the interpreter replaces the kernels by Python functions)"
        )
    fn = kernel
    signature, constexprs, attrs = signature_of(fn, args, constants)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", capability, 32), options=dict(num_warps=num_warps)
    )
    return compiled.asm["ptx"]


def ptxas_path() -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(bundled) if bundled.exists() else (shutil.which("ptxas") or "ptxas")


def register_usage(ptx: str, arch: str = "sm_90a") -> tuple[int, int]:
    """(registers per thread, spilled bytes per thread: stores + loads) from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run(
            [ptxas_path(), "-v", "--gpu-name", arch, str(source), "-o", str(source.with_suffix(".cubin"))],
            capture_output=True,
            text=True,
            check=True,
        )
    report = result.stdout + result.stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    return registers, spills


_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[a-z0-9_]+)*)")


def widest_access_bits(ptx: str, op: str) -> int:
    """The widest global ``ld`` or ``st`` (op) in bits: vector width times element width."""
    widest = 0
    for match in _ACCESS.finditer(ptx):
        if match.group(1) != op:
            continue
        parts = match.group(2).split(".")
        lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bfsu]\d+", p)), 0)
        widest = max(widest, lanes * bits)
    return widest


_WIDE_PRODUCT = re.compile(
    r"\b(?:mul|mad)\.lo\.[su]64\b|\b(?:mul|mad)\.wide\.[su]32\s+%rd\d+,\s*%r\d+,\s*%r\d+"
)


def has_int64_address(ptx: str) -> bool:
    """True when the PTX forms a product of two runtime integers in 64 bits (a row offset)."""
    return _WIDE_PRODUCT.search(ptx) is not None


def inspect_launch(launch, dtype: torch.dtype, row_length: int) -> CompiledKernel:
    """Compile one launch of lnorm.triton (a KernelLaunch) and read its PTX."""
    ptx = compile_to_ptx(launch.kernel, launch.args, launch.constants, launch.num_warps)
    registers, spills = register_usage(ptx)
    return CompiledKernel(
        kernel=launch.name,
        dtype=str(dtype).removeprefix("torch."),
        row_length=row_length,
        registers=registers,
        spill_bytes=spills,
        widest_load_bits=widest_access_bits(ptx, "ld"),
        widest_store_bits=widest_access_bits(ptx, "st"),
        int64_address=has_int64_address(ptx),
        num_warps=launch.num_warps,
        rows_per_program=launch.rows_per_program,
        ptx=ptx,
    )


def dispatched_launches(dtype: torch.dtype, row_length: int, rows: int = 1 << 16) -> list:
    """Every kernel launch lnorm.triton makes for a forward and backward pass over ``rows`` rows of
    ``row_length`` elements, LayerNorm with weight and bias and RMSNorm with weight, on an H100
    (tensors on the meta device: shapes and strides, no memory). RMSNorm's column sum is the same
    kernel with the same constants as LayerNorm's, so it is compiled once."""
    import lnorm.triton as kernels

    meta = dict(device="meta")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.empty(rows, row_length, dtype=dtype, **meta)
    weight, bias = torch.empty(row_length, dtype=dtype, **meta), torch.empty(row_length, dtype=dtype, **meta)
    mean_hi, mean_lo, rstd = (torch.empty(rows, dtype=work, **meta) for _ in range(3))
    forward = kernels.forward_launch(x, torch.empty_like(x), weight, bias, mean_hi, mean_lo, rstd, 1e-5)
    backward = kernels.backward_launches(
        torch.empty_like(x), x, weight, mean_hi, mean_lo, rstd, torch.empty_like(x),
        torch.empty_like(weight), torch.empty_like(bias), compute_dx=True, sm_count=H100_SM_COUNT,
    )
    rms_forward = kernels.rms_forward_launch(x, torch.empty_like(x), weight, rstd, 1e-6)
    rms_backward = kernels.rms_backward_launches(
        torch.empty_like(x), x, weight, rstd, torch.empty_like(x), torch.empty_like(weight),
        compute_dx=True, sm_count=H100_SM_COUNT,
    )
    launches = [forward, *backward]
    for launch in [rms_forward, *rms_backward]:
        if not any(_same_compile(launch, other) for other in launches):
            launches.append(launch)
    return launches


def _same_compile(a, b) -> bool:
    """Whether two launches compile to the same code: one kernel, the same constants and warps,
    and arguments Triton would specialize alike."""
    return (
        a.kernel is b.kernel
        and a.constants == b.constants
        and a.num_warps == b.num_warps
        and signature_of(a.kernel, a.args, a.constants) == signature_of(b.kernel, b.args, b.constants)
    )


def compile_all(
    out_dir: str | Path | None = None,
    dtypes=DTYPES,
    row_lengths=ROW_LENGTHS,
    launches=dispatched_launches,
) -> list[CompiledKernel]:
    """Compile every dispatched kernel for each dtype and row length; write each PTX to
    ``out_dir/<kernel>-<dtype>-<N>.ptx`` when a folder is given."""
    results = []
    for dtype in dtypes:
        for n in row_lengths:
            for launch in launches(dtype, n):
                compiled = inspect_launch(launch, dtype, n)
                results.append(compiled)
                if out_dir is not None:
                    Path(out_dir).mkdir(parents=True, exist_ok=True)
                    name = f"{compiled.kernel}-{compiled.dtype}-{n}.ptx"
                    (Path(out_dir) / name).write_text(compiled.ptx)
    return results


TABLE_COLUMNS = (
    "kernel", "dtype", "row_length", "registers", "spill_bytes",
    "widest_load_bits", "widest_store_bits", "int64_address", "num_warps", "rows_per_program",
)


def table_rows(results: list[CompiledKernel]) -> list[dict]:
    return [{column: getattr(r, column) for column in TABLE_COLUMNS} for r in results]


def format_table(results: list[CompiledKernel]) -> str:
    header = f"{'kernel':<20}{'dtype':<10}{'N':>7}{'regs':>6}{'spill B':>9}{'load b':>8}{'store b':>9}{'int64':>7}{'warps':>7}{'rows/prog':>10}"
    lines = [header]
    for r in results:
        lines.append(
            f"{r.kernel:<20}{r.dtype:<10}{r.row_length:>7}{r.registers:>6}{r.spill_bytes:>9}"
            f"{r.widest_load_bits:>8}{r.widest_store_bits:>9}{str(r.int64_address):>7}"
            f"{r.num_warps:>7}{r.rows_per_program:>10}"
        )
    return "\n".join(lines)
