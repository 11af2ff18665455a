"""The built book, as a reader's browser shows it: run after `make book` (`make browser`).

Every page of ``_build/html`` is loaded in headless Chromium with no network, and checked: every
formula rendered by the book's own MathJax (no raw TeX left), no script or stylesheet fetched
from the network, no console error, every image present, every internal link resolving. It
builds nothing itself, and is skipped (with the reason) where no Chromium is installed.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
BROWSER = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
    None,
)
PAGES = sorted(p for p in SITE.rglob("*.html") if "_static" not in p.parts and p.name != "search.html") if SITE.exists() else []
#: Flags for a headless browser that must not touch the network (and may run as root).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=20000",
]

pytestmark = [
    pytest.mark.skipif(not SITE.exists(), reason="no built book: run `make book` first"),
    pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome on PATH: install `chromium`"),
]


class _Page(html.parser.HTMLParser):
    """What the static HTML asks for: scripts, stylesheets, images, links, ids, formulas."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts, self.stylesheets, self.images, self.links, self.ids = [], [], [], [], set()
        self.formulas = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        elif tag == "link" and "stylesheet" in (a.get("rel") or ""):
            self.stylesheets.append(a.get("href", ""))
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if "math notranslate nohighlight" in (a.get("class") or ""):
            self.formulas += 1


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https") or url.startswith("//")


def _render(path: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and the browser's log."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [BROWSER, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LANG": "C"},
        )
    return done.stdout, done.stderr


def _visible_text(dom: str) -> str:
    """The text a reader sees outside code: scripts, styles, code and rendered math removed."""
    for tag in ("script", "style", "pre", "code", "mjx-container", "mjx-assistive-mml"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S)
    return unquote(re.sub(r"<[^>]+>", " ", dom))


def test_the_book_has_pages() -> None:
    assert len(PAGES) >= 10


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(SITE)) for p in PAGES])
def test_page(path: Path) -> None:
    page = _parse(path)
    remote = [u for u in page.scripts + page.stylesheets if _is_remote(u)]
    assert not remote, f"fetched from the network: {remote}"

    for src in page.images:
        if not _is_remote(src) and not src.startswith("data:"):
            image = (path.parent / unquote(urlsplit(src).path)).resolve()
            assert image.is_file() and image.stat().st_size > 0, f"missing image {src}"

    for href in page.links:
        parts = urlsplit(href)
        if parts.scheme or href.startswith(("mailto:", "//")):
            continue
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        assert target.exists(), f"broken link {href}"
        if parts.fragment and target.suffix == ".html":
            assert parts.fragment in _parse(target).ids, f"no anchor #{parts.fragment} in {href}"

    dom, log = _render(path)
    rendered = dom.count("<mjx-container")
    assert rendered == page.formulas, f"{rendered} of {page.formulas} formulas rendered"
    raw = re.findall(r"\\(?:\(|\[|frac|sqrt|text|mathrm)", _visible_text(dom))
    assert not raw, f"raw TeX on the page: {raw[:5]}"
    console_errors = [
        line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]
    assert not console_errors, console_errors
