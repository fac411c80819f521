"""VersionedSerializer: versions, steps, rollouts and rollbacks, golden files, round trips.

The "user" record family used throughout (and in tests/golden/serde/, forever):

- version 1: ``{"id", "name"}``; untagged JSON written before the serializer is version 1.
- version 2: adds an optional ``"email"``. Downgrading keeps a set email as an extra field
  of version 1 (readers keep unknown fields), so nothing is lost.
- version 3: renames ``"name"`` to ``"full_name"`` and switches to zlib-compressed JSON.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import ConfigurationError, ResilientError
from resilient.serde import (
    Converter,
    EncodeError,
    JsonCodec,
    LossyWriteError,
    MalformedPayloadError,
    NestingTooDeepError,
    PayloadTooLargeError,
    SerdeError,
    UnsupportedVersionError,
    Version,
    VersionedSerializer,
    ZlibCodec,
)

GOLDEN = Path(__file__).parent / "golden" / "serde"


def up_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "email": record.get("email")}


def down_to_v1(record: dict[str, Any]) -> dict[str, Any]:
    if record["email"] is None:
        del record["email"]  # steps may mutate their argument
    return record


def up_to_v3(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    record["full_name"] = record.pop("name")
    return record


def down_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    record["name"] = record.pop("full_name")
    return record


USER_VERSIONS = [
    Version(1),
    Version(2, upgrade=up_to_v2, downgrade=down_to_v1),
    Version(3, upgrade=up_to_v3, downgrade=down_to_v2, codec=ZlibCodec()),
]


def users(newest: int = 3, **options: Any) -> VersionedSerializer[dict[str, Any]]:
    """The serializer a release whose newest user version is ``newest`` would build."""
    options.setdefault("write", newest)
    options.setdefault("legacy", JsonCodec())
    return VersionedSerializer(versions=USER_VERSIONS[:newest], name="user", **options)


def as_version(record: dict[str, Any], version: int) -> dict[str, Any]:
    """A version-3 record as the application model of a release whose newest is ``version``."""
    if version <= 2:
        record = down_to_v2(record)
    if version == 1:
        record = down_to_v1(record)
    return record


# --- the two-phase rollout ---------------------------------------------------------------


def test_three_release_rollback_scenario() -> None:
    """v1 fleet, phase one (read 1+2, write 1), phase two (write 2), rollback to phase one:
    every payload ever written stays readable and no field is lost."""
    release0 = users(1, write=1)  # the v1 fleet
    phase_one = users(2, write=1)  # reads {1, 2}, writes 1
    phase_two = users(2, write=2)  # reads {1, 2}, writes 2
    store: dict[int, bytes] = {}

    store[1] = release0.dumps({"id": 1, "name": "Ada"})
    # Deploy phase one; a rollback to release 0 is safe because phase one writes version 1.
    record = phase_one.loads(store[1])
    assert record == {"id": 1, "name": "Ada", "email": None}
    store[2] = phase_one.dumps({"id": 2, "name": "Grace", "email": None})
    assert all(release0.version_of(p) == 1 for p in store.values())
    assert release0.loads(store[2]) == {"id": 2, "name": "Grace"}

    # Deploy phase two: new records carry version 2 and the new field.
    store[3] = phase_two.dumps({"id": 3, "name": "Hedy", "email": "hedy@example.org"})
    store[1] = phase_two.dumps({**phase_two.loads(store[1]), "email": "ada@example.org"})
    assert phase_two.version_of(store[3]) == 2

    # Roll back to phase one: it reads everything phase two wrote.
    for key, payload in store.items():
        assert phase_one.loads(payload)["id"] == key
    # A read-modify-write by phase one writes version 1 and keeps the email.
    hedy = phase_one.loads(store[3])
    store[3] = phase_one.dumps({**hedy, "name": "Hedy Lamarr"})
    assert phase_one.version_of(store[3]) == 1
    assert phase_two.loads(store[3]) == {
        "id": 3,
        "name": "Hedy Lamarr",
        "email": "hedy@example.org",
    }
    assert phase_one.loads(store[1])["email"] == "ada@example.org"


def test_release_zero_cannot_read_phase_two_data_and_says_why() -> None:
    """Rolling back past phase one is the unsafe move the playbook forbids: the error names
    the versions the old release reads and the version it found."""
    payload = users(2, write=2).dumps({"id": 1, "name": "Ada", "email": "a@example.org"})
    with pytest.raises(UnsupportedVersionError) as info:
        users(1, write=1).loads(payload)
    assert info.value.version == 2
    assert info.value.supported == (1,)
    assert info.value.operation == "read"
    assert "version 2" in str(info.value)
    assert "reads versions 1" in str(info.value)


def test_write_version_callable_is_a_feature_flag() -> None:
    """Phase two is a flag flip, not a redeploy: the callable is asked on every write."""
    flag = {"v2": False}
    serializer = users(2, write=lambda: 2 if flag["v2"] else 1)
    record = {"id": 1, "name": "Ada", "email": "a@example.org"}
    assert serializer.version_of(serializer.dumps(record)) == 1
    assert serializer.write_version == 1
    flag["v2"] = True
    assert serializer.version_of(serializer.dumps(record)) == 2
    assert serializer.write_version == 2


def test_percentage_rollout_writes_both_versions_and_all_read_back() -> None:
    """A callable drawing a random number writes a share of records in the new version."""
    rng = random.Random(7)
    serializer = users(2, write=lambda: 2 if rng.random() < 0.25 else 1)
    payloads = [serializer.dumps({"id": i, "name": f"n{i}", "email": None}) for i in range(400)]
    versions = [serializer.version_of(p) for p in payloads]
    assert 50 < versions.count(2) < 150
    assert [serializer.loads(p)["id"] for p in payloads] == list(range(400))


def test_write_callable_returning_an_unwritable_version_is_refused() -> None:
    """A flag that answers a version outside the writable set (or a bool) fails the write."""
    answer: list[object] = [3]
    serializer = users(2, write=lambda: answer[0])
    for bad in (3, True, None, "2"):
        answer[0] = bad
        with pytest.raises(UnsupportedVersionError) as info:
            serializer.dumps({"id": 1, "name": "Ada", "email": None})
        assert info.value.operation == "write"
        assert info.value.supported == (1, 2)


def test_writable_restricts_what_a_callable_may_choose() -> None:
    """writable= narrows the callable's choices (and the downgrade steps required)."""
    serializer = users(3, write=lambda: 2, writable=(2, 3))
    assert serializer.writable_versions == (2, 3)
    with pytest.raises(UnsupportedVersionError):
        serializer.dumps({"id": 1, "full_name": "Ada", "email": None}, version=1)


def test_dumps_version_writes_an_explicit_writable_version() -> None:
    serializer = users(3, write=3, writable=(1, 2, 3))
    record = {"id": 1, "full_name": "Ada", "email": None}
    for version in (1, 2, 3):
        payload = serializer.dumps(record, version=version)
        assert serializer.version_of(payload) == version
        assert serializer.loads(payload) == record


# --- round trips across every pair of versions ---------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
SCHEMA_FIELDS = {"id", "name", "full_name", "email"}
user_records = st.fixed_dictionaries(
    {
        "id": st.integers(),
        "full_name": st.text(),
        "email": st.none() | st.text(min_size=1),
    },
    optional=dict.fromkeys(
        ("nickname", "tags", "address", "\u00e9t\u00e9", "", "x" * 40, "ünknown"), json_values
    ),
)


@settings(max_examples=60, deadline=None)
@given(record=user_records, writer=st.sampled_from([1, 2, 3]), reader=st.sampled_from([1, 2, 3]))
def test_round_trip_across_every_pair_of_versions(
    record: dict[str, Any], writer: int, reader: int
) -> None:
    """Written as version `writer` (by a release that knows version 3), read by a release
    whose newest version is `reader`: equal to the record as that release models it, unknown
    fields included; or, when the reader is older than the payload, UnsupportedVersionError."""
    payload = users(3, write=3, writable=(1, 2, 3)).dumps(record, version=writer)
    reading = users(reader)
    if writer > reader:
        with pytest.raises(UnsupportedVersionError) as info:
            reading.loads(payload)
        assert info.value.version == writer
        assert info.value.supported == tuple(range(1, reader + 1))
    else:
        assert reading.loads(payload) == as_version(record, reader)


@settings(max_examples=40, deadline=None)
@given(record=user_records, version=st.sampled_from([1, 2, 3]))
def test_read_modify_write_by_an_older_release_keeps_newer_fields(
    record: dict[str, Any], version: int
) -> None:
    """A release that writes an older version keeps every field (newer ones included) across
    its read-modify-write; the newest release reads back exactly what was there."""
    newest = users(3)
    older = users(3, write=version)
    payload = older.dumps(older.loads(newest.dumps(record)))
    assert newest.version_of(payload) == version
    assert newest.loads(payload) == record


# --- golden files: every version ever written stays readable -------------------------------

GOLDEN_FILES = {
    "user_legacy.json": None,
    "user_v1.bin": 1,
    "user_v1_email.bin": 1,
    "user_v2.bin": 2,
    "user_v3.bin": 3,
}
EXPECTED = json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("filename", sorted(GOLDEN_FILES))
def test_golden_file_decodes_with_current_code(filename: str) -> None:
    """Golden payloads are never regenerated or deleted: the current code must read them."""
    payload = (GOLDEN / filename).read_bytes()
    serializer = users(3)
    assert serializer.version_of(payload) == GOLDEN_FILES[filename]
    assert serializer.loads(payload) == EXPECTED[filename]


def test_golden_files_cover_every_version() -> None:
    """Adding a version means adding its golden file (and never removing an old one)."""
    present = {p.name for p in GOLDEN.iterdir()}
    assert set(GOLDEN_FILES) <= present
    covered = {v for v in GOLDEN_FILES.values() if v is not None}
    assert covered == {v.number for v in USER_VERSIONS}


@pytest.mark.parametrize("filename", ["user_v1.bin", "user_v1_email.bin", "user_v2.bin"])
def test_json_golden_bytes_are_what_the_current_code_writes(filename: str) -> None:
    """The envelope and the JSON encoding are stable: writing the same record in the same
    version gives the same bytes (a change here breaks every reader of stored data)."""
    payload = (GOLDEN / filename).read_bytes()
    writer = users(3, write=3, writable=(1, 2, 3))
    assert writer.dumps(EXPECTED[filename], version=GOLDEN_FILES[filename]) == payload


# --- legacy (untagged) payloads -------------------------------------------------------------


def test_untagged_payload_is_read_by_the_declared_legacy_reader() -> None:
    serializer = users(2)
    payload = json.dumps({"id": 1, "name": "Ada"}).encode()
    assert serializer.version_of(payload) is None
    assert serializer.loads(payload) == {"id": 1, "name": "Ada", "email": None}
    assert serializer.legacy_version == 1


def test_legacy_reader_can_be_a_function_and_its_errors_become_library_errors() -> None:
    def parse(data: bytes) -> dict[str, Any]:
        ident, name = data.decode().split(",")
        return {"id": int(ident), "name": name}

    serializer = users(2, legacy=parse)
    assert serializer.loads(b"7,Ada") == {"id": 7, "name": "Ada", "email": None}
    with pytest.raises(MalformedPayloadError) as info:
        serializer.loads(b"not,a,csv")
    assert isinstance(info.value.__cause__, ValueError)


def test_legacy_version_names_which_version_untagged_payloads_hold() -> None:
    serializer = users(2, legacy_version=2)
    assert serializer.loads(b'{"id":1,"name":"Ada","email":"a@b"}')["email"] == "a@b"


def test_untagged_payload_without_legacy_reader_is_an_unsupported_version() -> None:
    serializer = users(2, legacy=None)
    with pytest.raises(UnsupportedVersionError) as info:
        serializer.loads(b'{"id": 1}')
    assert info.value.version is None
    assert info.value.supported == (1, 2)
    assert "no version tag" in str(info.value)


def test_write_legacy_lets_the_adopting_release_stay_readable_by_pre_serializer_code() -> None:
    """Adopting the serializer is a format change too: the first release reads tagged and
    untagged payloads but writes untagged ones that the old code (plain json) reads."""
    adopting = users(1, write=1, write_legacy=True)
    payload = adopting.dumps({"id": 1, "name": "Ada"})
    assert adopting.version_of(payload) is None
    assert json.loads(payload) == {"id": 1, "name": "Ada"}  # what the old release does
    tagged = users(1, write=1).dumps({"id": 2, "name": "Grace"})
    assert adopting.loads(tagged) == {"id": 2, "name": "Grace"}


# --- unknown fields survive a read-modify-write ----------------------------------------------


def test_dict_records_keep_unknown_fields_across_read_modify_write() -> None:
    newer = b'@v1:{"id":1,"name":"Ada","loyalty":{"tier":"gold"}}'
    serializer = users(1, write=1)
    record = serializer.loads(newer)
    record["name"] = "Ada L."
    assert json.loads(serializer.dumps(record)[4:]) == {
        "id": 1,
        "name": "Ada L.",
        "loyalty": {"tier": "gold"},
    }


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    id: int
    full_name: str
    email: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_dataclass_model_keeps_unknown_fields_in_its_extra_field() -> None:
    serializer = users(3, model=User)
    payload = users(3).dumps({"id": 1, "full_name": "Ada", "email": None, "loyalty": 3})
    user = serializer.loads(payload)
    assert user == User(1, "Ada", None, {"loyalty": 3})
    renamed = dataclasses.replace(user, full_name="Ada L.")  # a new object keeps its extra
    assert users(3).loads(serializer.dumps(renamed)) == {
        "id": 1,
        "full_name": "Ada L.",
        "email": None,
        "loyalty": 3,
    }


def test_dataclass_declared_field_wins_over_a_stale_extra_of_the_same_name() -> None:
    serializer = users(3, model=User)
    user = User(1, "Ada", None, {"full_name": "stale", "x": 1})
    assert users(3).loads(serializer.dumps(user))["full_name"] == "Ada"


def test_dataclass_without_extra_field_is_refused_unless_loss_is_explicit() -> None:
    @dataclasses.dataclass
    class Plain:
        id: int
        full_name: str
        email: str | None = None

    with pytest.raises(ConfigurationError) as info:
        users(3, model=Plain)
    assert info.value.parameter == "VersionedSerializer.model"
    assert "unknown='drop'" in str(info.value)
    dropping = users(3, model=Plain, unknown="drop")
    payload = users(3).dumps({"id": 1, "full_name": "Ada", "email": None, "loyalty": 3})
    assert dropping.loads(payload) == Plain(1, "Ada", None)


def test_dataclass_model_refuses_other_types_and_missing_fields() -> None:
    serializer = users(3, model=User)
    with pytest.raises(EncodeError, match="expected a User"):
        serializer.dumps({"id": 1})
    nameless = users(3).dumps({"id": 1, "email": None})
    with pytest.raises(MalformedPayloadError, match="model refused") as info:
        serializer.loads(nameless)
    assert isinstance(info.value.__cause__, TypeError)


class PydanticUser(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: int
    full_name: str
    email: str | None = None


def test_pydantic_model_with_extra_allow_keeps_unknown_fields() -> None:
    serializer = users(3, model=PydanticUser)
    payload = users(3).dumps({"id": 1, "full_name": "Ada", "email": None, "loyalty": 3})
    user = serializer.loads(payload)
    assert isinstance(user, PydanticUser)
    assert user.full_name == "Ada"
    assert users(3).loads(serializer.dumps(user))["loyalty"] == 3


def test_pydantic_model_without_extra_allow_is_refused() -> None:
    class Strict(pydantic.BaseModel):
        id: int

    with pytest.raises(ConfigurationError, match="extra='allow'"):
        users(3, model=Strict)
    assert users(3, model=Strict, unknown="drop").loads(b'@v1:{"id":1,"name":"x"}').id == 1


def test_pydantic_validation_failure_is_a_malformed_payload() -> None:
    with pytest.raises(MalformedPayloadError) as info:
        users(3, model=PydanticUser).loads(b'@v1:{"id":"not a number","name":"x"}')
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_converter_receives_every_field() -> None:
    seen: list[dict[str, Any]] = []

    def from_data(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen.append(data)
        return data["id"], data

    serializer = users(3, model=Converter(from_data=from_data, to_data=lambda obj: obj[1]))
    ident, data = serializer.loads(b'@v1:{"id":1,"name":"Ada","x":[1]}')
    assert ident == 1
    assert seen == [{"id": 1, "full_name": "Ada", "email": None, "x": [1]}]
    assert users(3).loads(serializer.dumps((ident, data))) == seen[0]


# --- downgrades must not lose data ------------------------------------------------------------


def lossy_versions() -> list[Version]:
    return [
        Version(1),
        Version(
            2,
            upgrade=lambda d: {**d, "email": None},
            downgrade=lambda d: {k: v for k, v in d.items() if k != "email"},
        ),
    ]


def test_a_lossy_downgrade_is_refused_and_names_the_fields() -> None:
    serializer = VersionedSerializer(versions=lossy_versions(), write=1)
    assert serializer.dumps({"id": 1, "email": None}) == b'@v1:{"id":1}'
    with pytest.raises(LossyWriteError) as info:
        serializer.dumps({"id": 1, "email": "secret@example.org"})
    assert info.value.version == 1
    assert info.value.fields == ("email",)
    assert "secret" not in str(info.value)  # messages never carry field values


def test_check_downgrade_false_accepts_the_loss() -> None:
    serializer = VersionedSerializer(versions=lossy_versions(), write=1, check_downgrade=False)
    assert serializer.dumps({"id": 1, "email": "a@b"}) == b'@v1:{"id":1}'


def test_downgrade_steps_never_mutate_the_callers_record() -> None:
    record = {"id": 1, "name": "Ada", "email": None}
    users(2, write=1).dumps(record)  # down_to_v1 deletes "email" from its argument
    assert record == {"id": 1, "name": "Ada", "email": None}


# --- introspection and inputs -------------------------------------------------------------------


def test_version_of_reads_the_tag_without_decoding() -> None:
    serializer = users(2)
    assert serializer.version_of(b"@v2:not even json") == 2
    assert serializer.version_of("@v12:") == 12
    assert serializer.version_of(bytearray(b'{"id":1}')) is None
    with pytest.raises(MalformedPayloadError):
        serializer.version_of(b"@vx:{}")
    with pytest.raises(TypeError):
        serializer.version_of(12)


def test_versions_with_several_digits() -> None:
    def step(d: dict[str, Any]) -> dict[str, Any]:
        return d

    versions = [Version(9), *(Version(n, upgrade=step, downgrade=step) for n in (10, 11))]
    serializer = VersionedSerializer(versions=versions, write=10)
    payload = serializer.dumps({"a": 1})
    assert payload == b'@v10:{"a":1}'
    assert serializer.loads(payload) == {"a": 1}
    assert serializer.loads(b'@v9:{"a":2}') == {"a": 2}
    with pytest.raises(UnsupportedVersionError) as info:
        serializer.loads(b'@v12:{"a":1}')
    assert info.value.version == 12


def test_loads_accepts_bytes_like_and_text() -> None:
    serializer = users(1, write=1)
    payload = serializer.dumps({"id": 1, "name": "Zoë"})
    for form in (payload, bytearray(payload), memoryview(payload), payload.decode()):
        assert serializer.loads(form) == {"id": 1, "name": "Zoë"}
    with pytest.raises(TypeError):
        serializer.loads(1)


def test_introspection() -> None:
    serializer = users(3, write=2, read=(2, 3), legacy=None, max_size=1000, max_depth=8)
    assert serializer.newest == 3
    assert serializer.read_versions == (2, 3)
    assert serializer.writable_versions == (2,)
    assert serializer.write_version == 2
    assert serializer.name == "user"
    assert (serializer.limits.max_size, serializer.limits.max_depth) == (1000, 8)
    assert "read=(2, 3)" in repr(serializer)
    assert "write=2" in repr(serializer)


def test_a_version_left_out_of_read_is_refused() -> None:
    serializer = users(3, write=3, read=(2, 3), legacy=None)
    with pytest.raises(UnsupportedVersionError, match="no longer reads"):
        serializer.loads(b'@v1:{"id":1,"name":"a"}')


# --- writing errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"id": float("nan")},
        {"id": float("inf")},
        {"id": object()},
        [1, 2],
        "text",
    ],
    ids=["nan", "inf", "object", "list", "str"],
)
def test_records_that_cannot_be_written_raise_encode_error(record: Any) -> None:
    with pytest.raises(EncodeError):
        users(1, write=1).dumps(record)


def test_a_circular_record_raises_encode_error() -> None:
    record: dict[str, Any] = {"id": 1}
    record["self"] = record
    with pytest.raises(EncodeError):
        users(1, write=1).dumps(record)


def test_writing_past_the_limits_is_refused() -> None:
    """A serializer never writes what it would refuse to read."""
    serializer = users(1, write=1, max_size=64, max_depth=3)
    with pytest.raises(EncodeError, match="max_size"):
        serializer.dumps({"id": 1, "name": "x" * 100})
    with pytest.raises(EncodeError, match="max_depth"):
        serializer.dumps({"id": 1, "name": [[[1]]]})


def test_failing_downgrade_step_raises_encode_error_with_cause() -> None:
    def broken(d: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("boom")

    serializer = VersionedSerializer(
        versions=[Version(1), Version(2, upgrade=lambda d: d, downgrade=broken)], write=1
    )
    with pytest.raises(EncodeError) as info:
        serializer.dumps({"id": 1})
    assert isinstance(info.value.__cause__, KeyError)


# --- construction errors name the parameter and the value ----------------------------------------


def _step(d: dict[str, Any]) -> dict[str, Any]:
    return d


CONFIG_ERRORS: list[tuple[str, Callable[[], object], str]] = [
    (
        "gap",
        lambda: VersionedSerializer(versions=[Version(1), Version(3, upgrade=_step)], write=1),
        "VersionedSerializer.versions",
    ),
    (
        "twice",
        lambda: VersionedSerializer(versions=[Version(1), Version(1)], write=1),
        "VersionedSerializer.versions",
    ),
    ("empty", lambda: VersionedSerializer(versions=[], write=1), "VersionedSerializer.versions"),
    (
        "not a list",
        lambda: VersionedSerializer(versions=Version(1), write=1),
        "VersionedSerializer.versions",
    ),
    (
        "no upgrade",
        lambda: VersionedSerializer(versions=[Version(1), Version(2)], write=2),
        "VersionedSerializer.versions",
    ),
    (
        "no downgrade",
        lambda: VersionedSerializer(versions=[Version(1), Version(2, upgrade=_step)], write=1),
        "VersionedSerializer.write",
    ),
    (
        "no downgrade for callable",
        lambda: VersionedSerializer(
            versions=[Version(1), Version(2, upgrade=_step)], write=lambda: 2
        ),
        "VersionedSerializer.writable",
    ),
    (
        "write not readable",
        lambda: VersionedSerializer(
            versions=[Version(1), Version(2, upgrade=_step, downgrade=_step)], write=1, read={2}
        ),
        "VersionedSerializer.write",
    ),
    (
        "write undeclared",
        lambda: VersionedSerializer(versions=[Version(1)], write=2),
        "VersionedSerializer.write",
    ),
    (
        "write bool",
        lambda: VersionedSerializer(versions=[Version(1)], write=True),
        "VersionedSerializer.write",
    ),
    (
        "read undeclared",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, read={1, 2}),
        "VersionedSerializer.read",
    ),
    (
        "read empty",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, read=()),
        "VersionedSerializer.read",
    ),
    (
        "read int",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, read=1),
        "VersionedSerializer.read",
    ),
    (
        "writable misses write",
        lambda: VersionedSerializer(
            versions=[Version(1), Version(2, upgrade=_step, downgrade=_step)], write=1, writable={2}
        ),
        "VersionedSerializer.writable",
    ),
    (
        "legacy_version alone",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, legacy_version=1),
        "VersionedSerializer.legacy_version",
    ),
    (
        "legacy_version unreadable",
        lambda: VersionedSerializer(
            versions=[Version(1)], write=1, legacy=JsonCodec(), legacy_version=2
        ),
        "VersionedSerializer.legacy_version",
    ),
    (
        "legacy default unreadable",
        lambda: VersionedSerializer(
            versions=[Version(1), Version(2, upgrade=_step)], write=2, read={2}, legacy=JsonCodec()
        ),
        "VersionedSerializer.legacy_version",
    ),
    (
        "legacy not callable",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, legacy=42),
        "VersionedSerializer.legacy",
    ),
    (
        "write_legacy without legacy",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, write_legacy=True),
        "VersionedSerializer.write_legacy",
    ),
    (
        "write_legacy with a function",
        lambda: VersionedSerializer(
            versions=[Version(1)], write=1, legacy=lambda b: {}, write_legacy=True
        ),
        "VersionedSerializer.legacy",
    ),
    (
        "write_legacy unwritable",
        lambda: VersionedSerializer(
            versions=[Version(1), Version(2, upgrade=_step)],
            write=2,
            legacy=JsonCodec(),
            write_legacy=True,
        ),
        "VersionedSerializer.write_legacy",
    ),
    (
        "max_size",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, max_size=0),
        "VersionedSerializer.max_size",
    ),
    (
        "max_depth",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, max_depth=10**6),
        "VersionedSerializer.max_depth",
    ),
    (
        "unknown",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, unknown="ignore"),
        "VersionedSerializer.unknown",
    ),
    (
        "drop with dicts",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, unknown="drop"),
        "VersionedSerializer.unknown",
    ),
    (
        "model",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, model=int),
        "VersionedSerializer.model",
    ),
    (
        "name",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, name=""),
        "VersionedSerializer.name",
    ),
    (
        "check_downgrade",
        lambda: VersionedSerializer(versions=[Version(1)], write=1, check_downgrade="yes"),
        "VersionedSerializer.check_downgrade",
    ),
    ("version number", lambda: Version(0), "Version.number"),
    ("version bool", lambda: Version(True), "Version.number"),
    ("upgrade", lambda: Version(2, upgrade="x"), "Version.upgrade"),
    ("codec", lambda: Version(1, codec=json), "Version.codec"),
    ("zlib level", lambda: ZlibCodec(level=10), "ZlibCodec.level"),
    ("zlib inner", lambda: ZlibCodec(json), "ZlibCodec.inner"),
    ("converter", lambda: Converter(from_data=1, to_data=dict), "Converter.from_data"),
    ("json option", lambda: JsonCodec(ensure_ascii=1), "JsonCodec.ensure_ascii"),
]


@pytest.mark.parametrize(
    ("build", "parameter"),
    [pytest.param(build, parameter, id=case) for case, build, parameter in CONFIG_ERRORS],
)
def test_configuration_errors_name_the_parameter_and_value(
    build: Callable[[], object], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert info.value.parameter == parameter
    assert str(info.value).startswith(parameter + "=")


def test_missing_step_error_says_which_step() -> None:
    with pytest.raises(ConfigurationError, match="downgrade step on version 3"):
        VersionedSerializer(
            versions=[
                Version(1),
                Version(2, upgrade=_step, downgrade=_step),
                Version(3, upgrade=_step),
            ],
            write=1,
        )
    with pytest.raises(ConfigurationError, match="version 2 is missing"):
        VersionedSerializer(versions=[Version(1), Version(3, upgrade=_step)], write=1)


# --- the error tree -------------------------------------------------------------------------------


def test_every_serde_error_is_a_resilient_error_and_a_value_error() -> None:
    for cls in (
        UnsupportedVersionError,
        MalformedPayloadError,
        PayloadTooLargeError,
        NestingTooDeepError,
        EncodeError,
        LossyWriteError,
    ):
        assert issubclass(cls, SerdeError)
    assert issubclass(SerdeError, ResilientError)
    assert issubclass(SerdeError, ValueError)
    assert issubclass(PayloadTooLargeError, MalformedPayloadError)
    assert issubclass(LossyWriteError, EncodeError)


def test_errors_pickle_with_their_attributes() -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        users(1, write=1).loads(b"@v3:{}")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.version, clone.supported, str(clone)) == (3, (1,), str(info.value))
    lossy = LossyWriteError("m", version=1, fields=("a",))
    assert pickle.loads(pickle.dumps(lossy)).fields == ("a",)


def test_error_messages_name_the_record_kind() -> None:
    with pytest.raises(MalformedPayloadError, match=r"^user: "):
        users(1, write=1).loads(b"@v1:{")


def test_step_failure_on_read_is_malformed_and_does_not_echo_values() -> None:
    with pytest.raises(MalformedPayloadError) as info:
        users(3).loads(b'@v2:{"id":1,"secret":"hunter2"}')  # no "name": up_to_v3 fails
    assert isinstance(info.value.__cause__, KeyError)
    assert "hunter2" not in str(info.value)


def test_rollback_example_runs_the_whole_story() -> None:
    """examples/rollback.py: v1 fleet, phase one, phase two, rollback; exits 0."""
    example = Path(__file__).parent.parent / "examples" / "rollback.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, check=True, timeout=60
    )
    assert "rollback to phase one" in result.stdout
    assert "All data stayed readable" in result.stdout


def test_serde_namespace_is_sorted_and_complete() -> None:
    from resilient import serde

    assert list(serde.__all__) == sorted(set(serde.__all__))
    public = {
        name
        for name, value in vars(serde).items()
        if not name.startswith("_") and not isinstance(value, type(serde))
    }
    assert public - {"annotations"} == set(serde.__all__)


def test_import_resilient_does_not_load_serde_and_serde_does_not_load_pydantic() -> None:
    code = (
        "import sys, resilient\n"
        "print('resilient.serde' in sys.modules)\n"
        "import resilient.serde\n"
        "print('pydantic' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
