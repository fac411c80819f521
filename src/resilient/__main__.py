"""``python -m resilient``: command-line tools.

``python -m resilient check resilience.toml`` validates a configuration file (with the
environment's overrides unless ``--no-env``) and prints the effective pipelines; it exits
with status 1 and lists every problem when the file is invalid. ``python -m resilient schema``
prints the JSON Schema of the format. Nothing is imported beyond what the command needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _check(path: str, use_env: bool) -> int:
    from resilient.config import InvalidConfigError, read

    try:
        config = read(path, env=None if use_env else {})
    except InvalidConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    count = len(config.pipelines)
    print(f"# {path}: valid, {count} pipeline{'s' if count != 1 else ''}")
    print()
    print(config.to_toml(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m resilient", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file", help="the TOML file (resilience.toml)")
    check.add_argument(
        "--no-env", action="store_true", help="ignore RESILIENT__* environment overrides"
    )
    commands.add_parser("schema", help="print the JSON Schema of the configuration format")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.file, not args.no_env)
    from pathlib import Path

    from resilient.config import schema_path

    sys.stdout.write(Path(schema_path()).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
