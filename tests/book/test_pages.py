"""The built book, as a reader's browser shows it: run after `make book` (`make browser`).

Every page of ``_build/html`` is opened in headless Chromium (driven through Playwright's Python
package, which uses the Chromium on the PATH and downloads no browser of its own) with the network
cut off: every request that leaves the machine is recorded and refused. Each page must then show

- every formula rendered by the book's own MathJax (as many rendered formulas as the HTML has
  formulas) and no raw TeX in the text a reader sees;
- nothing requested from the network (script, stylesheet, font, image or anything else);
- no console error, no uncaught exception, no local file that failed to load;
- every image loaded (natural width > 0);
- every internal link leading to a file that exists and to an anchor that the file has;
- at a phone's width (390 px) nothing wider than the screen: code and tables scroll inside the
  page;
- in the theme's dark mode, each figure on a light card (the stored PNGs are drawn on white);
- at 1400 px, no displayed formula or table wider than the text column, no code box (folded or
  not) that scrolls sideways, no traceback, and every
  folded check cell (tag hide-cell) closed, with a toggle that opens it;
- on the intro's first screen (the top 1000 px at 1400 px wide), both fixes of the forum question.

The test builds nothing. It is skipped, saying why, when there is no built book; without Chromium
only the link check runs.
``BOOK_SCREENSHOTS=DIR`` also saves each page at 390 px and 1400 px wide, light and dark, in DIR.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
BROWSER = next(
    (
        path
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (path := shutil.which(name))
    ),
    None,
)
ALL_PAGES = (
    sorted(p for p in SITE.rglob("*.html") if "_static" not in p.parts) if SITE.exists() else []
)
#: A page that only forwards the reader elsewhere (index.html): its target is checked instead.
REDIRECT = re.compile(r'<meta http-equiv="refresh" content="0; url=([^"]+)"', re.IGNORECASE)
REDIRECTS = {
    p: m.group(1) for p in ALL_PAGES if (m := REDIRECT.search(p.read_text(encoding="utf-8")))
}
PAGES = [p for p in ALL_PAGES if p not in REDIRECTS]
SCREENSHOTS = os.environ.get("BOOK_SCREENSHOTS")
#: Chromium flags for a browser that must not reach the network and may run as root.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NARROW, WIDE = 390, 1400
#: How long a page may take to load and typeset its formulas (ms); one takes well under a second.
PATIENCE_MS = 30_000
#: Requests that would leave the machine: refused and reported.
OFF_MACHINE = re.compile(r"^(https?|wss?|ftp)://")
#: A TeX control sequence or math delimiter: what unrendered math looks like on the page.
RAW_TEX = re.compile(r"\\(?:[A-Za-z]{2,}|[()\[\]])|\$\$")

pytestmark = pytest.mark.skipif(
    not SITE.exists(), reason="no built book in _build/html: run `make book` first"
)


class _Page(html.parser.HTMLParser):
    """What the HTML file itself contains: formulas, links and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.formulas = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        # Sphinx writes each formula as <span class="math ..."> (inline) or <div class="math ...">
        if tag in ("span", "div") and "math" in (a.get("class") or "").split():
            self.formulas += 1


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_network(url: str) -> bool:
    return urlsplit(url).scheme not in ("file", "data", "blob", "about", "")


# Run in the page after its load event (by then MathJax's script, deferred, has run or failed to
# load): wait until MathJax has typeset the page, or say that there is no MathJax to wait for.
WAIT_FOR_MATH = """async (patience) => {
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return false;
  const late = new Promise((resolve) => setTimeout(() => resolve(false), patience));
  return await Promise.race([MathJax.startup.promise.then(() => true), late]);
}"""

# Run in the page: what it shows once loaded.
INSPECT = r"""async () => {
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  const hidden = "script, style, noscript, template, pre, code, kbd, samp, mjx-container, "
    + "mjx-assistive-mml, .highlight";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(hidden) || !parent.checkVisibility()) continue;
    if (node.textContent.trim()) texts.push(node.textContent);
  }
  return {
    rendered: document.querySelectorAll("mjx-container").length,
    // TeX that MathJax set as literal text (\text{rel\_tol} without textmacros),
    // read in its MathML
    texInMath: Array.from(document.querySelectorAll("mjx-assistive-mml"))
      .map((mml) =>
        Array.from(mml.querySelectorAll("mtext, mi, mo")).map((e) => e.textContent).join(" "))
      .filter((text) => text.includes("\\")),
    mathErrors: Array.from(document.querySelectorAll("mjx-merror, [data-mjx-error]"))
      .map((e) => e.textContent),
    text: texts.join(" "),
    brokenImages: images
      .filter((img) => !img.complete || img.naturalWidth === 0)
      .map((img) => img.src),
  };
}"""

# Run in the page: elements that stick out of a narrow screen (the page itself scrolling sideways).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const culprits = [];
  if (document.documentElement.scrollWidth > width + 1) {
    for (const el of document.querySelectorAll("article *")) {
      const box = el.getBoundingClientRect();
      if (box.right > width + 1 && el.checkVisibility()) {
        let scroller = el.parentElement, clipped = false;
        for (; scroller && scroller !== document.body; scroller = scroller.parentElement) {
          if (
            ["auto", "scroll", "hidden", "clip"].includes(getComputedStyle(scroller).overflowX)
          ) {
            clipped = true;
            break;
          }
        }
        if (!clipped) {
          culprits.push(el.tagName.toLowerCase()
            + (el.className ? "." + String(el.className).split(" ")[0] : ""));
        }
      }
    }
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    width,
    culprits: [...new Set(culprits)].slice(0, 5),
  };
}"""

# Run in the page (dark mode): figures whose image is neither on a light background nor lightened.
DARK_FIGURES = """() => {
  const light = (color) => {
    const m = color.match(/rgba?\\(([\\d.]+),\\s*([\\d.]+),\\s*([\\d.]+)(?:,\\s*([\\d.]+))?/);
    if (!m || (m[4] !== undefined && Number(m[4]) < 0.9)) return false;
    return 0.2126 * m[1] + 0.7152 * m[2] + 0.0722 * m[3] > 200;
  };
  const bad = [];
  for (const img of document.querySelectorAll("article img")) {
    if (!img.src.endsWith(".png")) continue;
    let ok = false;
    for (let el = img; el && el !== document.body && !ok; el = el.parentElement) {
      const style = getComputedStyle(el);
      ok = light(style.backgroundColor) || /invert/.test(style.filter);
    }
    if (!ok) bad.push(img.src.split("/").pop());
  }
  return {theme: document.documentElement.dataset.theme, bad};
}"""


#: At 1400 px: displayed formulas and tables wider than the text column, code boxes that scroll
#: sideways, tracebacks shown.
WIDE_CONTENT = r"""() => {
  const article = document.querySelector("article.bd-article") || document.body;
  const column = article.clientWidth;
  const wide = [];
  const items = [
    ...Array.from(article.querySelectorAll('mjx-container[display="true"] mjx-math')),
    ...Array.from(article.querySelectorAll("table")),
  ];
  for (const el of items) {
    const width = Math.max(el.getBoundingClientRect().width, el.scrollWidth);
    if (width > column + 1) {
      const what = el.tagName.toLowerCase() === "table" ? "table" : "formula";
      wide.push(`${what} ${Math.round(width)} px: ${el.textContent.trim().slice(0, 60)}`);
    }
  }
  for (const pre of article.querySelectorAll("pre")) {  // code and outputs, folded ones included
    if (pre.scrollWidth > pre.clientWidth + 1) {
      wide.push(
        `code ${pre.scrollWidth} px in ${pre.clientWidth}: ${pre.textContent.trim().slice(0, 60)}`
      );
    }
  }
  const tracebacks = article.querySelectorAll(".output.traceback").length
    + (article.innerText.includes("Traceback (most recent call last)") ? 1 : 0);
  return {column, wide, tracebacks};
}"""
#: The folded check cells: each closed, with a toggle that opens it and shows the code.
FOLDED_CHECKS = r"""async () => {
  const cells = Array.from(document.querySelectorAll(".cell.tag_hide-cell"));
  const bad = [];
  for (const [i, cell] of cells.entries()) {
    const details = cell.querySelector("details");
    const summary = details && details.querySelector("summary");
    if (!summary) { bad.push(`cell ${i}: no toggle`); continue; }
    if (details.open) { bad.push(`cell ${i}: shown unfolded`); continue; }
    summary.click();
    await new Promise((resolve) => setTimeout(resolve, 0));
    const code = cell.querySelector(".cell_input");
    if (!details.open || !code || code.getBoundingClientRect().height <= 0) {
      bad.push(`cell ${i}: the toggle does not open it`);
    }
  }
  return {count: cells.length, bad};
}"""
#: Where on the page (px from the top) the text first appears; null when it is not there.
TOP_OF = """(text) => {
  // the innermost elements that hold the whole text (code is split into highlighted spans)
  const holders = Array.from(document.body.querySelectorAll("*")).filter(
    (el) => el.textContent.includes(text)
      && !Array.from(el.children).some((child) => child.textContent.includes(text)));
  const tops = holders.map((el) => el.getBoundingClientRect().top + window.scrollY);
  return tops.length ? Math.min(...tops) : null;
}"""
FIRST_SCREEN_PX = 1000
#: The forum question's two fixes, which the intro's first screen must show.
FIXES = ("correction=0", "assert_close")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if BROWSER is None:
        pytest.skip(
            "no chromium, chromium-browser or google-chrome on the PATH "
            "(Debian: apt-get install chromium)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (requirements.txt)"
    )
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=BROWSER, headless=True, args=FLAGS, timeout=PATIENCE_MS
            )
        except sync_api.Error as error:  # e.g. Ubuntu's snap stub, which cannot run in a container
            first_line = str(error).strip().splitlines()[0]
            pytest.skip(f"{BROWSER} could not start headless (on Ubuntu, apt's chromium is a snap "
                        f"stub that does not run in a container; install Debian's or Google's "
                        f"build): {first_line}")
        yield chromium
        chromium.close()


def _open(browser, path: Path, width: int, dark: bool):
    """A page at `width` px in light or dark mode, with every request off the machine refused."""
    context = browser.new_context(
        viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light"
    )
    if dark:  # the theme keeps the reader's choice in localStorage and sets data-theme on <html>
        context.add_init_script(
            "localStorage.setItem('mode', 'dark'); localStorage.setItem('theme', 'dark');"
        )
    # (in light mode the page opens as on a first visit: nothing stored, the system's scheme light)
    record = {"network": [], "errors": []}

    def refuse(route) -> None:
        record["network"].append(f"{route.request.resource_type} {route.request.url}")
        route.abort()

    context.route(OFF_MACHINE, refuse)
    page = context.new_page()
    def console(message) -> None:
        if message.type == "error":
            record["errors"].append(f"console: {message.text}")

    def request(req) -> None:  # what leaves the machine by a scheme that the route does not see
        if _is_network(req.url) and not OFF_MACHINE.match(req.url):
            record["network"].append(f"{req.resource_type} {req.url}")

    def failed(req) -> None:  # a local file that is missing or unreadable
        if not _is_network(req.url):
            record["errors"].append(f"failed to load {req.url}: {req.failure}")

    page.on("console", console)
    page.on("pageerror", lambda error: record["errors"].append(f"uncaught: {error}"))
    page.on("request", request)
    page.on("requestfailed", failed)
    page.goto(path.as_uri(), wait_until="load", timeout=PATIENCE_MS)
    page.evaluate(WAIT_FOR_MATH, PATIENCE_MS)
    return context, page, record


def _shoot(page, path: Path, width: int, dark: bool) -> None:
    """The top of the page, and its first figure, table and code cell scrolled into view."""
    out = Path(SCREENSHOTS)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{path.stem}-{width}-{'dark' if dark else 'light'}"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / f"{name}.png"))
    views = (
        ("figure", "article figure"),
        ("table", "article table"),
        ("code", "article .cell_input"),
    )
    for what, selector in views:
        element = page.query_selector(selector)
        if element is not None:
            element.scroll_into_view_if_needed()
            page.screenshot(path=str(out / f"{name}-{what}.png"))


def test_the_book_has_its_pages() -> None:
    names = {p.name for p in PAGES}
    assert {"intro.html", "bibliography.html"} <= names and len(names) >= 10, sorted(names)
    for page, target in REDIRECTS.items():
        forwarded_to = page.parent / unquote(urlsplit(target).path)
        assert forwarded_to.is_file(), f"{page.name} forwards to a missing {target}"


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(SITE)) for p in PAGES])
def test_internal_links_resolve(path: Path) -> None:
    broken = []
    for href in _parse(path).links:
        parts = urlsplit(href)
        if parts.scheme or href.startswith("//"):
            continue
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if not target.exists():
            broken.append(href)
        elif (
            parts.fragment
            and target.suffix == ".html"
            and unquote(parts.fragment) not in _parse(target).ids
        ):
            broken.append(href)
    assert not broken, f"links that lead nowhere: {broken}"


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(SITE)) for p in PAGES])
def test_page_in_the_browser(browser, path: Path) -> None:
    formulas = _parse(path).formulas
    context, page, record = _open(browser, path, WIDE, dark=False)
    try:
        shown = page.evaluate(INSPECT)
        if SCREENSHOTS:
            _shoot(page, path, WIDE, dark=False)
        content = page.evaluate(WIDE_CONTENT)
        folded = page.evaluate(FOLDED_CHECKS)
    finally:
        context.close()

    assert not record["network"], f"requested from the network: {record['network']}"
    assert shown["rendered"] == formulas, (
        f"{shown['rendered']} of the page's {formulas} formulas rendered"
    )
    assert not shown["mathErrors"], f"MathJax could not typeset: {shown['mathErrors']}"
    assert not shown["texInMath"], f"TeX shown literally inside formulas: {shown['texInMath']}"
    raw = sorted(set(RAW_TEX.findall(shown["text"])))
    assert not raw, f"raw TeX in the text a reader sees: {raw[:10]}"
    assert not shown["brokenImages"], f"images that did not load: {shown['brokenImages']}"
    assert not record["errors"], record["errors"]
    assert not content["wide"], (
        f"wider than the {content['column']} px text column: {content['wide']}"
    )
    assert not content["tracebacks"], "the page shows a traceback"
    assert not folded["bad"], f"folded checks ({folded['count']} cells): {folded['bad']}"


def test_the_answer_is_on_the_first_screen(browser) -> None:
    context, page, record = _open(browser, SITE / "book" / "intro.html", WIDE, dark=False)
    try:
        tops = {fix: page.evaluate(TOP_OF, fix) for fix in FIXES}
    finally:
        context.close()
    late = {fix: top for fix, top in tops.items() if top is None or top > FIRST_SCREEN_PX}
    assert not late, f"not in the top {FIRST_SCREEN_PX} px of the intro at {WIDE} px: {late}"


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(SITE)) for p in PAGES])
def test_page_on_a_phone_in_dark_mode(browser, path: Path) -> None:
    context, page, record = _open(browser, path, NARROW, dark=True)
    try:
        overflow = page.evaluate(OVERFLOW)
        figures = page.evaluate(DARK_FIGURES)
        if SCREENSHOTS:
            _shoot(page, path, NARROW, dark=True)
            page.evaluate("document.documentElement.dataset.theme = 'light'")
            _shoot(page, path, NARROW, dark=False)
            page.set_viewport_size({"width": WIDE, "height": 900})
            page.evaluate("document.documentElement.dataset.theme = 'dark'")
            _shoot(page, path, WIDE, dark=True)
    finally:
        context.close()

    assert not record["network"] and not record["errors"], record
    assert figures["theme"] == "dark", f"the page did not switch to dark mode: {figures}"
    assert overflow["scrollWidth"] <= overflow["width"] + 1, (
        f"wider than a {NARROW} px screen: {overflow}"
    )
    assert not figures["bad"], f"figures on a dark background in dark mode: {figures['bad']}"
