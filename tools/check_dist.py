"""Check the built sdist and wheel like a release would, offline, in a few seconds.

Run by ``make test`` (through ``make dist``) with the development virtualenv's Python::

    python tools/check_dist.py dist

1. ``twine check`` (the metadata and README render on the package index) and
   ``check-wheel-contents`` (no stray or duplicate files in the wheel).
2. The wheel holds ``resilient/py.typed``, its version is ``resilient.__version__`` of the
   source tree, its only runtime requirements are anyio and opentelemetry-api, and it
   declares the extras the README documents.
3. The sdist holds the sources, the typed marker and the licence-relevant metadata, and no
   virtualenv, cache or build output.
4. A clean virtualenv (no pip, no site packages) gets the wheel (``pip install --no-index
   --no-deps``) and the installed files of the runtime requirements' dependency closure, copied
   from this virtualenv by their ``RECORD``, so no network is needed. ``pip check`` must then
   find nothing missing, ``import resilient`` must come from that virtualenv without importing
   any optional dependency, and ``examples/quickstart.py`` must run there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = {"anyio", "opentelemetry-api"}
# The extras the README's install table documents.
EXTRAS = {"httpx", "prometheus", "redis", "asgi"}
# What `import resilient` must never pull in (it is also a unit test on the source tree).
OPTIONAL = ("httpx", "starlette", "redis", "prometheus_client", "opentelemetry.sdk")
SDIST_FORBIDDEN = (".venv/", "__pycache__/", ".mypy_cache/", "site/", "dist/", "demo-output/")


def fail(message: str) -> None:
    """Stop with a message naming what is wrong."""
    sys.exit(f"check_dist: {message}")


def run(*args: str | Path, cwd: Path | None = None) -> str:
    """Run a command; stop with its output when it fails."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, check=False
    )
    if done.returncode != 0:
        fail(f"{' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def source_version() -> str:
    """``__version__`` as written in src/resilient/__init__.py (not imported)."""
    tree = ast.parse((ROOT / "src" / "resilient" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    fail("no __version__ = '...' in src/resilient/__init__.py")
    raise AssertionError  # unreachable: fail() exits


def base_requirements(metadata: str) -> list[Requirement]:
    """The wheel's requirements that apply without any extra."""
    found = []
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(requirement)
    return found


def closure(requirements: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The installed distributions these requirements need, transitively (no extras)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            fail(f"{name} (needed by the wheel) is not installed in {sys.prefix}")
        if not requirement.specifier.contains(distribution.version, prereleases=True):
            fail(f"installed {name} {distribution.version} does not satisfy {requirement}")
        seen[name] = distribution
        todo.extend(Requirement(r) for r in distribution.requires or [])
    return list(seen.values())


def copy_installed(distribution: importlib.metadata.Distribution, site: Path) -> None:
    """Copy one installed distribution's files (its RECORD) into another site-packages."""
    for file in distribution.files or []:
        if file.parts[0] == ".." or file.suffix == ".pyc":
            continue  # console scripts live outside site-packages; bytecode is rebuilt
        source = Path(str(distribution.locate_file(file)))
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def check_wheel(wheel: Path) -> list[Requirement]:
    """The wheel's contents and metadata; returns its base requirements."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        if "resilient/py.typed" not in names:
            fail(f"{wheel.name} lacks resilient/py.typed (the typed marker)")
        stray = sorted(n for n in names if not n.startswith(("resilient/", "resilient_patterns")))
        if stray:
            fail(f"{wheel.name} holds files outside the package: {stray}")
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    version = Parser().parsestr(metadata)["Version"]
    if version != source_version():
        fail(f"wheel version {version} != resilient.__version__ {source_version()}")
    extras = set(Parser().parsestr(metadata).get_all("Provides-Extra") or [])
    if not extras >= EXTRAS:
        fail(f"{wheel.name} lacks the documented extras {sorted(EXTRAS - extras)}")
    requirements = base_requirements(metadata)
    names_required = {canonicalize_name(r.name) for r in requirements}
    if names_required != RUNTIME:
        fail(f"runtime requirements are {sorted(names_required)}, expected {sorted(RUNTIME)}")
    return requirements


def check_sdist(sdist: Path) -> None:
    """The sdist carries the sources and metadata, and nothing from a work tree."""
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed_files = (
        "pyproject.toml",
        "README.md",
        "src/resilient/__init__.py",
        "src/resilient/py.typed",
    )
    for needed in needed_files:
        if needed not in names:
            fail(f"{sdist.name} lacks {needed}")
    leaked = sorted(n for n in names if n.startswith(SDIST_FORBIDDEN) or "/__pycache__/" in n)
    if leaked:
        fail(f"{sdist.name} holds work-tree files: {leaked[:5]}")


def check_clean_install(wheel: Path, requirements: list[Requirement]) -> None:
    """Install the wheel into a fresh virtualenv and use it there."""
    with tempfile.TemporaryDirectory(prefix="resilient-wheel-") as tmp:
        venv = Path(tmp) / "venv"
        run(sys.executable, "-m", "venv", "--without-pip", venv)
        python = venv / "bin" / "python"
        site = Path(
            run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
        )
        for distribution in closure(requirements):
            copy_installed(distribution, site)
        pip = (sys.executable, "-m", "pip", "--python", python)
        run(*pip, "install", "--quiet", "--no-index", "--no-deps", wheel)
        run(*pip, "check")
        probe = (
            "import importlib.util, sys, resilient; "
            "assert importlib.util.find_spec('httpx') is None, 'the venv is not clean'; "
            f"assert resilient.__file__.startswith({str(venv)!r}), resilient.__file__; "
            f"loaded = [m for m in {OPTIONAL!r} if m in sys.modules]; "
            "assert not loaded, f'import resilient imported {loaded}'; "
            "print(resilient.__version__)"
        )
        # -I: no PYTHONPATH, no user site, no script directory: only the clean venv counts.
        installed = run(python, "-I", "-c", probe, cwd=Path(tmp)).strip()
        if installed != source_version():
            fail(f"installed version {installed} != {source_version()}")
        output = run(python, "-I", ROOT / "examples" / "quickstart.py", cwd=Path(tmp))
        if "gave up" not in output:
            fail(f"examples/quickstart.py printed an unexpected result:\n{output}")


def main() -> None:
    """Check the one sdist and the one wheel in the given folder."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
    wheels = sorted(folder.glob("resilient_patterns-*.whl"))
    sdists = sorted(folder.glob("resilient_patterns-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist in {folder}, found {wheels + sdists}")
    bin_dir = Path(sys.executable).parent
    run(bin_dir / "twine", "check", "--strict", wheels[0], sdists[0])
    run(bin_dir / "check-wheel-contents", wheels[0])
    requirements = check_wheel(wheels[0])
    check_sdist(sdists[0])
    check_clean_install(wheels[0], requirements)
    print(f"check_dist: {wheels[0].name} and {sdists[0].name} OK (clean install ran the example)")


if __name__ == "__main__":
    main()
