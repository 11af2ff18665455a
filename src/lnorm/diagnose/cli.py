"""The command line, python -m lnorm.diagnose."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lnorm.diagnose.checker import check


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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit status 0 without findings, 1 with, 2 for a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m lnorm.diagnose",
        description="Check a LayerNorm implementation with the signature of "
        "torch.nn.functional.layer_norm (or, with --rms, an RMSNorm with the signature of "
        "torch.nn.functional.rms_norm), or an nn.Module instance, and report its mistakes. "
        "Exit status: 0 without findings, 1 with findings, 2 for a usage error.",
    )
    parser.add_argument("target", help="path/to/file.py:function (or :module_instance)")
    parser.add_argument("--numpy", action="store_true", help="the function takes NumPy arrays")
    parser.add_argument("--no-half", action="store_true", help="skip the float16/bfloat16 probes")
    parser.add_argument(
        "--rms",
        action="store_true",
        help="check an RMSNorm: fn(x, normalized_shape, weight=None, eps=None)",
    )
    args = parser.parse_args(argv)
    try:
        fn = load(args.target)
    except ValueError as error:
        parser.error(str(error))
    report = check(
        fn,
        "numpy" if args.numpy else "torch",
        norm="rms" if args.rms else "layer",
        half=not args.no_half,
        name=args.target,
    )
    print(report)
    return 0 if report.ok else 1
