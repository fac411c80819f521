"""Architecture rules kept by a test: no module of the library imports another module's
private names. (The layers are import-linter contracts in pyproject.toml, run by `make lint`;
this test runs them too, so `pytest` alone catches a broken layer.)"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "resilient"

# Granted exceptions, each with its reason. They must shrink, never grow.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _private_imports_in(path: Path, module: str) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = _resolve(module, node, path)
        if source == "__future__":
            continue
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            target = f"{source}.{name}"
            # A private *module* of the package (`from . import _validate`) is how the
            # package is built; a private function, class or constant is not shared.
            if _is_module(target):
                continue
            found.append((module, target))
    return found


def _private_imports() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _private_imports_in(path, _module_name(path))
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    offending = [pair for pair in _private_imports() if pair not in ALLOWED]
    assert offending == [], "private names imported across modules: " + ", ".join(
        f"{m} imports {t}" for m, t in offending
    )


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    """The rule catches a private name imported from another module, absolute or relative,
    and lets private modules and public names through."""
    source = tmp_path / "_probe.py"
    source.write_text(
        "from __future__ import annotations\n"
        "from resilient._retry import _note, Retry\n"
        "from .._events import _ERROR_TYPES\n"
        "from resilient import _validate\n"
    )
    assert _private_imports_in(source, "resilient.httpx._probe") == [
        ("resilient.httpx._probe", "resilient._retry._note"),
        ("resilient.httpx._probe", "resilient._events._ERROR_TYPES"),
    ]
    assert set(ALLOWED) <= set(_private_imports())


@pytest.mark.skipif(
    shutil.which("lint-imports") is None
    and not Path(sys.executable).with_name("lint-imports").exists(),
    reason="import-linter not installed",
)
def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run(
        [exe],
        capture_output=True,
        text=True,
        check=False,
        cwd=SRC.parent,
        env={"PYTHONPATH": str(SRC), "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
