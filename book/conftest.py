"""nbval on machines without Triton: cells tagged ``needs-triton`` are skipped, with the reason.

Triton ships wheels for Linux only. On macOS or Windows the rest of every chapter still runs
and is checked; a cell that runs a Triton kernel carries the tag ``needs-triton`` in its
metadata, and this hook marks it skipped instead of letting it fail on the missing import.
"""

from __future__ import annotations

import importlib.util

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_TRITON:
        return
    skip = pytest.mark.skip(reason="needs Triton, which is not installed (it has Linux wheels only)")
    for item in items:
        cell = getattr(item, "cell", None)  # nbval's notebook cells carry their cell
        if cell is not None and "needs-triton" in cell.get("metadata", {}).get("tags", []):
            item.add_marker(skip)
