"""The command line, ``python -m lnorm.diagnose path/to/file.py:name [flags]``.

Exit status: 0 without findings (notes on an order of roundings included), 1 with findings,
2 for a usage error, said in one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lnorm.diagnose.checker import check
from lnorm.diagnose.subject import CAST_ORDERS

PROG = "python -m lnorm.diagnose"


class UsageError(Exception):
    """A mistake in the command line or in what it names: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def load(target: str) -> Callable:
    """The object named by ``path/to/file.py:name``; ValueError if there is none."""
    path, _, attribute = target.rpartition(":")
    if not path or not attribute:
        raise ValueError(f"expected path/to/file.py:function, got {target!r}")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise ValueError(f"cannot load {path!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    found = getattr(module, attribute, None)
    if found is None:
        raise ValueError(f"{path} has no attribute {attribute!r}")
    if isinstance(found, type):
        raise ValueError(f"{attribute} is a class: name a function, or an nn.Module instance")
    return found


def _short_name(target: str) -> str:
    """``file.py:name`` of ``path/to/file.py:name``: the report's header stays on one line."""
    path, _, attribute = target.rpartition(":")
    return f"{Path(path).name}:{attribute}"


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 768 or 8,96, got {text!r}")
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def _eps(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or None, got {text!r}")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Check a LayerNorm implementation with the signature of "
        "torch.nn.functional.layer_norm (or, with --rms, an RMSNorm with the signature of "
        "torch.nn.functional.rms_norm), or an nn.Module instance, and report its mistakes. "
        "Exit status: 0 without findings, 1 with findings, 2 for a usage error.",
    )
    p.add_argument("target", help="path/to/file.py:function (or :module_instance)")
    p.add_argument("--numpy", action="store_true", help="the function takes NumPy arrays")
    p.add_argument("--no-half", action="store_true", help="skip the float16/bfloat16 probes")
    p.add_argument(
        "--rms", action="store_true",
        help="check an RMSNorm: fn(x, normalized_shape, weight=None, eps=None)",
    )
    p.add_argument("--normalized-shape", type=_shape, metavar="N[,N...]",
                   help="the row shape: a function's probes use it; a module's default is its own")
    p.add_argument("--eps", type=_eps, default=argparse.SUPPRESS,
                   help="the eps to judge against (a module's default: its eps attribute)")
    p.add_argument("--device", default="cpu", help="run the calls on this torch device")
    p.add_argument("--cast", choices=sorted(CAST_ORDERS), default=None,
                   help="with --rms: the order the model rounds 16-bit outputs in (default torch)")
    p.add_argument("--verbose", action="store_true",
                   help="print the evidence, the tolerance's derivation and the measurements")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: returns exit status 0 without findings, 1 with; exits with status 2,
    after one line on stderr, for a usage error."""
    try:
        args = parser().parse_args(argv)
        if args.cast is not None and not args.rms:
            raise UsageError("--cast names an RMSNorm's cast order: use it with --rms")
        try:
            fn = load(args.target)
        except (ValueError, OSError, SyntaxError, ImportError) as error:
            raise UsageError(str(error)) from None
        try:
            report = check(
                fn,
                "numpy" if args.numpy else "torch",
                norm="rms" if args.rms else "layer",
                half=not args.no_half,
                normalized_shape=args.normalized_shape,
                eps=getattr(args, "eps", "unset"),
                device=args.device,
                cast=args.cast or "torch",
                name=_short_name(args.target),
            )
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as error:
            raise UsageError(str(error).splitlines()[0] if str(error) else repr(error)) from None
    except UsageError as error:  # exits, as argparse does, so that callers of main() see it too
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report.details() if args.verbose else report)
    return 0 if report.ok else 1
