"""Checked by ``mypy --strict`` (``make typecheck``): the serializer's type follows its model."""

from __future__ import annotations

import dataclasses
from typing import Any, assert_type

from resilient.serde import Converter, Version, VersionedSerializer


@dataclasses.dataclass
class User:
    id: int
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


records = VersionedSerializer(versions=[Version(1)], write=1)
assert_type(records, VersionedSerializer[dict[str, Any]])
assert_type(records.loads(b"@v1:{}"), dict[str, Any])
assert_type(records.dumps({"id": 1}), bytes)

users = VersionedSerializer(versions=[Version(1)], write=lambda: 1, model=User)
assert_type(users.loads(b"@v1:{}"), User)
assert_type(users.version_of(b"@v1:{}"), int | None)
users.dumps(User(1))
users.dumps({"id": 1})  # type: ignore[arg-type]

pairs = VersionedSerializer(
    versions=[Version(1)],
    write=1,
    model=Converter(from_data=lambda d: (d["id"], d), to_data=lambda p: p[1]),
)
assert_type(pairs.loads("@v1:{}"), tuple[Any, dict[str, Any]])

VersionedSerializer(versions=[Version(1)], write="1")  # type: ignore[call-overload]
