"""Python as a machine without Triton runs it (macOS, Windows): ``import triton`` fails.

``make without-triton`` puts this folder on PYTHONPATH, so that every process it starts (pytest,
its workers, the notebooks' kernels) imports this first. A ``None`` in ``sys.modules`` makes
``import triton`` raise ModuleNotFoundError and ``importlib.util.find_spec("triton")`` return
None, exactly as when Triton is not installed.
"""

import sys

sys.modules["triton"] = None
