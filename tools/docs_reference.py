"""MkDocs hook: one API reference page per public module of ``resilient``, generated at build.

The public modules are found on disk (``src/resilient``): every module or package whose dotted
path has no component starting with an underscore. A module added, moved or made private
changes the reference on the next build with no page to edit; what each page shows is the
module's ``__all__`` (read by griffe, never imported), so private helpers stay out.

A page added to docs/ but not to the nav in mkdocs.yml is listed under "More" rather than left
out of the navigation (move it to its section in mkdocs.yml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "resilient"
SECTION = "API reference"
MORE = "More"


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


def _page(module: str) -> str:
    return f"reference/{module}.md"


def _content(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


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
    """Fill the nav's API reference section; list pages missing from the nav under "More"."""
    nav = config.nav or []
    docs = Path(config.docs_dir)
    unlisted = sorted(
        path.relative_to(docs).as_posix()
        for path in docs.rglob("*.md")
        if path.relative_to(docs).as_posix() not in _listed(nav)
    )
    pages = [{module: _page(module)} for module in public_modules()]
    for index, item in enumerate(nav):
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = pages
            if unlisted:
                nav.insert(index, {MORE: unlisted})
            break
    return config


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the generated reference pages to the site's files."""
    for module in public_modules():
        files.append(File.generated(config, _page(module), content=_content(module)))
    return files
