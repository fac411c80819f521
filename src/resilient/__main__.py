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
    for settings in config.pipelines.values():
        print()
        print(settings.to_toml())
    for name, options in config.servers.items():
        print()
        print(f"[servers.{name}]")
        for key, value in options.items():
            print(f"{key} = {_value(value)}")
    print()
    print("[rollout]")
    for key, value in config.rollout.items():
        print(f"{key} = {_value(value)}")
    return 0


def _value(value: object) -> str:
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


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
    from resilient.config._schema import schema_text

    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
