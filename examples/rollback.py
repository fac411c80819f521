"""Change a record format in two phases and roll back safely (resilient.serde).

The story, with a dict standing in for the database and one serializer per release:

1. The v1 fleet stores users as {"id", "name"}. Some rows predate the serializer (untagged).
2. Phase one ships code that knows version 2 ({"id", "given_name", "family_name"}), reads
   versions 1 and 2, and still writes version 1. Rolling it back is safe: everything is v1.
3. Phase two writes version 2 (here: the same code with the flag flipped).
4. Phase two misbehaves and is rolled back to phase one: every row, old and new, is still
   readable, and phase one's writes keep the version-2 fields.
5. Rolling back further, to the v1 fleet, would not be safe; the error says why.

Run: python examples/rollback.py
"""

from __future__ import annotations

import json
from typing import Any

from resilient.serde import JsonCodec, UnsupportedVersionError, Version, VersionedSerializer


def upgrade_to_v2(user: dict[str, Any]) -> dict[str, Any]:
    """Split "name". Shadow fields written by a v2-aware release win while they agree with it."""
    user = dict(user)
    name = user.pop("name")
    given, family = user.get("given_name"), user.get("family_name")
    if not (isinstance(given, str) and isinstance(family, str) and f"{given} {family}" == name):
        given, _, family = name.partition(" ")  # no shadow, or a v1 release renamed the user
    user["given_name"], user["family_name"] = given, family
    return user


def downgrade_to_v1(user: dict[str, Any]) -> dict[str, Any]:
    """Join the name for v1 readers and keep the v2 fields as shadow (unknown) fields."""
    return {**user, "name": f"{user['given_name']} {user['family_name']}"}


VERSIONS = [Version(1), Version(2, upgrade=upgrade_to_v2, downgrade=downgrade_to_v1)]
V1_ONLY = [Version(1)]
flags = {"users_v2": False}

releases = {
    "v1 fleet": VersionedSerializer(versions=V1_ONLY, write=1, legacy=JsonCodec(), name="user"),
    "phase one/two": VersionedSerializer(
        versions=VERSIONS,
        write=lambda: 2 if flags["users_v2"] else 1,  # phase two is a flag flip
        legacy=JsonCodec(),
        name="user",
    ),
}
store: dict[int, bytes] = {}


def show(title: str) -> None:
    print(f"\n== {title}")
    for key, payload in sorted(store.items()):
        tag = releases["v1 fleet"].version_of(payload)
        print(f"  row {key}: {'untagged' if tag is None else f'v{tag}':8} {payload.decode()}")


def check_everything_readable(release: str) -> None:
    serializer = releases[release]
    for key, payload in store.items():
        serializer.loads(payload)  # raises if anything is unreadable
        print(f"  {release} reads row {key}: ok")


# 1. The v1 fleet, with rows from before the serializer existed.
store[1] = json.dumps({"id": 1, "name": "Grace Hopper"}).encode()  # legacy, untagged
v1 = releases["v1 fleet"]
store[2] = v1.dumps({"id": 2, "name": "Ada Lovelace"})
show("v1 fleet: reads {1} (+ untagged), writes 1")

# 2. Phase one: reads {1, 2}, writes 1. Works with the v2 model everywhere in the code.
app = releases["phase one/two"]
user = app.loads(store[2])
print(f"\nphase one reads row 2 as the v2 model: {user}")
store[3] = app.dumps({"id": 3, "given_name": "Mary Ann", "family_name": "Evans"})
show("phase one: reads {1, 2}, writes 1")
print("  rollback to the v1 fleet is safe:")
check_everything_readable("v1 fleet")

# v1 nodes still run during the rollout: one renames row 3. It keeps the fields it does not
# know (given_name, family_name), now stale; phase one sees they disagree with "name".
row3 = v1.loads(store[3])
store[3] = v1.dumps({**row3, "name": "George Eliot"})
print(f"\na v1 node renames row 3: {store[3].decode()}")
print(f"phase one reads row 3 as: {app.loads(store[3])}")

# 3. Phase two: flip the flag (or deploy the same code with write=2); writes are version 2.
flags["users_v2"] = True
store[4] = app.dumps({"id": 4, "given_name": "Hedy", "family_name": "Lamarr"})
store[1] = app.dumps({**app.loads(store[1]), "family_name": "Murray Hopper"})
show("phase two: reads {1, 2}, writes 2")

# 4. Roll back to phase one (flag off): all rows readable, writes go back to version 1.
flags["users_v2"] = False
print("\n== rollback to phase one")
check_everything_readable("phase one/two")
hedy = app.loads(store[4])
store[4] = app.dumps({**hedy, "given_name": "Hedwig"})
print(f"  row 4 rewritten as v{app.version_of(store[4])}: {store[4].decode()}")
flags["users_v2"] = True
print(f"  phase two reads it back unchanged: {app.loads(store[4])}")

# 5. Rolling back past phase one is the move the playbook forbids.
print("\n== what a rollback to the v1 fleet would do now")
try:
    v1.loads(store[1])
except UnsupportedVersionError as exc:
    print(f"  refused, as expected: {exc}")
    print(f"  (found version {exc.version}, this release reads {exc.supported})")
else:  # pragma: no cover - the story would be wrong
    raise SystemExit("the v1 fleet should not read version 2")

print("\nAll data stayed readable through phase one, phase two and the rollback.")
