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

#: The compile-only check's cases: every dtype the kernels load (x and its parameters in the same
#: dtype), then the mixed parameter dtypes torch accepts (WEIGHT_DTYPES: 16-bit inputs with
#: float32 parameters, as mixed-precision training keeps them; RMSNorm's any weight with any
#: input, here a bfloat16 weight with a float64 or float32 input), at row lengths of transformer
#: layers.
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
WEIGHT_DTYPES = (
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float64, torch.bfloat16),
)
ROW_LENGTHS = (512, 1024, 4096, 8192, 16384, 32768)
#: An H100 SXM: streaming multiprocessors (for the program counts), registers, threads, blocks and
#: shared memory per SM, and its memory bandwidth.
H100_SM_COUNT = 132
H100_REGISTERS_PER_SM = 65536
H100_THREADS_PER_SM = 2048
H100_PROGRAMS_PER_SM = 32
H100_SHARED_BYTES_PER_SM = 228 * 1024
H100_BANDWIDTH_GBS = 3350.0
#: The model behind ``predicted_gbs``: a load's latency from DRAM, so that by Little's law the
#: GPU reaches its bandwidth only with bandwidth x latency bytes in flight (about 2.3 MB on an
#: H100, 18 KB per SM). An assumption, not a measurement.
ASSUMED_LATENCY_NS = 700.0

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
    weight_dtype: str = ""
    shared_bytes: int = 0
    programs_per_sm: int = 0  # resident at once, by registers, threads and shared memory
    warps_per_sm: int = 0
    row_access_bits: str = ""  # narrowest/widest global access of x, y, dy, dx ("128" if all)
    address_32bit_products: int = 0  # 32-bit products of two registers in a row's address
    predicted_gbs: float = 0.0  # a prediction (Little's law), not a measurement
    ptx: str = field(repr=False, default="")


def signature_of(kernel, args: dict, constants: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``triton.compiler.ASTSource``, as Triton's launcher
    would specialize these argument values: tensors become typed pointers, hinted 16-byte
    aligned when they are (torch's allocations are; a view at an odd offset is not); an int
    equal to 1 becomes the constant 1; an int divisible by 16 gets the divisibility hint that
    lets loads vectorize; parameters marked ``do_not_specialize`` get neither."""
    signature, constexprs, attrs = {}, dict(constants), {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if name in constants:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _POINTER_TYPES[value.dtype]
            if _aligned_16(value):
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


def _aligned_16(t: torch.Tensor) -> bool:
    """Whether Triton's launcher would find t's address 16-byte aligned: torch's allocations
    are, so a view is when its storage offset is (a meta tensor has no address but this)."""
    offset_aligned = t.storage_offset() * t.element_size() % 16 == 0
    return offset_aligned if t.device.type == "meta" else t.data_ptr() % 16 == 0


def compile_to_ptx(
    kernel, args: dict, constants: dict, num_warps: int, capability: int = 90
) -> str:
    """The PTX of ``kernel`` for an NVIDIA GPU of this compute capability (90: H100)."""
    return compile_kernel(kernel, args, constants, num_warps, capability)[0]


def compile_kernel(kernel, args: dict, constants: dict, num_warps: int,
                   capability: int = 90) -> tuple[str, int]:
    """(PTX, shared memory bytes per program) of ``kernel`` for this compute capability."""
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
    return compiled.asm["ptx"], int(compiled.metadata.shared)


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
            [
                ptxas_path(), "-v", "--gpu-name", arch,
                str(source), "-o", str(source.with_suffix(".cubin")),
            ],
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


#: The tensors whose every access should be 128 bits wide (the rows), by kernel argument.
ROW_POINTERS = ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr")

_OPERATION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)\s+(.*?);")
_REGISTER = re.compile(r"%\w+")
_PARAMETER = re.compile(r"_param_(\d+)\]")
_PRODUCT_32 = re.compile(r"^(?:mul|mad)\.lo\.[su]32$")


@dataclass(frozen=True)
class GlobalAccess:
    """One ``ld.global`` or ``st.global`` of a kernel's PTX: its width, the kernel argument its
    address derives from, and how many 32-bit products of two registers its address depends on
    (a row offset ``row * stride`` formed in 32 bits, which wraps past 2**31)."""

    op: str
    bits: int
    pointer: str | None
    products_32bit: int


def _access_bits(opcode: str) -> int:
    parts = opcode.split(".")
    lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
    bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bfsu]\d+", p)), 0)
    return lanes * bits


def global_accesses(ptx: str, parameters: list[str]) -> list[GlobalAccess]:
    """Every global load and store of ``ptx``, traced back through the instructions that define
    its address register (every definition: loops reassign registers) to the kernel argument it
    comes from; ``parameters`` names the PTX parameters in order (the runtime arguments)."""
    definitions: dict[str, list[tuple[str, list[str]]]] = {}
    accesses = []
    for line in ptx.splitlines():
        match = _OPERATION.match(line)
        if not match:
            continue
        opcode, operands = match.groups()
        if opcode.startswith(("ld.global", "st.global")):
            address = re.search(r"\[\s*(%\w+)", operands)
            accesses.append((opcode, address.group(1) if address else None))
            continue
        if opcode.startswith("st."):
            continue
        registers = _REGISTER.findall(operands.split("[")[0]) if "[" in operands else None
        if opcode.startswith("ld.param"):
            parameter = _PARAMETER.search(operands)
            if registers and parameter:
                definitions.setdefault(registers[0], []).append(
                    ("param", [parameters[int(parameter.group(1))]]))
            continue
        registers = _REGISTER.findall(operands)
        if registers and not operands.lstrip().startswith("{"):
            definitions.setdefault(registers[0], []).append((opcode, registers[1:]))
    result = []
    for opcode, address in accesses:
        pointers, products, seen, todo = set(), 0, set(), [address]
        while todo:
            register = todo.pop()
            if register is None or register in seen:
                continue
            seen.add(register)
            for op, sources in definitions.get(register, []):
                if op == "param":
                    pointers.add(sources[0])
                    continue
                if _PRODUCT_32.match(op) and len(sources) >= 2:  # of two registers
                    products += 1
                todo.extend(sources)
        pointer = next((p for p in pointers if p.endswith("_ptr")), None)
        result.append(GlobalAccess(opcode.split(".")[0], _access_bits(opcode), pointer, products))
    return result


def runtime_parameters(launch) -> list[str]:
    """The kernel arguments that remain PTX parameters, in order (constants are compiled in)."""
    signature, _, _ = signature_of(launch.kernel, launch.args, launch.constants)
    return [name for name, kind in signature.items() if kind != "constexpr"]


def occupancy(registers: int, num_warps: int, shared_bytes: int) -> int:
    """Programs of this kernel resident at once on one H100 SM: limited by registers (allocated
    per warp in units of 256), threads, blocks and shared memory (1 KiB reserved per block)."""
    registers_per_warp = -(-registers * 32 // 256) * 256
    limits = [
        H100_REGISTERS_PER_SM // (registers_per_warp * num_warps),
        H100_THREADS_PER_SM // (32 * num_warps),
        H100_PROGRAMS_PER_SM,
    ]
    if shared_bytes:
        limits.append(H100_SHARED_BYTES_PER_SM // (shared_bytes + 1024))
    return max(0, min(limits))


def predicted_bandwidth_gbs(launch, programs_per_sm: int) -> float:
    """A *prediction*, by Little's law: the GB/s an H100 would reach if each resident program
    had one tile's loads of its rows in flight (x; the backward x and dy), against the
    bandwidth x latency bytes the GPU needs in flight (``ASSUMED_LATENCY_NS``)."""
    rows = [launch.args[name] for name in ("x_ptr", "dy_ptr") if name in launch.args]
    if not rows:
        return 0.0
    block = launch.constants.get("BLOCK_N", 0) * launch.constants.get("BLOCK_M", 1)
    in_flight = programs_per_sm * H100_SM_COUNT * block * sum(t.element_size() for t in rows)
    needed = H100_BANDWIDTH_GBS * 1e9 * ASSUMED_LATENCY_NS * 1e-9
    return round(H100_BANDWIDTH_GBS * min(1.0, in_flight / needed), 0)


def inspect_launch(launch, dtype: torch.dtype, row_length: int,
                   weight_dtype: torch.dtype | None = None) -> CompiledKernel:
    """Compile one launch of lnorm.triton (a KernelLaunch) and read its PTX."""
    ptx, shared = compile_kernel(launch.kernel, launch.args, launch.constants, launch.num_warps)
    registers, spills = register_usage(ptx)
    accesses = global_accesses(ptx, runtime_parameters(launch))
    row_bits = sorted({a.bits for a in accesses if a.pointer in ROW_POINTERS})
    programs = occupancy(registers, launch.num_warps, shared)
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
        weight_dtype=str(weight_dtype or dtype).removeprefix("torch."),
        shared_bytes=shared,
        programs_per_sm=programs,
        warps_per_sm=programs * launch.num_warps,
        row_access_bits="/".join(str(b) for b in row_bits),
        address_32bit_products=sum(
            a.products_32bit for a in accesses if a.pointer in ROW_POINTERS),
        predicted_gbs=predicted_bandwidth_gbs(launch, programs),
        ptx=ptx,
    )


def dispatched_launches(dtype: torch.dtype, row_length: int, rows: int = 1 << 16,
                        weight_dtype: torch.dtype | None = None) -> list:
    """Every kernel launch lnorm.triton makes for a forward and backward pass over ``rows`` rows of
    ``row_length`` elements, LayerNorm with weight and bias and RMSNorm with weight (of
    ``weight_dtype``, default ``dtype``; LayerNorm only where torch accepts that weight), on an
    H100 (tensors on the meta device: shapes and strides, no memory). A launch that compiles to
    the same code as one before it is left out."""
    import lnorm.torch
    import lnorm.triton as kernels

    meta = dict(device="meta")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.empty(rows, row_length, dtype=dtype, **meta)
    weight, bias = (torch.empty(row_length, dtype=weight_dtype or dtype, **meta) for _ in range(2))
    mean_hi, mean_lo, rstd = (torch.empty(rows, dtype=work, **meta) for _ in range(3))
    sm = dict(sm_count=H100_SM_COUNT)
    launches = []
    try:
        lnorm.torch.checked_arguments(x, row_length, weight, bias, 1e-5)
    except (TypeError, ValueError):
        pass  # torch's layer_norm refuses these dtypes: no LayerNorm launch
    else:
        launches.append(kernels.forward_launch(
            x, torch.empty_like(x), weight, bias, mean_hi, mean_lo, rstd, 1e-5, **sm))
        launches.extend(kernels.backward_launches(
            torch.empty_like(x), x, weight, mean_hi, mean_lo, rstd, torch.empty_like(x),
            torch.empty_like(weight), torch.empty_like(bias), compute_dx=True, **sm))
    launches.append(kernels.rms_forward_launch(x, torch.empty_like(x), weight, rstd, 1e-6, **sm))
    launches.extend(kernels.rms_backward_launches(
        torch.empty_like(x), x, weight, rstd, torch.empty_like(x), torch.empty_like(weight),
        compute_dx=True, **sm))
    distinct = []
    for launch in launches:
        if not any(_same_compile(launch, other) for other in distinct):
            distinct.append(launch)
    return distinct


def _same_compile(a, b) -> bool:
    """Whether two launches compile to the same code: one kernel, the same constants and warps,
    and arguments Triton would specialize alike."""
    return (
        a.kernel is b.kernel
        and a.constants == b.constants
        and a.num_warps == b.num_warps
        and signature_of(a.kernel, a.args, a.constants)
        == signature_of(b.kernel, b.args, b.constants)
    )


def compile_all(
    out_dir: str | Path | None = None,
    dtypes=DTYPES,
    row_lengths=ROW_LENGTHS,
    launches=dispatched_launches,
    weight_dtypes=WEIGHT_DTYPES,
) -> list[CompiledKernel]:
    """Compile every dispatched kernel for each dtype (x and parameters alike, then each pair of
    ``weight_dtypes``) and row length; write each PTX to
    ``out_dir/<kernel>-<dtype>[-<weight dtype>]-<N>.ptx`` when a folder is given."""
    results = []
    cases = [(dtype, dtype) for dtype in dtypes] + list(weight_dtypes)
    for dtype, weight_dtype in cases:
        for n in row_lengths:
            for launch in launches(dtype, n, weight_dtype=weight_dtype):
                compiled = inspect_launch(launch, dtype, n, weight_dtype)
                results.append(compiled)
                if out_dir is not None:
                    Path(out_dir).mkdir(parents=True, exist_ok=True)
                    (Path(out_dir) / f"{ptx_name(compiled)}.ptx").write_text(compiled.ptx)
    return results


def ptx_name(compiled: CompiledKernel) -> str:
    """The file name (without .ptx) of a compiled kernel's PTX."""
    weight = "" if compiled.weight_dtype == compiled.dtype else f"-{compiled.weight_dtype}"
    return f"{compiled.kernel}-{compiled.dtype}{weight}-{compiled.row_length}"


TABLE_COLUMNS = (
    "kernel", "dtype", "weight_dtype", "row_length", "registers", "spill_bytes",
    "widest_load_bits", "widest_store_bits", "row_access_bits", "int64_address",
    "address_32bit_products", "num_warps", "rows_per_program", "shared_bytes",
    "programs_per_sm", "warps_per_sm", "predicted_gbs",
)


def table_rows(results: list[CompiledKernel]) -> list[dict]:
    return [{column: getattr(r, column) for column in TABLE_COLUMNS} for r in results]


def format_table(results: list[CompiledKernel]) -> str:
    """The table, ``predicted GB/s`` marked as the model's prediction."""
    header = (f"{'kernel':<16}{'dtype':<10}{'weight':<10}{'N':>7}{'regs':>6}{'spill B':>9}"
              f"{'rows b':>8}{'32b mul':>8}{'warps':>6}{'rows/p':>7}{'prog/SM':>8}{'warps/SM':>9}"
              f"{'GB/s (predicted)':>17}")
    lines = [header]
    for r in results:
        lines.append(
            f"{r.kernel:<16}{r.dtype:<10}{r.weight_dtype:<10}{r.row_length:>7}{r.registers:>6}"
            f"{r.spill_bytes:>9}{r.row_access_bits:>8}{r.address_32bit_products:>8}"
            f"{r.num_warps:>6}{r.rows_per_program:>7}{r.programs_per_sm:>8}{r.warps_per_sm:>9}"
            f"{r.predicted_gbs:>17.0f}"
        )
    return "\n".join(lines)
