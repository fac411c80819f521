"""The README's example runs as written; the docs tooling finds what it must (the site itself is
built strictly by `make docs`, which `make test` runs)."""

from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import resilient

ROOT = Path(__file__).parent.parent


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_example_runs_top_to_bottom(tmp_path: Path) -> None:
    """The README's snippet is a module that runs: nothing is used before it is defined."""
    readme = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(snippets) == 1
    script = tmp_path / "readme_example.py"
    script.write_text(
        snippets[0]
        + "\nfrom resilient.asgi import ResilienceMiddleware as _M\n"
        + "assert any(m.cls is _M for m in app.user_middleware), app.user_middleware\n"
        + "assert [r.path for r in app.routes][-1] == '/users/{user_id}'\n"
        + "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_reference_pages_cover_exactly_the_public_modules() -> None:
    """One API page per public module, none for a private one."""
    found = {
        info.name
        for info in pkgutil.walk_packages(resilient.__path__, "resilient.")
        if not any(part.startswith("_") for part in info.name.split("."))
    }
    listed = _tool("mkdocs_hooks").public_modules()
    assert listed[0] == "resilient"
    assert set(listed) == found | {"resilient"}
    assert {"resilient.httpx", "resilient.asgi", "resilient.testing"} <= set(listed)


def test_dist_check_reads_only_base_requirements() -> None:
    """The release check tells runtime requirements from an extra's."""
    check_dist = _tool("check_dist")
    metadata = (
        "Metadata-Version: 2.4\nName: resilient-patterns\nVersion: 1.0\n"
        "Requires-Dist: anyio>=4.4\n"
        "Requires-Dist: opentelemetry-api>=1.25\n"
        "Requires-Dist: httpx>=0.27; extra == 'httpx'\n"
        "Requires-Dist: tomli; python_version < '3.0'\n"
    )
    names = [r.name for r in check_dist.base_requirements(metadata)]
    assert names == ["anyio", "opentelemetry-api"]


def test_dist_check_version_is_the_package_version() -> None:
    """The version the release check expects is resilient.__version__, read from the source."""
    assert _tool("check_dist").source_version() == resilient.__version__


def test_getting_started_shows_the_example_in_file_order() -> None:
    """The guide's blocks follow the example file's order, so read top to bottom it runs."""
    page = (ROOT / "docs" / "getting-started.md").read_text()
    shown = re.findall(r'--8<-- "examples/getting_started.py:(\w+)"', page)
    source = (ROOT / "examples" / "getting_started.py").read_text()
    in_file = re.findall(r"# --8<-- \[start:(\w+)\]", source)
    assert shown == in_file
    assert shown[0] == "imports"


def test_every_python_block_in_the_docs_parses() -> None:
    """Python blocks in README.md and docs/ are valid Python (top-level await allowed)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = 0
    for page in pages:
        for match in re.finditer(r"^( *)```python\n(.*?)^\1```", page.read_text(), re.M | re.S):
            code = textwrap.dedent(match.group(2))
            if code.startswith("--8<--"):
                continue  # included from examples/, which run in test_examples.py
            blocks += 1
            try:
                compile(code, str(page), "exec", flags=flags)
            except SyntaxError as exc:
                raise AssertionError(f"{page.name}: {exc.msg}: {exc.text!r}") from exc
    assert blocks > 40


def test_links_to_example_files_point_at_their_generated_pages() -> None:
    """A docs link to examples/NAME.py (outside the site) is pointed at the example's page."""
    hooks = _tool("mkdocs_hooks")
    page = SimpleNamespace(file=SimpleNamespace(src_uri="retry.md"))
    nested = SimpleNamespace(file=SimpleNamespace(src_uri="guides/retry.md"))
    markdown = "[a](../examples/quickstart.py) [b](../examples/missing.py) [c](pipeline.md)"
    assert hooks.on_page_markdown(markdown, page) == (
        "[a](examples/quickstart.md) [b](../examples/missing.py) [c](pipeline.md)"
    )
    assert hooks.on_page_markdown("[a](../../examples/quickstart.py)", nested) == (
        "[a](../examples/quickstart.md)"
    )
    assert "getting_started" in hooks.examples()


def test_the_documented_conftest_runs_the_testing_example_on_both_loops(tmp_path: Path) -> None:
    """docs/testing.md's conftest.py runs examples/testing.py's tests on asyncio and on trio."""
    page = (ROOT / "docs" / "testing.md").read_text()
    (conftest,) = re.findall(r"```python\n(# conftest\.py\n.*?)```", page, re.DOTALL)
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_inventory.py").write_text((ROOT / "examples" / "testing.py").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "anyio_mode=auto"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout  # 4 tests x (asyncio, trio)


def test_troubleshooting_names_every_public_exception() -> None:
    """Every exception class a public module exports has an entry in troubleshooting.md."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = []
    for name in _tool("mkdocs_hooks").public_modules():
        module = importlib.import_module(name)
        for attribute in getattr(module, "__all__", ()):
            value = getattr(module, attribute)
            exported_error = isinstance(value, type) and issubclass(value, BaseException)
            if exported_error and not re.search(rf"`[\w.]*\b{attribute}\b", page):
                missing.append(f"{name}.{attribute}")
    assert not missing, f"not in docs/troubleshooting.md: {missing}"


# Runs in a child process: a block may set process-wide state (a tracer provider).
_RUN_BLOCKS = """
import ast, inspect, re, sys, warnings
import anyio
from fastapi import FastAPI

warnings.simplefilter("error")
for page in sys.argv[1:]:
    text = open(page).read()
    blocks = re.findall(r"^```python\\n(.*?)^```", text, re.M | re.S)
    for index, source in enumerate(blocks):
        if source.startswith("--8<--"):
            continue  # included from examples/, which run in test_examples.py

        async def send_push(user_id: str) -> None: ...

        names = {
            "__name__": "docs_block",
            "app": FastAPI(),
            "MyDriverError": type("MyDriverError", (Exception,), {}),
            "send_push": send_push,
        }
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        result = eval(compile(source, f"{page} block {index}", "exec", flags=flags), names)
        if inspect.iscoroutine(result):
            async def run(awaitable=result):
                await awaitable
            anyio.run(run)
        print(page, index, "ok")
"""


def test_guide_blocks_run_including_the_peers_code(tmp_path: Path) -> None:
    """Every Python block of the concepts, migration and getting-started pages runs as written:
    the library's side and the peers' (tenacity, stamina, backoff, httpx-retries, pybreaker,
    aiobreaker, aiolimiter, installed in the dev environment), so their APIs are real."""
    pages = [ROOT / "docs" / name for name in ("concepts.md", "migrating.md", "getting-started.md")]
    script = tmp_path / "run_blocks.py"
    script.write_text(_RUN_BLOCKS)
    done = subprocess.run(
        [sys.executable, str(script), *map(str, pages)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ran = done.stdout.splitlines()
    assert sum("migrating.md" in line for line in ran) == 15  # 7 peers, 7 rewrites, 1 middleware


def test_readme_and_home_page_name_every_example() -> None:
    """A new example is announced where users look for them."""
    readme = (ROOT / "README.md").read_text()
    home = (ROOT / "docs" / "index.md").read_text()
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert f"`{example.name}`" in readme, f"README.md does not mention {example.name}"
        assert f"`{example.name}`" in home, f"docs/index.md does not list {example.name}"
