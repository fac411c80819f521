"""Errors raised by ``resilient.serde``: read-side, write-side and version errors.

Messages name versions, limits and field names, never field values: a payload may hold
personal data, and error messages end up in logs.
"""

from __future__ import annotations

from typing import final

from resilient._exceptions import ResilientError

__all__ = [
    "EncodeError",
    "LossyWriteError",
    "MalformedPayloadError",
    "NestingTooDeepError",
    "PayloadTooLargeError",
    "SerdeError",
    "UnsupportedVersionError",
]


class SerdeError(ResilientError, ValueError):
    """Root of every error raised by ``resilient.serde``.

    It is also a ``ValueError``: a payload or a record that cannot be converted is a bad value.
    """

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructors do not survive pickling by default; rebuild from the
        # instance dict (errors cross process boundaries in task queues).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[SerdeError], args: tuple[object, ...], state: dict[str, object]
) -> SerdeError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


@final
class UnsupportedVersionError(SerdeError):
    """A payload's version is not one this release reads (or a version it cannot write).

    Attributes:
        version: the version found in the payload (or asked for on write); ``None`` for a
            payload without a version tag when no legacy reader is declared.
        supported: the versions this serializer reads (``operation == "read"``) or may write
            (``operation == "write"``), ascending.
        operation: ``"read"`` or ``"write"``.
    """

    def __init__(
        self,
        message: str,
        *,
        version: int | None,
        supported: tuple[int, ...],
        operation: str = "read",
    ) -> None:
        super().__init__(message)
        self.version = version
        self.supported = supported
        self.operation = operation


class MalformedPayloadError(SerdeError):
    """A payload cannot be read: truncated, corrupted, invalid UTF-8, duplicate keys, NaN or
    infinity, a bad version tag, a record that is not an object, or a payload whose data an
    upgrade step or the model refused.

    The original exception, when there is one, is chained as ``__cause__``.
    """


@final
class PayloadTooLargeError(MalformedPayloadError):
    """A payload (or its decompressed form) is larger than ``max_size``.

    Attributes:
        size: the size seen, in bytes (a lower bound when reading stopped at the limit).
        limit: the configured ``max_size``.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


@final
class NestingTooDeepError(MalformedPayloadError):
    """A payload nests arrays and objects deeper than ``max_depth``.

    Attributes:
        limit: the configured ``max_depth``.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class EncodeError(SerdeError):
    """A record cannot be written: not the expected type, a value the codec cannot encode
    (NaN, infinity, an arbitrary object), a step that failed, or a result over the limits.

    The original exception, when there is one, is chained as ``__cause__``.
    """


@final
class LossyWriteError(EncodeError):
    """Writing an older version would lose data: downgrading the record and upgrading it
    back does not give the same record.

    Attributes:
        version: the version that was to be written.
        fields: the top-level fields that would change or disappear, sorted.
    """

    def __init__(self, message: str, *, version: int, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.version = version
        self.fields = fields
