"""Malformed and hostile payloads: only library errors come out, in bounded time and memory.

A hand-written corpus names each attack and the error it must get; hypothesis throws random
bytes and mutations of valid payloads at every version's reader. Nothing is ever decoded with
pickle or anything that executes code: the codecs are JSON and zlib only.
"""

from __future__ import annotations

import contextlib
import enum
import json
import pickle
import sys
import threading
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resilient.serde import (
    Codec,
    EncodeError,
    JsonCodec,
    Limits,
    MalformedPayloadError,
    NestingTooDeepError,
    PayloadTooLargeError,
    SerdeError,
    UnsupportedVersionError,
    Version,
    VersionedSerializer,
    ZlibCodec,
)
from resilient.serde._codec import json_depth
from test_serde import users

READER = users(3)
V3_TAG = b"@v3:"


def v3(body: bytes) -> bytes:
    """A version-3 payload (zlib-compressed JSON) around raw JSON bytes."""
    return V3_TAG + zlib.compress(body)


def _pickled() -> bytes:
    return pickle.dumps({"id": 1})


BOMB = v3(b'{"a":"' + b"0" * (16 << 20) + b'"}')  # 16 MiB of zeros in about 16 KiB


CORPUS: list[tuple[str, bytes, type[SerdeError]]] = [
    ("empty", b"", MalformedPayloadError),
    ("tag only", b"@v1:", MalformedPayloadError),
    ("truncated tag", b"@v1", MalformedPayloadError),
    ("tag without number", b"@v:{}", MalformedPayloadError),
    ("tag with letters", b"@vx:{}", MalformedPayloadError),
    ("tag with leading zero", b"@v01:{}", MalformedPayloadError),
    ("negative version", b"@v-1:{}", MalformedPayloadError),
    ("version zero", b"@v0:{}", MalformedPayloadError),
    ("huge version", b"@v" + b"9" * 40 + b":{}", MalformedPayloadError),
    ("future version", b'@v4:{"id":1}', UnsupportedVersionError),
    ("far future version", b"@v999999999:{}", UnsupportedVersionError),
    ("truncated object", b'@v1:{"id":1,"name":"Ad', MalformedPayloadError),
    ("truncated after key", b'@v1:{"id"', MalformedPayloadError),
    ("trailing garbage", b'@v1:{"id":1,"name":"a"}x', MalformedPayloadError),
    ("two documents", b'@v1:{"id":1,"name":"a"}{}', MalformedPayloadError),
    ("duplicate key", b'@v1:{"id":1,"id":2,"name":"a"}', MalformedPayloadError),
    ("nested duplicate key", b'@v1:{"id":1,"name":"a","x":{"k":1,"k":1}}', MalformedPayloadError),
    ("NaN", b'@v1:{"id":NaN,"name":"a"}', MalformedPayloadError),
    ("Infinity", b'@v1:{"id":Infinity,"name":"a"}', MalformedPayloadError),
    ("-Infinity", b'@v1:{"id":-Infinity,"name":"a"}', MalformedPayloadError),
    ("float overflow", b'@v1:{"id":1e999,"name":"a"}', MalformedPayloadError),
    ("negative overflow", b'@v1:{"id":-1.5e400,"name":"a"}', MalformedPayloadError),
    ("huge integer", b'@v1:{"id":' + b"9" * 5000 + b',"name":"a"}', MalformedPayloadError),
    ("invalid utf-8", b'@v1:{"id":1,"name":"\xff"}', MalformedPayloadError),
    ("overlong utf-8", b'@v1:{"id":1,"name":"\xc0\xaf"}', MalformedPayloadError),
    ("encoded surrogate", b'@v1:{"id":1,"name":"\xed\xa0\x80"}', MalformedPayloadError),
    ("truncated utf-8", b'@v1:{"id":1,"name":"\xe2\x82"}', MalformedPayloadError),
    ("utf-8 bom", b'@v1:\xef\xbb\xbf{"id":1,"name":"a"}', MalformedPayloadError),
    ("nul byte", b'@v1:{"id":1,\x00"name":"a"}', MalformedPayloadError),
    ("control char in string", b'@v1:{"id":1,"name":"a\x01"}', MalformedPayloadError),
    ("single quotes", b"@v1:{'id':1,'name':'a'}", MalformedPayloadError),
    ("trailing comma", b'@v1:{"id":1,"name":"a",}', MalformedPayloadError),
    ("bad escape", b'@v1:{"id":1,"name":"\\x41"}', MalformedPayloadError),
    ("unterminated escapes", b'@v1:{"name":"' + b'\\"' * 1000, MalformedPayloadError),
    ("array record", b"@v1:[1,2,3]", MalformedPayloadError),
    ("string record", b'@v1:"text"', MalformedPayloadError),
    ("null record", b"@v1:null", MalformedPayloadError),
    ("missing field", b'@v1:{"id":1}', MalformedPayloadError),
    ("deep arrays", b"@v1:" + b"[" * 100_000 + b"]" * 100_000, NestingTooDeepError),
    ("deep unclosed", b"@v1:" + b"[" * 1_000_000, NestingTooDeepError),
    ("deep objects", b"@v1:" + b'{"a":' * 10_000 + b"1" + b"}" * 10_000, NestingTooDeepError),
    (
        "deep inside a field",
        b'@v1:{"id":1,"name":' + b"[" * 65 + b"]" * 65 + b"}",
        NestingTooDeepError,
    ),
    ("oversized", b'@v1:{"id":1,"name":"' + b"a" * (1 << 20) + b'"}', PayloadTooLargeError),
    ("legacy garbage", b"\x00\x01\x02", MalformedPayloadError),
    ("legacy deep", b"[" * 100_000, NestingTooDeepError),
    ("pickle", _pickled(), MalformedPayloadError),
    ("v3 not zlib", V3_TAG + b'{"id":1,"full_name":"a"}', MalformedPayloadError),
    ("v3 truncated", v3(b'{"id":1,"full_name":"a","email":null}')[:-6], MalformedPayloadError),
    ("v3 trailing", v3(b'{"id":1,"full_name":"a","email":null}') + b"x", MalformedPayloadError),
    (
        "v3 bad checksum",
        v3(b'{"id":1,"full_name":"a","email":null}')[:-1] + b"\x00",
        MalformedPayloadError,
    ),
    ("v3 zip bomb", BOMB, PayloadTooLargeError),
    ("v3 nan inside", v3(b'{"id":NaN,"full_name":"a","email":null}'), MalformedPayloadError),
    ("v3 deep inside", v3(b"[" * 100_000), NestingTooDeepError),
]


@pytest.mark.parametrize(
    ("payload", "error"),
    [pytest.param(payload, error, id=name) for name, payload, error in CORPUS],
)
def test_hand_written_hostile_corpus(payload: bytes, error: type[SerdeError]) -> None:
    """Each hostile payload gets its specific library error, never anything else."""
    with pytest.raises(error):
        READER.loads(payload)


def test_zip_bomb_is_small_but_refused_before_inflating_it_all() -> None:
    assert len(BOMB) < 100_000
    with pytest.raises(PayloadTooLargeError) as info:
        READER.loads(BOMB)
    assert info.value.limit == 1 << 20
    assert info.value.size == (1 << 20) + 1  # inflating stopped right past the limit


def test_oversized_text_payload_is_refused_before_encoding() -> None:
    with pytest.raises(PayloadTooLargeError):
        users(1, write=1, max_size=100).loads("x" * 101)


def test_depth_is_bounded_but_brackets_inside_strings_do_not_count() -> None:
    """The depth pre-scan ignores brackets in strings (escaped quotes included)."""
    serializer = users(1, write=1, max_depth=2)
    name = '[[[{{{\\"[[[' * 50
    payload = b'@v1:{"id":1,"name":"' + name.encode() + b'","x":[1]}'
    assert serializer.loads(payload)["name"] == json.loads(f'"{name}"')
    with pytest.raises(NestingTooDeepError) as info:
        serializer.loads(b'@v1:{"id":1,"name":"a","x":[[1]]}')
    assert info.value.limit == 2


def test_whitespace_around_the_json_body_is_accepted() -> None:
    assert READER.loads(b'@v1: \n{"id":1,"name":"a"}\r\n\t ') == {
        "id": 1,
        "full_name": "a",
        "email": None,
    }


def test_escaped_lone_surrogates_are_valid_json_and_round_trip() -> None:
    record = READER.loads(b'@v1:{"id":1,"name":"\\ud800"}')
    assert record["full_name"] == "\ud800"
    assert READER.loads(READER.dumps(record)) == record


def test_a_custom_codec_that_crashes_or_returns_junk_gives_library_errors() -> None:
    class Crashing:
        def encode(self, data: dict[str, Any], limits: Limits, /) -> bytes:
            return b"x"

        def decode(self, data: bytes, limits: Limits, /) -> Any:
            if data == b"x":
                raise IndexError("codec bug")
            return [1, 2]

    assert isinstance(Crashing(), Codec)
    serializer = VersionedSerializer(versions=[Version(1, codec=Crashing())], write=1)
    with pytest.raises(MalformedPayloadError) as info:
        serializer.loads(b"@v1:x")
    assert isinstance(info.value.__cause__, IndexError)
    with pytest.raises(MalformedPayloadError, match="holds a list"):
        serializer.loads(b"@v1:y")


def test_a_crashing_legacy_reader_gives_a_library_error() -> None:
    def reader(data: bytes) -> dict[str, Any]:
        raise RuntimeError("legacy bug")

    with pytest.raises(MalformedPayloadError):
        users(1, write=1, legacy=reader).loads(b"old")


# --- property-based: random bytes and mutations of valid payloads -------------------------------


def _valid_payloads() -> list[bytes]:
    writer = users(3, write=3, writable=(1, 2, 3))
    record = {
        "id": 12,
        "full_name": "Ada Lovelace",
        "email": "ada@example.org",
        "tags": [1, {"k": None}],
    }
    return [writer.dumps(record, version=v) for v in (1, 2, 3)] + [b'{"id": 1, "name": "x"}']


VALID = _valid_payloads()


def _reads_or_refuses(payload: bytes) -> None:
    try:
        result = READER.loads(payload)
    except SerdeError:
        return
    assert isinstance(result, dict)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=300))
@example(payload=b"@v1:" + b"[" * 5000)
@example(payload=b"@v3:x\x9c")
def test_random_bytes_give_only_library_errors(payload: bytes) -> None:
    _reads_or_refuses(payload)
    _reads_or_refuses(b"@v1:" + payload)
    _reads_or_refuses(b"@v3:" + payload)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(VALID),
    position=st.integers(min_value=0, max_value=10_000),
    replacement=st.binary(min_size=0, max_size=4),
    cut=st.booleans(),
)
def test_mutated_valid_payloads_give_only_library_errors(
    base: bytes, position: int, replacement: bytes, cut: bool
) -> None:
    """Truncation at any point, and any bytes replaced or inserted anywhere."""
    position %= len(base) + 1
    if cut:
        _reads_or_refuses(base[:position])
    _reads_or_refuses(base[:position] + replacement + base[position + len(replacement) :])
    _reads_or_refuses(base[:position] + replacement + base[position:])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_gives_only_library_errors(text: str) -> None:
    for payload in (text, "@v1:" + text, '@v1:{"id":1,"name":' + text):
        with contextlib.suppress(SerdeError):
            READER.loads(payload)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


json_trees = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=json_trees, ensure_ascii=st.booleans())
def test_depth_prescan_is_exact_for_valid_json(value: Any, ensure_ascii: bool) -> None:
    """The linear pre-scan agrees with the real nesting depth, brackets in strings aside."""
    assert json_depth(json.dumps(value, ensure_ascii=ensure_ascii).encode()) == _depth(value)


def test_json_codec_used_directly_is_as_strict() -> None:
    codec = JsonCodec()
    limits = Limits(max_size=1 << 20, max_depth=4)
    assert codec.decode(b'{"a":[1]}', limits) == {"a": [1]}
    for bad in (b'{"a":1,"a":1}', b"NaN", b"[[[[[1]]]]]", b"\xff", b"1 2"):
        with pytest.raises(MalformedPayloadError):
            codec.decode(bad, limits)
    assert ZlibCodec().decode(zlib.compress(b"[1]"), limits) == [1]


@settings(max_examples=200, deadline=None)
@given(
    value=json_trees | st.floats(allow_nan=False, allow_infinity=False),
    ensure_ascii=st.booleans(),
    sort_keys=st.booleans(),
)
def test_json_codec_writes_what_json_dumps_writes(
    value: Any, ensure_ascii: bool, sort_keys: bool
) -> None:
    """The codec calls the C encoder directly (pooled): the bytes are ``json.dumps``' own."""
    codec = JsonCodec(ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    expected = json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        sort_keys=sort_keys,
        allow_nan=False,
        separators=(",", ":"),
    ).encode()
    assert codec.encode(value, Limits(max_size=1 << 20, max_depth=1_000)) == expected


def test_an_encoder_that_failed_is_not_reused() -> None:
    """An encode that fails inside a container leaves the C encoder's circular-reference
    markers behind; reusing that encoder would refuse the same container later as
    circular. The pool drops it."""
    codec = JsonCodec()
    limits = Limits(max_size=1 << 20, max_depth=64)
    shared: list[Any] = [1, {"x": object()}]
    record = {"shared": shared}
    with pytest.raises(EncodeError, match="not JSON serializable"):
        codec.encode(record, limits)
    shared[1] = {"x": 2}
    assert codec.encode(record, limits) == b'{"shared":[1,{"x":2}]}'
    circular: dict[str, Any] = {"id": 1}
    circular["self"] = circular
    with pytest.raises(EncodeError, match="Circular reference"):
        PLAIN.dumps(circular)
    del circular["self"]
    assert PLAIN.loads(PLAIN.dumps(circular)) == {"id": 1}


def test_encoders_are_not_shared_between_threads() -> None:
    """Threads writing the same record at once never see each other's markers (a dict
    subclass runs Python code inside the C encoder, so threads switch mid-encode)."""

    class Items(dict[str, Any]):
        def items(self) -> Any:
            return list(super().items())

    serializer = VersionedSerializer(versions=[Version(1, codec=JsonCodec())], write=1)
    record = {"rows": [Items(a=[1, 2], b=Items(c=[3])) for _ in range(50)]}
    expected = serializer.dumps(record)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(100):
                assert serializer.dumps(record) == expected
        except BaseException as exc:  # reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=write) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


# --- what dumps() writes always reads back --------------------------------------------------

PLAIN = VersionedSerializer(versions=[Version(1)], write=1)


@pytest.mark.parametrize(
    ("record", "where"),
    [
        ({1: "a", "1": "b"}, "duplicate key '1'"),  # two keys JSON writes alike
        ({1: "a"}, "key 1 (int)"),
        ({True: 1}, "key True (bool), which reads back as the string 'true'"),
        ({None: 1}, "key None"),
        ({1.5: 1}, "key 1.5"),
        ({"pair": (1, 2)}, "record['pair'] is a tuple"),
        ({"a": {"b": [{2: 3}]}}, "record['a']['b'][0] has the key 2"),
    ],
)
def test_dumps_refuses_a_record_that_would_not_read_back(
    record: dict[Any, Any], where: str
) -> None:
    """A record JSON cannot represent faithfully is refused when written, naming where, so
    no payload is ever written that reads back different or not at all."""
    with pytest.raises(EncodeError) as caught:
        PLAIN.dumps(record)
    assert where in str(caught.value)


def test_values_that_read_back_equal_are_written() -> None:
    """Subclasses of JSON's types that compare equal (an IntEnum, a str subclass) and
    every JSON scalar are accepted: what is read back equals what was written."""

    class Level(enum.IntEnum):
        HIGH = 3

    class Tag(str):
        pass

    record = {"level": Level.HIGH, "tag": Tag("x"), "n": [None, True, -0.0, 10**30, 1e-300]}
    assert PLAIN.loads(PLAIN.dumps(record)) == record


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    record=st.dictionaries(
        st.one_of(st.text(max_size=3), st.integers(-3, 3), st.booleans(), st.none()),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.tuples(inner, inner)
                | st.dictionaries(st.text(max_size=2) | st.integers(0, 2), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    )
)
def test_whatever_dumps_writes_loads_reads_back_equal(record: dict[Any, Any]) -> None:
    """The property: ``dumps()`` either refuses with an ``EncodeError`` or writes a payload
    that ``loads()`` reads back equal to the record."""
    try:
        payload = PLAIN.dumps(record)
    except EncodeError:
        return
    assert PLAIN.loads(payload) == record


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_deep_record_gives_the_serializers_error_not_a_recursion_error() -> None:
    """A record nested deep enough to exhaust Python's recursion in the downgrade check, or
    in the encoder, is refused with an ``EncodeError`` (it was a bare RecursionError)."""
    downgrading = VersionedSerializer(
        versions=[
            Version(1),
            Version(
                2, upgrade=lambda r: {"d": _nest(5000)}, downgrade=lambda r: {"d": _nest(5000)}
            ),
        ],
        write=1,
        max_depth=10_000,
    )
    with pytest.raises(EncodeError, match="too deep"):
        downgrading.dumps({"d": _nest(5000)})
    deep = VersionedSerializer(versions=[Version(1)], write=1, max_depth=10_000)
    with pytest.raises(EncodeError):
        deep.dumps({"d": _nest(5000)})


def test_a_deep_payload_gives_the_serializers_error() -> None:
    """Reading a payload nested within ``max_depth`` but past the parser's recursion gives a
    library error too."""
    deep = VersionedSerializer(versions=[Version(1)], write=1, max_depth=10_000)
    with pytest.raises(MalformedPayloadError):
        deep.loads(b'@v1:{"d":' + b"[" * 9000 + b"]" * 9000 + b"}")


def test_the_write_callables_own_error_still_propagates_unchanged() -> None:
    """Converting every failure does not swallow what the ``write`` callable raises."""

    class Flag(Exception):
        pass

    def write() -> int:
        raise Flag("feature flag service down")

    serializer = VersionedSerializer(versions=[Version(1)], write=write)
    with pytest.raises(Flag):
        serializer.dumps({"a": 1})
