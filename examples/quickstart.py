"""A first pipeline: a total timeout, a per-attempt timeout, and remaining() inside the call.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import anyio

import resilient

pipeline = resilient.Pipeline(
    resilient.Timeout(1.0, name="total"),
    resilient.Timeout(0.2, name="attempt"),
    name="quickstart",
)


@pipeline.wrap
async def fetch(delay: float) -> str:
    await anyio.sleep(delay)
    return f"answered after {delay}s with {resilient.remaining():.2f}s to spare"


async def main() -> None:
    print(await fetch(0.05))
    try:
        await fetch(5.0)
    except resilient.TimeoutExceeded as exc:
        print(
            f"gave up: {exc} (policy={exc.policy!r}, is TimeoutError: "
            f"{isinstance(exc, TimeoutError)})"
        )


if __name__ == "__main__":
    anyio.run(main)
