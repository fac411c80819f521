"""MkDocs hook: one API reference page per public module of ``resilient``, generated at build.

The public modules are found on disk (``src/resilient``): every module or package whose dotted
path has no component starting with an underscore. A module added, moved or made private
changes the reference on the next build with no page to edit; what each page shows is the
module's ``__all__`` (read by griffe, never imported), so private helpers stay out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "resilient"
SECTION = "API reference"


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


def on_config(config: MkDocsConfig, **_: Any) -> MkDocsConfig:
    """Fill the nav's API reference section with one page per public module."""
    pages = [{module: _page(module)} for module in public_modules()]
    for item in config.nav or []:
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = pages
    return config


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add the generated reference pages to the site's files."""
    for module in public_modules():
        files.append(File.generated(config, _page(module), content=_content(module)))
    return files
