"""Pages that work offline and without console errors.

MathJax is served from the book itself, so that its formulas render without a network; and an
inline script that two extensions both add to every page (sphinx-thebe's configuration, whose
second copy is a SyntaxError in the browser's console) is kept once.

Sphinx points pages at a CDN copy of MathJax by default; a reader offline, or behind a proxy
that blocks CDNs, then sees raw TeX. This extension copies MathJax 3 (its CommonHTML output
with fonts, the TeX input and its extensions, and the accessibility menu) from the pinned PyPI
package ``django-static-mathjax`` (MathJax 3.2.2 under the Apache License 2.0; despite its name
the package only ships MathJax's files and needs no Django) into ``_static/mathjax`` of the
build, and points every page there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mathjax  # django-static-mathjax
from sphinx.application import Sphinx
from sphinx.config import Config

#: What the pages load, relative to _static.
ENTRY = "mathjax/tex-chtml.js"
#: The parts of MathJax's es5 build that tex-chtml.js loads or may load on demand.
PARTS = ["tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "a11y", "ui"]


def _source() -> Path:
    return Path(mathjax.__file__).parent / "static" / "mathjax"


def _use_local_copy(app: Sphinx, config: Config) -> None:
    config.mathjax_path = ENTRY


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = _source(), Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        origin = source / "es5" / part
        if origin.is_dir():
            shutil.copytree(origin, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / part)
    shutil.copy2(source / "LICENSE", target / "LICENSE")


def _drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the same file or inline body, whatever priority each copy was added with (an inline
        # script reaches the builder twice, once with filename None and once with "")
        key = (
            str(getattr(script, "filename", script) or ""),
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _use_local_copy)
    # first: a handler that returns a template name ends the event for those after it
    app.connect("html-page-context", _drop_duplicate_scripts, priority=1)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
