"""MkDocs hooks: pages generated at build time from the source tree, so none goes stale.

- **API reference**: one page per public module of ``resilient``, found on disk
  (``src/resilient``): every module or package whose dotted path has no component starting
  with an underscore. A module added, moved or made private changes the reference on the next
  build with no page to edit; each page shows the module's ``__all__`` (read by griffe, never
  imported), so private helpers stay out.
- **Examples**: one page per ``examples/*.py`` with its source. A docs page linking to an
  example file (``[...](../examples/retry_basics.py)``, outside the site) links to that page.
- A page added to docs/ but missing from the nav in mkdocs.yml is listed under "More" rather
  than left out of the navigation (move it to its section in mkdocs.yml).
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "resilient"
EXAMPLES = ROOT / "examples"
REFERENCE = "API reference"
EXAMPLES_SECTION = "Examples"
MORE = "More"
# A Markdown link target naming a file of examples/, relative to the page.
_EXAMPLE_LINK = re.compile(r"\]\(((?:\.\./)+examples/([\w-]+)\.py)\)")


def public_modules() -> list[str]:
    """Dotted names of the public modules under ``src/resilient``, the package first."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        found.append(".".join(parts))
    return sorted(found, key=lambda name: (name != "resilient", name))


def examples() -> list[str]:
    """Names (without ``.py``) of the runnable examples."""
    return sorted(path.stem for path in EXAMPLES.glob("*.py") if not path.stem.startswith("_"))


def _reference_page(module: str) -> str:
    return f"reference/{module}.md"


def _example_page(name: str) -> str:
    return f"examples/{name}.md"


def _example_content(name: str) -> str:
    source = (EXAMPLES / f"{name}.py").read_text()
    summary = (ast.get_docstring(ast.parse(source)) or "").split("\n\n", 1)[0]
    return (
        f"# `examples/{name}.py`\n\n{summary}\n\n"
        f"Run it from a clone of the repository: `python examples/{name}.py`.\n\n"
        f"```python\n{source}```\n"
    )


def _listed(nav: Any) -> set[str]:
    """Every page path named in a nav (nested lists and single-key dicts)."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(value) for value in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(item) for item in nav))
    return set()


def on_config(config: MkDocsConfig, **_: Any) -> MkDocsConfig:
    """Fill the nav's generated sections; list pages missing from the nav under "More"."""
    nav = config.nav or []
    docs = Path(config.docs_dir)
    unlisted = sorted(
        path.relative_to(docs).as_posix()
        for path in docs.rglob("*.md")
        if path.relative_to(docs).as_posix() not in _listed(nav)
    )
    generated = {
        REFERENCE: [{module: _reference_page(module)} for module in public_modules()],
        EXAMPLES_SECTION: [{f"{name}.py": _example_page(name)} for name in examples()],
    }
    for item in nav:
        if isinstance(item, dict):
            for section, pages in generated.items():
                if section in item:
                    item[section] = pages
    if unlisted:
        at = next(
            (i for i, item in enumerate(nav) if isinstance(item, dict) and REFERENCE in item),
            len(nav),
        )
        nav.insert(at, {MORE: unlisted})
    return config


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the generated reference and example pages to the site's files."""
    for module in public_modules():
        content = f"# `{module}`\n\n::: {module}\n"
        files.append(File.generated(config, _reference_page(module), content=content))
    for name in examples():
        files.append(File.generated(config, _example_page(name), content=_example_content(name)))
    return files


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    """Point links to ``examples/*.py`` (outside the site) at their generated pages."""
    here = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match[str]) -> str:
        target, name = match.group(1), match.group(2)
        if posixpath.normpath(posixpath.join(here, target)) != f"../examples/{name}.py":
            return match.group(0)
        if not (EXAMPLES / f"{name}.py").exists():
            return match.group(0)  # left alone: the strict build reports the broken link
        return f"]({posixpath.relpath(_example_page(name), here or '.')})"

    return _EXAMPLE_LINK.sub(relink, markdown)
