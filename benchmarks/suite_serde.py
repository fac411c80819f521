"""Serde suite: VersionedSerializer against plain json.dumps/json.loads of the same record.

The record is a typical small one (10 fields: ints, floats, strings, a bool, a short list).
Gated: encode and decode each cost at most 1.3x the plain json call. Informative: a JSON
envelope design ({"v": 1, "data": ...}), reading an old version through an upgrade step,
writing an old version through a checked downgrade, and a dataclass model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from benchmarks._harness import Case, run_cases
from resilient.serde import JsonCodec, Version, VersionedSerializer

RECORD: dict[str, Any] = {
    "id": 123456,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "age": 36,
    "active": True,
    "score": 98.5,
    "tags": ["admin", "ops"],
    "created": "2024-05-01T12:30:00Z",
    "country": "GB",
    "balance": 1024.75,
}


@dataclasses.dataclass(slots=True)
class Account:
    id: int
    name: str
    email: str
    age: int
    active: bool
    score: float
    tags: list[str]
    created: str
    country: str
    balance: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _up(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "balance": record.get("balance", 0.0)}


def _down(record: dict[str, Any]) -> dict[str, Any]:
    return record  # version 1 keeps "balance" as an extra field: lossless


def _loop(function: Any, argument: Any) -> Case:
    async def case(n: int) -> None:
        for _ in range(n):
            function(argument)

    return case


def cases() -> dict[str, Case]:
    current = VersionedSerializer(versions=[Version(1)], write=1)
    two = [Version(1), Version(2, upgrade=_up, downgrade=_down)]
    phase_one = VersionedSerializer(versions=two, write=1)
    typed = VersionedSerializer(versions=[Version(1)], write=1, model=Account)
    text = json.dumps(RECORD)
    raw = text.encode()
    payload = current.dumps(RECORD)
    old_payload = b"@v1:" + raw  # a version-1 payload read by a release whose model is v2
    envelope = json.dumps({"v": 1, "data": RECORD}).encode()
    strict = JsonCodec()
    limits = current.limits
    account = typed.loads(payload)

    def envelope_dumps(record: dict[str, Any]) -> bytes:
        return json.dumps({"v": 1, "data": record}).encode()

    def envelope_loads(data: bytes) -> Any:
        # The same strictness (duplicate keys, NaN, depth) with the version inside the JSON.
        return strict.decode(data, limits)["data"]

    return {
        "json.dumps": _loop(json.dumps, RECORD),
        "VersionedSerializer.dumps": _loop(current.dumps, RECORD),
        "json.loads(str)": _loop(json.loads, text),
        "json.loads(bytes)": _loop(json.loads, raw),
        "VersionedSerializer.loads": _loop(current.loads, payload),
        "JSON envelope dumps (not chosen)": _loop(envelope_dumps, RECORD),
        "JSON envelope loads (not chosen)": _loop(envelope_loads, envelope),
        "loads v1 + upgrade step to v2": _loop(phase_one.loads, old_payload),
        "dumps v1 via checked downgrade": _loop(phase_one.dumps, RECORD),
        "dataclass model dumps": _loop(typed.dumps, account),
        "dataclass model loads": _loop(typed.loads, payload),
    }


# (case, reference, target ratio): the budget for the versioned envelope.
GATES = [
    ("VersionedSerializer.dumps", "json.dumps", 1.3),
    ("VersionedSerializer.loads", "json.loads(str)", 1.3),
]


def run(*, quick: bool) -> dict[str, float]:
    results = run_cases(cases(), calls=5_000 if quick else 40_000, rounds=9 if quick else 15)
    return {name: r.median_ns for name, r in results.items()}
