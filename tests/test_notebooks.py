"""The chapters as a reader gets them: the teaching code visible, the checks folded.

Every claim of the book is checked by an ``assert`` that nbval runs, but a reader should not have
to read those checks to find the code that teaches. A check lives in a code cell of its own,
tagged ``hide-cell`` (MyST-NB folds it in the HTML) with ``jupyter.source_hidden`` (JupyterLab
folds it too). Markers meant for the tools are cell tags, not comments a reader sees. These tests
read the notebooks' JSON, so they need no kernel and run in a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]-*.ipynb"))
#: Tags under which MyST-NB folds or removes a cell's source in the HTML.
SOURCE_FOLDED = {"hide-cell", "hide-input", "remove-cell", "remove-input"}
#: The caveats the intro states once ("How to read the numbers"); the prose need not repeat them.
HEDGES = re.compile(
    r"in the run stored here|measured, not derived|envelope|on every machine|on any machine",
    re.IGNORECASE,
)
ASSERT = re.compile(r"\s*assert\b")
MAX_VISIBLE_ASSERTS_PER_CHAPTER = 8
MAX_VISIBLE_ASSERTS = 40
MIN_ASSERTS = 200
MIN_VISIBLE_CODE_CELLS = 50
MAX_VISIBLE_CELL_LINES = 25
MAX_LINE = 88
MAX_HEDGES = 10


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell.get("source", []))


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _code(notebook: Path) -> list[dict]:
    return [c for c in _cells(notebook) if c["cell_type"] == "code"]


def _visible_code(notebook: Path) -> list[dict]:
    return [c for c in _code(notebook) if not _tags(c) & SOURCE_FOLDED]


def _asserts(cells: list[dict]) -> int:
    return sum(1 for c in cells for line in _source(c).splitlines() if ASSERT.match(line))


def _prose(notebook: Path) -> str:
    return "".join(_source(c) for c in _cells(notebook) if c["cell_type"] == "markdown")


def _output_lines(cell: dict) -> list[str]:
    lines = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain", "")
        lines += "".join(text).splitlines()
    return lines


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_with_a_kernel(notebook: Path) -> None:
    meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]
    assert "kernelspec" in meta, "no kernelspec: commit the notebook executed"
    never_run = [
        i
        for i, c in enumerate(_code(notebook))
        if _source(c).strip() and c["execution_count"] is None
    ]
    assert not never_run, f"code cells never executed: {never_run}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_checks_are_folded(notebook: Path) -> None:
    visible = _asserts(_visible_code(notebook))
    assert visible <= MAX_VISIBLE_ASSERTS_PER_CHAPTER, (
        f"{visible} assert lines a reader sees: move checks into cells tagged hide-cell"
    )
    for index, cell in enumerate(_code(notebook)):
        if "hide-cell" in _tags(cell):
            assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, (
                f"cell {index} is folded in the HTML but not in JupyterLab: "
                "set jupyter.source_hidden"
            )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_tool_markers_are_tags(notebook: Path) -> None:
    marked = [i for i, c in enumerate(_code(notebook)) if "NBVAL_" in _source(c)]
    assert not marked, f"cells {marked}: use the cell tag nbval-ignore-output, not a comment"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_fits_the_page(notebook: Path) -> None:
    for index, cell in enumerate(_code(notebook)):
        wide = [line for line in _source(cell).splitlines() if len(line) > MAX_LINE]
        assert not wide, f"cell {index}: code lines over {MAX_LINE} characters: {wide}"
    for index, cell in enumerate(_visible_code(notebook)):
        lines = _source(cell).splitlines()
        assert len(lines) <= MAX_VISIBLE_CELL_LINES, (
            f"cell {index}: {len(lines)} visible lines; split it or fold what is not taught"
        )
        if "hide-output" not in _tags(cell):
            wide = [line for line in _output_lines(cell) if len(line) > MAX_LINE]
            assert not wide, f"cell {index}: output lines over {MAX_LINE} characters: {wide}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_caveats_said_once(notebook: Path) -> None:
    hedges = HEDGES.findall(_prose(notebook))
    assert len(hedges) <= 2, (
        f"{len(hedges)} hedge phrases ({hedges}): the intro says the caveat once"
    )


def test_the_book_keeps_its_checks_and_its_code() -> None:
    every_code_cell = [c for nb in NOTEBOOKS for c in _code(nb)]
    visible = [c for nb in NOTEBOOKS for c in _visible_code(nb)]
    assert _asserts(every_code_cell) >= MIN_ASSERTS, "checks were lost, not folded"
    assert _asserts(visible) <= MAX_VISIBLE_ASSERTS
    assert len(visible) >= MIN_VISIBLE_CODE_CELLS, "the teaching code was folded with the checks"
    prose = (
        "".join(_prose(nb) for nb in NOTEBOOKS)
        + (BOOK / "intro.md").read_text(encoding="utf-8")
    )
    assert len(HEDGES.findall(prose)) <= MAX_HEDGES
