"""Codecs: how one version's record becomes bytes and back, within size and depth limits.

``JsonCodec`` is the default. It is strict where the standard library is lenient: duplicate
keys, ``NaN``/``Infinity`` and numbers that overflow to infinity are refused, invalid UTF-8
(including encoded surrogates) is refused, and nesting is bounded before the recursive parser
runs. ``ZlibCodec`` compresses another codec's bytes and inflates at most ``max_size`` bytes.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NoReturn, Protocol, final, runtime_checkable

from resilient import _validate as check
from resilient._exceptions import ConfigurationError

from ._errors import (
    EncodeError,
    MalformedPayloadError,
    NestingTooDeepError,
    PayloadTooLargeError,
    SerdeError,
)

__all__ = ["Codec", "JsonCodec", "Limits", "ZlibCodec", "json_depth"]


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds every codec must respect, passed on each call.

    Attributes:
        max_size: the largest payload, in bytes, read or written (for a compressing codec,
            also the largest inflated size).
        max_depth: the deepest nesting of arrays and objects (a flat object is depth 1).
    """

    max_size: int
    max_depth: int


@runtime_checkable
class Codec(Protocol):
    """Turns one version's record (a ``dict``) into bytes and back.

    A codec must never execute code found in a payload (no pickle, no ``eval``), must refuse
    input beyond ``limits`` in bounded time and memory, and should raise
    ``MalformedPayloadError`` (reading) or ``EncodeError`` (writing). Any other exception it
    raises is wrapped in one of those by the serializer.
    """

    def encode(self, data: dict[str, Any], limits: Limits, /) -> bytes:
        """Encode a record."""
        ...

    def decode(self, data: bytes, limits: Limits, /) -> Any:
        """Decode a record (the serializer checks that the result is a ``dict``)."""
        ...


# --- nesting depth -------------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def json_depth(data: bytes) -> int:
    """Return the deepest nesting of arrays/objects in a JSON text, without parsing it.

    Linear time, no recursion, all in C loops: escape pairs are dropped, the text between
    quotes is dropped, and the remaining brackets are summed (+1 open, -1 close). Exact for
    valid JSON; for invalid JSON it is an estimate (the parser refuses such input anyway).
    """
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])
    brackets = data.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(map(_STEP.__getitem__, brackets)))


def _check_exact_depth(data: bytes, start: int, limits: Limits) -> None:
    depth = json_depth(data[start:] if start else data)
    if depth > limits.max_depth:
        raise NestingTooDeepError(
            f"payload nests {depth} levels deep, over max_depth={limits.max_depth}",
            limit=limits.max_depth,
        )


# --- strict JSON hooks -----------------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # pragma: no branch - a duplicate exists
            if key in seen:
                raise MalformedPayloadError(f"duplicate key {key[:64]!r} in a JSON object")
            seen.add(key)
    return obj


def _constant(name: str) -> NoReturn:
    raise MalformedPayloadError(f"{name} is not valid JSON (NaN and infinities are refused)")


def _float(text: str) -> float:
    value = float(text)
    if value - value == 0.0:  # finite (a digit string cannot be NaN, only overflow to inf)
        return value
    raise MalformedPayloadError("a number in the payload overflows a float (infinity refused)")


# The C encoder behind ``JSONEncoder`` (``None`` without the C accelerator); not in typeshed.
_C_MAKE_ENCODER: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)


def _encoder(ensure_ascii: bool, sort_keys: bool) -> Callable[[Any], str]:
    """Return ``encode(value) -> str``: compact JSON, NaN and infinities refused.

    The same text and errors as ``JSONEncoder(separators=(",", ":"), allow_nan=False,
    ...).encode`` without its per-call Python work (two frames, a closure the C encoder does
    not use, a new C encoder). C encoders are reused from a pool instead: each holds its
    circular-reference markers, which a successful call leaves empty; one that raised may
    hold stale markers and is dropped. An encoder is out of the pool while it runs, so
    threads and nested calls never share one.
    """
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=False, separators=(",", ":")
    )
    make = _C_MAKE_ENCODER
    if make is None:  # pragma: no cover - CPython always has the C accelerator
        return encoder.encode
    default = encoder.default
    string = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    idle: list[Callable[[Any, int], list[str]]] = []
    take = idle.pop
    give_back = idle.append
    join = "".join

    def encode(value: Any) -> str:
        try:
            c_encode = take()
        except IndexError:
            c_encode = make({}, default, string, None, ":", ",", sort_keys, False, False)
        chunks = c_encode(value, 0)
        give_back(c_encode)
        return join(chunks)

    return encode


@final
class JsonCodec:
    """Strict, compact JSON (the default codec).

    Writes compact JSON (no spaces) and refuses to write NaN or infinities. Reads RFC 8259
    JSON and refuses duplicate keys, ``NaN``/``Infinity``/``-Infinity``, numbers that
    overflow a float, invalid UTF-8 (encoded surrogates included), trailing data and
    nesting deeper than ``max_depth``. Integers longer than the interpreter's
    ``sys.get_int_max_str_digits()`` (4300 digits by default) are refused by the parser.

    Args:
        ensure_ascii: write non-ASCII text as ``\\uXXXX`` escapes (default ``True``: output is
            7-bit clean and every Python string, lone surrogates included, round-trips). With
            ``False`` the output is smaller for non-Latin text; a string holding a lone
            surrogate then cannot be written (``EncodeError``).
        sort_keys: write object keys sorted (stable bytes for equal records, e.g. for hashing
            or deduplication). Default ``False``: insertion order, as ``json.dumps``.
    """

    __slots__ = ("_encode", "_scan", "ensure_ascii", "sort_keys")

    def __init__(self, *, ensure_ascii: bool = True, sort_keys: bool = False) -> None:
        if not isinstance(ensure_ascii, bool):
            raise ConfigurationError("JsonCodec.ensure_ascii", ensure_ascii, "expected a bool")
        if not isinstance(sort_keys, bool):
            raise ConfigurationError("JsonCodec.sort_keys", sort_keys, "expected a bool")
        self.ensure_ascii = ensure_ascii
        self.sort_keys = sort_keys
        self._encode: Callable[[Any], str] = _encoder(ensure_ascii, sort_keys)
        decoder = json.JSONDecoder(
            object_pairs_hook=_object, parse_constant=_constant, parse_float=_float
        )
        # The C scanner behind JSONDecoder.raw_decode (set by JSONDecoder.__init__ since
        # Python 2.6); it raises StopIteration(index) where no value starts.
        self._scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"JsonCodec(ensure_ascii={self.ensure_ascii}, sort_keys={self.sort_keys})"

    def encode(self, data: dict[str, Any], limits: Limits, /) -> bytes:
        """Encode ``data`` as compact UTF-8 JSON.

        Raises:
            EncodeError: a value JSON cannot hold (NaN, infinity, an arbitrary object, a
                circular reference), or a result nested deeper than ``limits.max_depth``.
        """
        return self._writer(limits)(data)

    def _writer(self, limits: Limits) -> Callable[[Any], bytes]:
        """Return ``write(data)``, ``encode`` with ``limits`` bound.

        The serializer builds one per written version at construction, as ``_reader``: locals
        instead of attribute lookups and calls on the hot path.
        """
        encode = self._encode
        max_depth = limits.max_depth

        def write(data: Any) -> bytes:
            try:
                out = encode(data).encode("utf-8")
            except (TypeError, ValueError, RecursionError) as exc:
                raise EncodeError(f"cannot encode the record as JSON: {exc}") from exc
            # The count of opening brackets bounds the depth from above and costs two C
            # scans; the exact (still linear) computation only runs past the limit.
            if out.count(b"{") + out.count(b"[") > max_depth:
                try:
                    _check_exact_depth(out, 0, limits)
                except NestingTooDeepError as exc:
                    raise EncodeError(f"cannot write the record: {exc}") from exc
            return out

        return write

    def decode(self, data: bytes, limits: Limits, /) -> Any:
        """Decode one JSON document from UTF-8 bytes.

        Raises:
            MalformedPayloadError: invalid UTF-8 or JSON, duplicate keys, NaN or infinity,
                trailing data; ``NestingTooDeepError`` past ``limits.max_depth``.
        """
        return self._reader(limits)(data, 0)

    def _reader(self, limits: Limits) -> Callable[[bytes, int], Any]:
        """Return ``read(payload, start)`` decoding the JSON document at ``start``.

        The serializer builds one per version at construction: locals instead of attribute
        lookups on the hot path. Decoding the whole payload (an ASCII tag plus the body) and
        starting the scanner at ``start`` saves a copy of the body; calling the C scanner
        directly skips ``json.loads``' two regex passes and ``raw_decode``'s Python frame.
        """
        scan = self._scan
        max_depth = limits.max_depth

        def read(payload: bytes, start: int) -> Any:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedPayloadError(
                    f"payload is not valid UTF-8 (byte {exc.start - start} of the body)"
                ) from exc
            # A version tag holds no bracket: counting from 0 equals counting from `start`.
            if payload.count(b"{") + payload.count(b"[") > max_depth:
                _check_exact_depth(payload, start, limits)
            try:
                value, end = scan(text, start)
            except Exception as exc:
                value, end = _rescan(exc, scan, text, start, limits)
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise MalformedPayloadError(
                    f"unexpected data after the JSON document at character {end - start}"
                )
            return value

        return read


def _rescan(
    exc: Exception,
    scan: Callable[[str, int], tuple[Any, int]],
    text: str,
    start: int,
    limits: Limits,
) -> tuple[Any, int]:
    """The scanner failed at ``start``: retry after leading whitespace, else map the error."""
    if isinstance(exc, StopIteration):
        # Leading whitespace is valid JSON but never written by us: slow path only.
        skipped = _WHITESPACE.match(text, start).end()  # type: ignore[union-attr]
        if skipped != start:
            try:
                return scan(text, skipped)
            except Exception as again:
                exc = again
    if isinstance(exc, SerdeError):  # raised by our hooks: duplicate key, NaN, overflow
        raise exc
    if isinstance(exc, StopIteration):  # the scanner's "no JSON value starts here"
        raise MalformedPayloadError(
            f"payload is not valid JSON: expecting a value at character {exc.value - start}"
        ) from None
    if isinstance(exc, json.JSONDecodeError):
        raise MalformedPayloadError(
            f"payload is not valid JSON: {exc.msg} at character {exc.pos - start}"
        ) from exc
    if isinstance(exc, RecursionError):
        raise NestingTooDeepError(
            f"payload nests deeper than the parser allows (max_depth={limits.max_depth})",
            limit=limits.max_depth,
        ) from exc
    if isinstance(exc, ValueError):  # e.g. an integer longer than the interpreter's limit
        raise MalformedPayloadError(f"payload holds an invalid value: {exc}") from exc
    raise exc


@final
class ZlibCodec:
    """Compresses another codec's bytes with zlib (checksummed) and inflates safely.

    Reading inflates at most ``max_size`` bytes, so a small "zip bomb" payload costs at most
    ``max_size`` of memory before ``PayloadTooLargeError``. A truncated or corrupted stream
    fails the zlib checksum and raises ``MalformedPayloadError``.

    Args:
        inner: the codec whose output is compressed (default ``JsonCodec()``).
        level: zlib compression level, 0 (none) to 9 (smallest), default 6.

    Raises:
        ConfigurationError: ``inner`` is not a codec or ``level`` is out of range.
    """

    __slots__ = ("inner", "level")

    def __init__(self, inner: Codec | None = None, *, level: int = 6) -> None:
        candidate: object = JsonCodec() if inner is None else inner
        if not isinstance(candidate, Codec):
            raise ConfigurationError(
                "ZlibCodec.inner", inner, "expected a codec with encode() and decode()"
            )
        self.inner: Codec = candidate
        self.level = check.integer("ZlibCodec.level", level, minimum=0, maximum=9)

    def __repr__(self) -> str:
        return f"ZlibCodec({self.inner!r}, level={self.level})"

    def encode(self, data: dict[str, Any], limits: Limits, /) -> bytes:
        """Encode with ``inner`` and compress.

        Raises:
            EncodeError: from ``inner``.
        """
        return zlib.compress(self.inner.encode(data, limits), self.level)

    def decode(self, data: bytes, limits: Limits, /) -> Any:
        """Inflate (at most ``limits.max_size`` bytes) and decode with ``inner``.

        Raises:
            PayloadTooLargeError: the inflated data is over ``limits.max_size``.
            MalformedPayloadError: not a complete zlib stream, a checksum mismatch, trailing
                data, or whatever ``inner`` refuses.
        """
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, limits.max_size + 1)
        except zlib.error as exc:
            raise MalformedPayloadError(f"payload is not a valid zlib stream: {exc}") from exc
        if len(out) > limits.max_size:
            raise PayloadTooLargeError(
                f"compressed payload inflates past max_size={limits.max_size} bytes",
                size=len(out),
                limit=limits.max_size,
            )
        if not inflater.eof:
            raise MalformedPayloadError("zlib stream is truncated")
        if inflater.unused_data:
            raise MalformedPayloadError("unexpected data after the zlib stream")
        return self.inner.decode(out, limits)
