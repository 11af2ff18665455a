"""The install a reader gets: a lock that installs on every platform, and the CPU-only torch.

CI reaches PyPI only, so these tests read the files and ask make what it *would* run (`make -n`),
in a scratch copy of the Makefile, so that nothing in the real .venv is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
#: Packages that exist, or are needed, on some platforms only: their pins need an environment
#: marker, or `pip install -r requirements.txt` fails (or installs gigabytes) elsewhere.
PLATFORM_SPECIFIC = re.compile(
    r"^(nvidia-.*|cuda-.*|triton|pytorch-triton.*|appnope|pywin32|pywinpty|pyobjc.*|uvloop)$",
    re.IGNORECASE,
)
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pins() -> list[re.Match]:
    lines = [line.split(" #")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    pins = [PIN.match(line) for line in lines]
    unpinned = [line for line, pin in zip(lines, pins) if pin is None]
    assert not unpinned, f"requirements.txt pins every package exactly: {unpinned}"
    return pins


def test_platform_specific_pins_carry_a_marker() -> None:
    unmarked = [
        pin.group(0) for pin in _pins()
        if PLATFORM_SPECIFIC.match(pin.group("name")) and not pin.group("marker")
    ]
    assert not unmarked, f"pins that fail on other platforms, without a marker: {unmarked}"


def test_no_local_build_label() -> None:
    """torch==2.13.0+cpu exists on PyTorch's own index only; the lock names the version alone."""
    labelled = [pin.group(0) for pin in _pins() if "+" in pin.group("version")]
    assert not labelled, f"local build labels do not install from PyPI: {labelled}"


def test_torch_is_pinned_and_its_cuda_wheels_are_left_to_it() -> None:
    names = {pin.group("name").lower(): pin for pin in _pins()}
    assert "torch" in names
    assert not [name for name in names if name.startswith(("nvidia-", "cuda-"))]


def _make_dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """What `make -n ARGS` would run, in a scratch copy (with no .venv to make anew)."""
    if shutil.which("make") is None:
        pytest.skip("make is not on the PATH")
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return subprocess.run(
        ["make", "-n", *args, f"PYTHON={sys.executable}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


def _pip_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "pip install" in line]


def test_torch_cpu_installs_torch_from_the_cpu_index_first(tmp_path: Path) -> None:
    run = _make_dry_run(tmp_path, "test", "TORCH=cpu")
    assert run.returncode == 0, run.stderr
    pips = _pip_lines(run.stdout)
    torch_pin = next(p.group(0) for p in _pins() if p.group("name") == "torch")
    assert f"--index-url {CPU_INDEX}" in pips[0] and torch_pin in pips[0], pips
    # then the lock, whose torch pin the CPU build already satisfies (2.13.0+cpu is 2.13.0)
    assert "-r requirements.txt" in pips[1], pips


def test_default_install_uses_pips_own_sources(tmp_path: Path) -> None:
    run = _make_dry_run(tmp_path, "test")
    assert run.returncode == 0, run.stderr
    assert "download.pytorch.org" not in run.stdout
    assert "-r requirements.txt" in _pip_lines(run.stdout)[0]


def test_an_unknown_torch_build_is_a_plain_error(tmp_path: Path) -> None:
    run = _make_dry_run(tmp_path, "test", "TORCH=cuda")
    assert run.returncode != 0
    assert "TORCH=cuda is not a torch build" in run.stderr


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    """`make -n` with another Python or torch build must not remove an existing .venv."""
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / ".python-id").write_text("3.0.0 /nowhere torch=default\n")
    run = _make_dry_run(tmp_path, "unit", "TORCH=cpu")
    assert run.returncode == 0, run.stderr
    assert (venv / ".python-id").exists()
