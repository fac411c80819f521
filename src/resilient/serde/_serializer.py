"""``VersionedSerializer``: versioned payloads, upgrade/downgrade steps, two-phase rollouts.

Payload layout: an ASCII tag ``@v<version>:`` followed by the version's codec bytes, e.g.
``@v2:{"id":7,"name":"Ada"}``. The tag is never valid JSON (so untagged JSON written before
the serializer is told apart), costs four bytes for versions 1-9, is read without decoding
the body, and lets each version use any codec, binary ones included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from itertools import pairwise
from typing import Any, Generic, Literal, TypeVar, final, overload

from resilient import _validate as check
from resilient._exceptions import ConfigurationError

from ._codec import Codec, JsonCodec, Limits
from ._errors import (
    EncodeError,
    LossyWriteError,
    MalformedPayloadError,
    PayloadTooLargeError,
    SerdeError,
    UnsupportedVersionError,
)
from ._model import Converter, adapt

__all__ = ["Step", "Version", "VersionedSerializer"]

T = TypeVar("T")

Step = Callable[[dict[str, Any]], dict[str, Any]]
"""An upgrade or downgrade between adjacent versions: takes one version's record (a ``dict``)
and returns the adjacent version's record. It may mutate its argument; it must not keep it."""

MAX_VERSION = 999_999_999
DEFAULT_MAX_SIZE = 1 << 20
DEFAULT_MAX_DEPTH = 64

_TAG = re.compile(rb"@v([1-9][0-9]{0,8}):")


_JSON = JsonCodec()
_MISSING = object()


def _tag(number: int) -> bytes:
    return b"@v%d:" % number


_PLAIN = frozenset({str, int, float, bool, type(None)})
_JSON_KEYS: dict[object, str] = {True: "true", False: "false", None: "null"}


def _plain(data: dict[str, Any]) -> bool:
    """Whether ``data`` holds only what every codec reads back as it was written.

    Dicts with ``str`` keys, lists, and ``str``/``int``/``float``/``bool``/``None`` values
    (exact types). Iterative, breadth first: the loop runs over a list of the containers
    met, which grows as it goes (cheaper than a stack's pops). Called only on a record the
    codec already encoded, so it is acyclic and within ``max_depth``.
    """
    plain = _PLAIN
    containers: list[Any] = [data]
    add = containers.append
    for item in containers:
        kind = type(item)
        if kind is dict:
            for key, value in item.items():
                if type(key) is not str:
                    return False
                if type(value) not in plain:
                    add(value)
        elif kind is list:
            for value in item:
                if type(value) not in plain:
                    add(value)
        else:
            return False
    return True


def _first_difference(written: Any, read: Any, path: str = "record") -> str:
    """Where the read-back record first differs (for the error message; iterative)."""
    stack = [(written, read, path)]
    while stack:
        a, b, where = stack.pop()
        if type(a) is not type(b):
            return f"{where} is a {type(a).__name__} that reads back as a {type(b).__name__}"
        if isinstance(a, dict):
            for key in a:
                if type(key) is not str:
                    return (
                        f"{where} has the key {key!r} ({type(key).__name__}), which reads back "
                        f"as the string {_JSON_KEYS.get(key, str(key))!r}"
                    )
                if key not in b:
                    return f"{where}[{key!r}] does not read back"
                stack.append((a[key], b[key], f"{where}[{key!r}]"))
        elif isinstance(a, list):
            if len(a) != len(b):
                return f"{where} reads back with another length"
            stack.extend((x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
        elif a != b:
            return f"{where} = {a!r} reads back as {b!r}"
    return "the record reads back different"


@final
@dataclass(frozen=True, slots=True)
class Version:
    """One version of a record format: its codec and the steps to its neighbours.

    Args:
        number: the version number, a positive integer; a serializer's versions are
            consecutive (1, 2, 3 ...).
        upgrade: turns a record of version ``number - 1`` into one of this version. Required
            for every version but the oldest declared.
        downgrade: turns a record of this version into one of version ``number - 1``.
            Required when this release may write a version older than this one.
        codec: how records of this version become bytes (default: strict compact JSON). The
            codec may change from one version to the next.

    Raises:
        ConfigurationError: a number that is not a positive integer, a step that is not
            callable, a codec without ``encode``/``decode``.
    """

    number: int
    _: KW_ONLY
    upgrade: Step | None = None
    downgrade: Step | None = None
    codec: Codec = _JSON

    def __post_init__(self) -> None:
        check.integer("Version.number", self.number, minimum=1, maximum=MAX_VERSION)
        check.optional(check.callable_, "Version.upgrade", self.upgrade)
        check.optional(check.callable_, "Version.downgrade", self.downgrade)
        if not isinstance(self.codec, Codec):
            raise ConfigurationError(
                "Version.codec", self.codec, "expected a codec with encode() and decode()"
            )


@final
class _FunctionReader:
    """Adapts a plain ``bytes -> data`` function declared as the legacy reader."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[bytes], Any]) -> None:
        self.function = function

    def __repr__(self) -> str:
        return f"legacy reader {getattr(self.function, '__qualname__', self.function)!r}"

    def decode(self, data: bytes, limits: Limits, /) -> Any:
        return self.function(data)


@final
class _State:
    """Everything needed to read or write one version, resolved at construction."""

    __slots__ = ("codec", "downgrades", "header", "number", "read", "upgrades", "write")

    def __init__(
        self,
        number: int,
        header: bytes,
        codec: Codec | _FunctionReader,
        upgrades: tuple[tuple[int, Step], ...],
        downgrades: tuple[tuple[int, Step], ...],
        *,
        limits: Limits,
        writes: bool = False,
    ) -> None:
        self.number = number
        self.header = header
        self.codec = codec
        # (target version, step) pairs, applied in order: this version -> newest on read,
        # newest -> this version on write.
        self.upgrades = upgrades
        self.downgrades = downgrades
        self.read = _reader(codec, number, limits)
        # ``write(data) -> body`` for a written version (its codec can encode), else None.
        self.write = _writer(codec, limits) if writes else None  # type: ignore[arg-type]


def _reader(
    codec: Codec | _FunctionReader, number: int, limits: Limits
) -> Callable[[bytes, int], Any]:
    """``read(payload, start)`` for one version: the JSON fast path, or any codec with every
    exception it raises reported as ``MalformedPayloadError``."""
    if type(codec) is JsonCodec:
        return codec._reader(limits)
    decode = codec.decode

    def read(payload: bytes, start: int) -> Any:
        try:
            return decode(payload[start:] if start else payload, limits)
        except SerdeError:
            raise
        except Exception as exc:
            raise MalformedPayloadError(
                f"{codec!r} cannot decode a version {number} payload ({type(exc).__name__})"
            ) from exc

    return read


def _writer(codec: Codec, limits: Limits) -> Callable[[dict[str, Any]], bytes]:
    """``write(data)`` for one version: the JSON fast path, or the codec's ``encode``."""
    if type(codec) is JsonCodec:
        return codec._writer(limits)
    encode = codec.encode

    def write(data: dict[str, Any]) -> bytes:
        return encode(data, limits)

    return write


def _versions_list(numbers: Iterable[int]) -> str:
    return ", ".join(map(str, numbers))


@final
class VersionedSerializer(Generic[T]):
    """A serializer for one kind of record whose format changes over releases.

    Every payload carries its version. The serializer reads a set of versions and writes one
    (which may be older than the newest it knows): the application always works with the
    newest version's model, records of older versions are upgraded step by step when read,
    and downgraded step by step when an older version is written. That is what a two-phase
    rollout needs: release N+1 reads {1, 2} and writes 1; once it runs everywhere, release
    N+2 (or a flag) writes 2; rolling back either release lands on code that reads every
    payload already written.

    Args:
        versions: every version this release knows, oldest to newest, consecutive numbers.
        write: the version written, or a no-argument callable returning it on each write
            (a feature flag or a percentage rollout switches it without a redeploy).
        read: the versions this release reads (default: every declared version).
        writable: the versions ``write`` may return and ``dumps(version=)`` may ask for
            (default: ``write`` itself, or every readable version when ``write`` is a
            callable). Each needs downgrade steps from the newest version.
        model: the application type: ``None`` for plain ``dict`` records, a dataclass, a
            pydantic v2 model class, or a ``Converter``.
        unknown: what happens to fields of a payload the model does not declare: ``"keep"``
            (default; they survive a read-modify-write) or ``"drop"`` (dataclass/pydantic
            models only; an explicit choice to lose them).
        extra_field: the dataclass field (a ``dict``) that carries unknown fields with
            ``unknown="keep"``. Default ``"extra"``.
        legacy: reader for payloads without a version tag (written before the serializer):
            a codec, or a function ``bytes -> dict``.
        legacy_version: the version untagged payloads hold (default: the oldest declared).
        write_legacy: write ``legacy_version`` untagged with the ``legacy`` codec (the first
            release that adopts the serializer must still write what the previous release
            reads). Default ``False``.
        max_size: largest payload read or written, in bytes (default 1 MiB).
        max_depth: deepest nesting of arrays/objects read or written (default 64).
        check_downgrade: before writing an older version, upgrade the downgraded record back
            and refuse the write (``LossyWriteError``) if anything changed. Default ``True``.
        name: the record kind, used in error messages (default ``"record"``).

    Raises:
        ConfigurationError: naming the parameter and value: versions not consecutive or
            duplicated, a missing upgrade or downgrade step, a write version that is not
            readable, a model that cannot keep unknown fields, bad limits.
    """

    __slots__ = (
        "_check_downgrade",
        "_fast",
        "_from_data",
        "_legacy_state",
        "_legacy_version",
        "_limits",
        "_max_size",
        "_model_description",
        "_name",
        "_newest",
        "_read_versions",
        "_readable",
        "_to_data",
        "_writable",
        "_writable_versions",
        "_write_fn",
        "_write_state",
    )

    @overload
    def __init__(
        self: VersionedSerializer[dict[str, Any]],
        *,
        versions: Sequence[Version],
        write: int | Callable[[], int],
        read: Iterable[int] | None = None,
        writable: Iterable[int] | None = None,
        model: None = None,
        unknown: Literal["keep", "drop"] = "keep",
        extra_field: str = "extra",
        legacy: Codec | Callable[[bytes], Any] | None = None,
        legacy_version: int | None = None,
        write_legacy: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        check_downgrade: bool = True,
        name: str = "record",
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        versions: Sequence[Version],
        write: int | Callable[[], int],
        read: Iterable[int] | None = None,
        writable: Iterable[int] | None = None,
        model: type[T] | Converter[T],
        unknown: Literal["keep", "drop"] = "keep",
        extra_field: str = "extra",
        legacy: Codec | Callable[[bytes], Any] | None = None,
        legacy_version: int | None = None,
        write_legacy: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        check_downgrade: bool = True,
        name: str = "record",
    ) -> None: ...

    def __init__(
        self,
        *,
        versions: Sequence[Version],
        write: int | Callable[[], int],
        read: Iterable[int] | None = None,
        writable: Iterable[int] | None = None,
        model: Any = None,
        unknown: Literal["keep", "drop"] = "keep",
        extra_field: str = "extra",
        legacy: Codec | Callable[[bytes], Any] | None = None,
        legacy_version: int | None = None,
        write_legacy: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        check_downgrade: bool = True,
        name: str = "record",
    ) -> None:
        p = "VersionedSerializer."
        self._name = check.name(p + "name", name)
        declared = _check_versions(versions)
        numbers = tuple(declared)
        newest = numbers[-1]
        self._newest = newest
        _check_upgrades(declared, numbers)

        readable = numbers if read is None else _check_subset(p + "read", read, numbers)
        if not readable:
            raise ConfigurationError(p + "read", read, "must name at least one version")
        write_fn, writable_versions = _write_plan(write, writable, readable)
        _check_downgrades(declared, writable_versions, write, writable, write_fn)

        self._max_size = check.integer(p + "max_size", max_size, minimum=1)
        check.integer(p + "max_depth", max_depth, minimum=1, maximum=10_000)
        self._limits = Limits(max_size=max_size, max_depth=max_depth)
        if not isinstance(check_downgrade, bool):
            raise ConfigurationError(p + "check_downgrade", check_downgrade, "expected a bool")
        self._check_downgrade = check_downgrade
        if unknown not in ("keep", "drop"):
            raise ConfigurationError(p + "unknown", unknown, "expected 'keep' or 'drop'")
        check.name(p + "extra_field", extra_field)
        adapter = adapt(model, unknown=unknown, extra_field=extra_field)
        self._from_data = adapter.from_data
        self._to_data = adapter.to_data
        self._model_description = adapter.description

        self._readable = {n: self._state(declared, n, declared[n].codec) for n in readable}
        self._fast = {s.header: s for s in self._readable.values() if len(s.header) == 4}
        self._writable = {
            n: self._state(declared, n, declared[n].codec, writes=True) for n in writable_versions
        }
        self._legacy_state: _State | None = None
        self._legacy_version: int | None = None
        if legacy is None:
            if legacy_version is not None:
                raise ConfigurationError(
                    p + "legacy_version", legacy_version, "needs a legacy reader (legacy=)"
                )
            if write_legacy:
                raise ConfigurationError(
                    p + "write_legacy", write_legacy, "needs a legacy codec (legacy=)"
                )
        else:
            legacy_version, legacy_codec = _legacy_reader(
                legacy, legacy_version, numbers[0], readable
            )
            self._legacy_version = legacy_version
            self._legacy_state = self._state(declared, legacy_version, legacy_codec, tagged=False)
            if _writes_legacy(legacy, legacy_codec, write_legacy):
                self._write_legacy(declared, legacy_version, legacy_codec, writable_versions)

        self._read_versions = readable
        self._writable_versions = writable_versions
        self._write_fn = write_fn
        self._write_state = None if write_fn is not None else self._writable[write]  # type: ignore[index]

    def _state(
        self,
        declared: dict[int, Version],
        number: int,
        codec: Codec | _FunctionReader,
        *,
        tagged: bool = True,
        writes: bool = False,
    ) -> _State:
        """Version ``number``'s state: read (and with ``writes``, write) with ``codec``.

        ``tagged=False``: payloads without a version tag (the legacy version).
        """
        newest = self._newest
        # Every step is there: _check_upgrades and _check_downgrades refused a missing one.
        upgrades: tuple[tuple[int, Step], ...] = tuple(
            (n, declared[n].upgrade)  # type: ignore[misc]
            for n in range(number + 1, newest + 1)
        )
        downgrades: tuple[tuple[int, Step], ...] = ()
        if writes:
            downgrades = tuple(
                (n - 1, declared[n].downgrade)  # type: ignore[misc]
                for n in range(newest, number, -1)
            )
        header = _tag(number) if tagged else b""
        return _State(
            number, header, codec, upgrades, downgrades, limits=self._limits, writes=writes
        )

    def _write_legacy(
        self,
        declared: dict[int, Version],
        legacy_version: int,
        codec: Codec | _FunctionReader,
        writable_versions: tuple[int, ...],
    ) -> None:
        """Write ``legacy_version`` untagged with the legacy ``codec`` (``write_legacy``).

        Raises:
            ConfigurationError: ``legacy_version`` is not a version this serializer writes.
        """
        if legacy_version not in self._writable:
            raise ConfigurationError(
                "VersionedSerializer.write_legacy",
                True,
                f"legacy_version {legacy_version} is not a version this serializer "
                f"writes ({_versions_list(writable_versions)})",
            )
        self._writable[legacy_version] = self._state(
            declared, legacy_version, codec, tagged=False, writes=True
        )

    # --- introspection -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The record kind named in error messages."""
        return self._name

    @property
    def newest(self) -> int:
        """The newest declared version: the shape of the application's model."""
        return self._newest

    @property
    def read_versions(self) -> tuple[int, ...]:
        """The versions this serializer reads, ascending."""
        return self._read_versions

    @property
    def writable_versions(self) -> tuple[int, ...]:
        """The versions this serializer may write, ascending."""
        return self._writable_versions

    @property
    def write_version(self) -> int:
        """The version the next ``dumps()`` writes (calls the ``write`` callable, if any).

        Raises:
            UnsupportedVersionError: the ``write`` callable returned a version that is not
                writable.
        """
        return self._resolve_write().number

    @property
    def legacy_version(self) -> int | None:
        """The version untagged payloads are read as, or ``None`` without a legacy reader."""
        return self._legacy_version

    @property
    def limits(self) -> Limits:
        """The size and depth limits applied to every payload."""
        return self._limits

    def __repr__(self) -> str:
        write = "<callable>" if self._write_fn is not None else self._write_state.number  # type: ignore[union-attr]
        return (
            f"VersionedSerializer(name={self._name!r}, read={self._read_versions}, "
            f"write={write}, model={self._model_description})"
        )

    def version_of(self, payload: bytes | bytearray | memoryview | str) -> int | None:
        """Return the version tag of a payload without decoding its body.

        Returns ``None`` for a payload without a version tag (written before the serializer).
        It does not say whether this release can read that version: see ``read_versions``.

        Raises:
            MalformedPayloadError: the payload starts like a tag but the tag is malformed.
            TypeError: ``payload`` is not bytes-like or ``str``.
        """
        if isinstance(payload, str):
            head = payload[:12].encode("utf-8", "replace")
        elif isinstance(payload, bytes | bytearray | memoryview):
            head = bytes(payload[:12])
        else:
            raise TypeError(f"expected bytes or str, got {type(payload).__name__}")
        if not head.startswith(b"@v"):
            return None
        match = _TAG.match(head)
        if match is None:
            raise MalformedPayloadError(f"{self._name}: payload has a malformed version tag")
        return int(match.group(1))

    # --- reading -------------------------------------------------------------------------

    def loads(self, payload: bytes | bytearray | memoryview | str) -> T:
        """Read a payload of any readable version and return the application's model.

        Untagged payloads go to the declared legacy reader. Records of older versions are
        upgraded step by step to the newest version.

        Args:
            payload: the bytes written by ``dumps`` (``str`` is accepted and encoded as UTF-8).

        Raises:
            UnsupportedVersionError: a version this release does not read (its ``supported``
                attribute lists what it reads), or an untagged payload without legacy reader.
            MalformedPayloadError: truncated, corrupted, invalid UTF-8, duplicate keys, NaN,
                not an object, refused by an upgrade step or the model;
                ``PayloadTooLargeError`` and ``NestingTooDeepError`` past the limits.
            TypeError: ``payload`` is not bytes-like or ``str``.
        """
        if type(payload) is not bytes:
            payload = self._as_bytes(payload)
        try:
            if len(payload) > self._max_size:
                raise PayloadTooLargeError(
                    f"payload is {len(payload)} bytes, over max_size={self._max_size}",
                    size=len(payload),
                    limit=self._max_size,
                )
            state = self._fast.get(payload[:4])
            if state is None:
                state, start = self._locate(payload)
            else:
                start = 4
            data = state.read(payload, start)
            if type(data) is not dict:
                raise MalformedPayloadError(
                    f"version {state.number} payload holds a {type(data).__name__}, "
                    "expected an object"
                )
            if state.upgrades:
                data = _upgrade(state.upgrades, data, MalformedPayloadError)
            from_data = self._from_data
            if from_data is None:
                return data  # type: ignore[no-any-return]
            try:
                return from_data(data)  # type: ignore[no-any-return]
            except SerdeError:
                raise
            except Exception as exc:
                raise MalformedPayloadError(
                    f"the {self._model_description} model refused a version {state.number} "
                    f"payload ({type(exc).__name__})"
                ) from exc
        except SerdeError as exc:
            _prefix(exc, self._name)
            raise
        except Exception as exc:  # RecursionError from a deep payload, and the like
            raise MalformedPayloadError(
                f"{self._name}: cannot read the payload ({type(exc).__name__}: {exc})"
            ) from exc

    def _as_bytes(self, payload: object) -> bytes:
        if isinstance(payload, str):
            if len(payload) > self._max_size:  # each character is at least one byte
                raise PayloadTooLargeError(
                    f"{self._name}: payload is over max_size={self._max_size} bytes",
                    size=len(payload),
                    limit=self._max_size,
                )
            try:
                return payload.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MalformedPayloadError(
                    f"{self._name}: payload text holds a lone surrogate at {exc.start}"
                ) from exc
        if isinstance(payload, bytearray | memoryview):
            size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
            if size > self._max_size:
                raise PayloadTooLargeError(
                    f"{self._name}: payload is {size} bytes, over max_size={self._max_size}",
                    size=size,
                    limit=self._max_size,
                )
            return bytes(payload)
        if isinstance(payload, bytes):  # a bytes subclass
            return bytes(payload)
        raise TypeError(f"expected bytes or str, got {type(payload).__name__}")

    def _locate(self, payload: bytes) -> tuple[_State, int]:
        if not payload:
            raise MalformedPayloadError("payload is empty")
        if not payload.startswith(b"@v"):
            if self._legacy_state is None:
                raise UnsupportedVersionError(
                    "payload has no version tag (written before the serializer?) and no "
                    f"legacy reader is declared; this release reads versions "
                    f"{_versions_list(self._read_versions)}",
                    version=None,
                    supported=self._read_versions,
                )
            return self._legacy_state, 0
        match = _TAG.match(payload)
        if match is None:
            raise MalformedPayloadError("payload has a malformed or truncated version tag")
        number = int(match.group(1))
        state = self._readable.get(number)
        if state is None:
            if number > self._newest:
                why = "a newer release wrote it; only write a version once every release reads it"
            else:
                why = "this release no longer reads that version"
            raise UnsupportedVersionError(
                f"payload is version {number}; this release reads versions "
                f"{_versions_list(self._read_versions)} ({why})",
                version=number,
                supported=self._read_versions,
            )
        return state, match.end()

    # --- writing -------------------------------------------------------------------------

    def dumps(self, obj: T, *, version: int | None = None) -> bytes:
        """Write a record in the current write version (or ``version``).

        Args:
            obj: the application's model (a ``dict`` when the serializer has no model).
            version: write this version instead of the configured one; it must be writable.

        Raises:
            EncodeError: the object is not of the model's type, a value cannot be encoded,
                the record would not read back equal (a non-string key, keys that collide
                once written, a tuple), a step failed, the payload would exceed
                ``max_size``/``max_depth``, or anything else failed (a ``RecursionError``
                included); ``LossyWriteError`` when an older version cannot hold the record.
            UnsupportedVersionError: ``version`` (or the ``write`` callable's answer) is not
                writable. An exception raised by the ``write`` callable itself propagates
                unchanged.
        """
        state = self._write_state if version is None else None
        chosen: object = version
        if state is None and version is None:
            # The write callable runs outside the conversion below: its own exception
            # propagates unchanged.
            chosen = self._write_fn()  # type: ignore[misc]
        try:
            if state is None:
                state = self._writable.get(chosen) if type(chosen) is int else None
                if state is None:
                    raise self._unwritable(chosen)
            # A plain dict record without a model skips the call (the common case).
            data: dict[str, Any] = (
                obj  # type: ignore[assignment]
                if type(obj) is dict and self._to_data is None
                else self._record_data(obj)
            )
            if state.downgrades:
                data = self._downgrade(state, data)
            return self._encode(state, data)
        except SerdeError as exc:
            _prefix(exc, self._name)
            raise
        except Exception as exc:  # RecursionError from a deep record, MemoryError aside
            raise EncodeError(
                f"{self._name}: cannot write the record ({type(exc).__name__}: {exc})"
            ) from exc

    def _record_data(self, obj: Any) -> dict[str, Any]:
        """The record as a dict, through the model's ``to_data`` when there is a model.

        Raises:
            EncodeError: ``obj`` is not a dict (no model), or the model cannot convert it.
        """
        to_data = self._to_data
        if to_data is None:
            if not isinstance(obj, dict):
                raise EncodeError(f"expected a dict record, got {type(obj).__name__}")
            return obj
        try:
            data = to_data(obj)
        except SerdeError:
            raise
        except Exception as exc:
            raise EncodeError(
                f"the {self._model_description} model cannot convert the object "
                f"({type(exc).__name__})"
            ) from exc
        if type(data) is not dict:
            raise EncodeError(
                f"the {self._model_description} model returned a "
                f"{type(data).__name__}, expected a dict"
            )
        return data

    def _encode(self, state: _State, data: dict[str, Any]) -> bytes:
        """The payload of ``data`` in ``state``'s version: header and encoded body.

        Raises:
            EncodeError: the codec cannot encode it, it would not read back equal, or it
                exceeds ``max_size``.
        """
        try:
            body = state.write(data)  # type: ignore[misc]
        except SerdeError:
            raise
        except Exception as exc:
            raise EncodeError(
                f"{state.codec!r} cannot encode a version {state.number} record "
                f"({type(exc).__name__})"
            ) from exc
        if not _plain(data):
            self._check_reads_back(state.codec, state.number, data, body)  # type: ignore[arg-type]
        payload = state.header + body if state.header else body
        if len(payload) > self._max_size:
            raise EncodeError(
                f"version {state.number} payload would be {len(payload)} bytes, over "
                f"max_size={self._max_size}"
            )
        return payload

    def _check_reads_back(
        self, codec: Codec, number: int, data: dict[str, Any], body: bytes
    ) -> None:
        """Refuse a record that would not read back equal (non-string keys, tuples...)."""
        try:
            read = codec.decode(body, self._limits)
        except MalformedPayloadError as exc:
            # Two keys that JSON writes alike ({1: "a", "1": "b"}) read back as a duplicate.
            raise EncodeError(
                f"version {number} record would not read back: {exc} (non-string keys "
                "are written as strings and collide with string keys)"
            ) from exc
        except SerdeError:
            raise
        except Exception as exc:
            raise EncodeError(
                f"version {number} record would not read back ({type(exc).__name__})"
            ) from exc
        if read != data:
            raise EncodeError(
                f"version {number} record would not read back as written: "
                f"{_first_difference(data, read)}; write only str keys, lists (not tuples) "
                "and JSON's scalar types"
            )

    def _resolve_write(self) -> _State:
        state = self._write_state
        if state is not None:
            return state
        version = self._write_fn()  # type: ignore[misc]
        state = self._writable.get(version) if type(version) is int else None
        if state is None:
            raise self._unwritable(version)
        return state

    def _unwritable(self, version: object) -> UnsupportedVersionError:
        return UnsupportedVersionError(
            f"cannot write version {version!r}; this serializer writes versions "
            f"{_versions_list(self._writable_versions)}",
            version=version if type(version) is int else None,
            supported=self._writable_versions,
            operation="write",
        )

    def _downgrade(self, state: _State, original: dict[str, Any]) -> dict[str, Any]:
        # A shallow copy first: a step may mutate its argument, and `original` may be the
        # caller's own dict.
        data = _upgrade(state.downgrades, dict(original), EncodeError, "downgrade")
        if self._check_downgrade:
            back = _upgrade(state.upgrades, dict(data), EncodeError)
            try:
                lost = back != original
            except RecursionError as exc:
                raise EncodeError(
                    f"the record nests too deep to check the downgrade to version {state.number} "
                    "(the comparison hit Python's recursion limit; lower max_depth or pass "
                    "check_downgrade=False)"
                ) from exc
            if lost:
                fields = tuple(
                    sorted(
                        str(key)
                        for key in original.keys() | back.keys()
                        if original.get(key, _MISSING) != back.get(key, _MISSING)
                    )
                )
                raise LossyWriteError(
                    f"writing version {state.number} would lose data in field(s) "
                    f"{', '.join(fields) or '(nested values)'}: downgrading to version "
                    f"{state.number} and upgrading back changes them. Keep such fields as "
                    "extra fields in the older version (readers keep unknown fields), or "
                    "pass check_downgrade=False to accept the loss",
                    version=state.number,
                    fields=fields,
                )
        return data


def _upgrade(
    steps: tuple[tuple[int, Step], ...],
    data: dict[str, Any],
    error: type[MalformedPayloadError] | type[EncodeError],
    kind: str = "upgrade",
) -> dict[str, Any]:
    for target, step in steps:
        try:
            data = step(data)
        except SerdeError:
            raise
        except Exception as exc:
            raise error(
                f"the {kind} step to version {target} failed ({type(exc).__name__})"
            ) from exc
        if type(data) is not dict:
            raise error(
                f"the {kind} step to version {target} returned a {type(data).__name__}, "
                "expected a dict"
            )
    return data


def _prefix(exc: SerdeError, name: str) -> None:
    if exc.args and isinstance(exc.args[0], str) and not exc.args[0].startswith(name + ": "):
        exc.args = (f"{name}: {exc.args[0]}", *exc.args[1:])


def _check_upgrades(declared: dict[int, Version], numbers: tuple[int, ...]) -> None:
    """Every version after the oldest has its upgrade step.

    Raises:
        ConfigurationError: a version without one.
    """
    for number in numbers[1:]:
        if declared[number].upgrade is None:
            raise ConfigurationError(
                "VersionedSerializer.versions",
                declared[number],
                f"version {number} has no upgrade step from version {number - 1}: records "
                "of older versions are upgraded to the newest one, the application's model",
            )


def _legacy_reader(
    legacy: object, legacy_version: int | None, oldest: int, readable: tuple[int, ...]
) -> tuple[int, Codec | _FunctionReader]:
    """``(legacy version, reader)`` for untagged payloads (the version defaults to the oldest).

    Raises:
        ConfigurationError: ``legacy_version`` is not readable, or ``legacy`` is neither a
            codec nor a function.
    """
    p = "VersionedSerializer."
    if legacy_version is None:
        legacy_version = oldest
    if legacy_version not in readable:
        raise ConfigurationError(
            p + "legacy_version",
            legacy_version,
            f"must be one of the readable versions {_versions_list(readable)} "
            "(the default is the oldest declared version)",
        )
    if isinstance(legacy, Codec):
        return legacy_version, legacy
    if callable(legacy):
        return legacy_version, _FunctionReader(legacy)
    raise ConfigurationError(p + "legacy", legacy, "expected a codec or a function bytes -> dict")


def _writes_legacy(legacy: object, codec: Codec | _FunctionReader, write_legacy: object) -> bool:
    """Whether ``write_legacy`` asks to write untagged payloads with the legacy codec.

    Raises:
        ConfigurationError: ``write_legacy`` is not a bool, or it is True and the legacy
            reader is a function (it cannot encode).
    """
    p = "VersionedSerializer."
    if not isinstance(write_legacy, bool):
        raise ConfigurationError(p + "write_legacy", write_legacy, "expected a bool")
    if write_legacy and not isinstance(codec, Codec):
        raise ConfigurationError(
            p + "legacy", legacy, "write_legacy=True needs a codec that can encode, not a function"
        )
    return write_legacy


def _write_plan(
    write: int | Callable[[], int], writable: Iterable[int] | None, readable: tuple[int, ...]
) -> tuple[Callable[[], int] | None, tuple[int, ...]]:
    """``(write callable or None, writable versions)`` from the ``write``/``writable`` options.

    Raises:
        ConfigurationError: ``write`` is not a readable version nor a callable; ``writable``
            is empty, not readable, or leaves out a fixed ``write`` version.
    """
    p = "VersionedSerializer."
    if isinstance(write, int) and not isinstance(write, bool):
        if write not in readable:
            raise ConfigurationError(
                p + "write",
                write,
                f"must be one of the readable versions {_versions_list(readable)}: "
                "a release must read every version it writes",
            )
        write_fn: Callable[[], int] | None = None
        default_writable: tuple[int, ...] = (write,)
    elif callable(write) and not isinstance(write, bool):
        write_fn = write
        default_writable = readable
    else:
        raise ConfigurationError(
            p + "write", write, "expected a version number or a callable returning one"
        )
    if writable is None:
        return write_fn, default_writable
    writable_versions = _check_subset(p + "writable", writable, readable)
    if not writable_versions:
        raise ConfigurationError(p + "writable", writable, "must name a version")
    if write_fn is None and write not in writable_versions:
        raise ConfigurationError(
            p + "writable", writable, f"must include the write version {write}"
        )
    return write_fn, writable_versions


def _check_downgrades(
    declared: dict[int, Version],
    writable_versions: tuple[int, ...],
    write: object,
    writable: Iterable[int] | None,
    write_fn: Callable[[], int] | None,
) -> None:
    """Every writable version can be reached from the newest by downgrade steps.

    Raises:
        ConfigurationError: a step is missing (named on ``write`` when it alone chose the
            version, on ``writable`` otherwise).
    """
    newest = tuple(declared)[-1]
    for target in writable_versions:
        for number in range(target + 1, newest + 1):
            if declared[number].downgrade is None:
                static = writable is None and write_fn is None
                raise ConfigurationError(
                    "VersionedSerializer." + ("write" if static else "writable"),
                    write if static else writable_versions,
                    f"writing version {target} needs a downgrade step on version {number} "
                    f"(to version {number - 1}); the application's model is version "
                    f"{newest}",
                )


def _check_versions(versions: object) -> dict[int, Version]:
    parameter = "VersionedSerializer.versions"
    if isinstance(versions, Version) or not isinstance(versions, Sequence) or not versions:
        raise ConfigurationError(parameter, versions, "expected a non-empty list of Version")
    declared: dict[int, Version] = {}
    for version in versions:
        if not isinstance(version, Version):
            raise ConfigurationError(parameter, version, "expected a Version")
        if version.number in declared:
            raise ConfigurationError(
                parameter, version, f"version {version.number} is declared twice"
            )
        declared[version.number] = version
    numbers = sorted(declared)
    for lower, upper in pairwise(numbers):
        if upper != lower + 1:
            raise ConfigurationError(
                parameter,
                [v.number for v in versions],
                f"versions must be consecutive: version {lower + 1} is missing between "
                f"{lower} and {upper} (steps go between adjacent versions)",
            )
    return {n: declared[n] for n in numbers}


def _check_subset(parameter: str, value: object, allowed: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(value, int | str | bytes) or not isinstance(value, Iterable):
        raise ConfigurationError(parameter, value, "expected a set of version numbers")
    chosen = set()
    for number in value:
        if isinstance(number, bool) or number not in allowed:
            raise ConfigurationError(
                parameter,
                value,
                f"{number!r} is not a declared version ({_versions_list(allowed)})",
            )
        chosen.add(number)
    return tuple(sorted(chosen))
