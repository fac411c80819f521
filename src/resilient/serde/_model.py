"""Model adapters: the application's record type <-> the newest version's ``dict``.

Four kinds of model, chosen by what is passed as ``model``:

- ``None``: records are plain ``dict`` objects; every field, known or not, stays in the dict.
- a dataclass: flat conversion by field name; fields the dataclass does not declare go to
  its ``extra`` field (``unknown="keep"``) or are dropped on request (``unknown="drop"``).
- a pydantic v2 model class (duck-typed, pydantic is not a dependency): ``model_validate`` /
  ``model_dump(mode="json")``; ``unknown="keep"`` requires ``extra="allow"`` in its config.
- a ``Converter``: your own two functions; they receive every field.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, final

from resilient._exceptions import ConfigurationError

from ._errors import EncodeError

__all__ = ["Converter", "ModelAdapter", "adapt"]

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class Converter(Generic[T]):
    """Your own conversion between the application type and the newest version's record.

    ``from_data`` receives every field of the record, including fields this release does not
    know; keep them (for example in an "extra" mapping that ``to_data`` writes back) so that
    a read-modify-write does not destroy them.

    Args:
        from_data: builds the application object from the newest version's ``dict``; any
            exception it raises is reported as ``MalformedPayloadError``.
        to_data: returns the newest version's ``dict`` for an object; any exception it raises
            is reported as ``EncodeError``.
    """

    from_data: Callable[[dict[str, Any]], T]
    to_data: Callable[[T], dict[str, Any]]

    def __post_init__(self) -> None:
        for name in ("from_data", "to_data"):
            if not callable(getattr(self, name)):
                raise ConfigurationError(
                    f"Converter.{name}", getattr(self, name), "expected a callable"
                )


@final
class ModelAdapter:
    """Resolved conversion functions; ``None`` means "the record is the dict itself"."""

    __slots__ = ("description", "from_data", "to_data")

    def __init__(
        self,
        from_data: Callable[[dict[str, Any]], Any] | None,
        to_data: Callable[[Any], dict[str, Any]] | None,
        description: str,
    ) -> None:
        self.from_data = from_data
        self.to_data = to_data
        self.description = description


def _is_pydantic(model: object) -> bool:
    return (
        isinstance(model, type)
        and callable(getattr(model, "model_validate", None))
        and callable(getattr(model, "model_dump", None))
        and isinstance(getattr(model, "model_config", None), dict)
    )


def adapt(model: object, *, unknown: str, extra_field: str) -> ModelAdapter:
    """Build the adapter for ``model``.

    Raises:
        ConfigurationError: an unsupported model, or an ``unknown`` policy the model cannot
            honour (for example ``"keep"`` with a dataclass that has no ``extra`` field).
    """
    if model is None:
        if unknown != "keep":
            raise ConfigurationError(
                "VersionedSerializer.unknown",
                unknown,
                "dict records keep every field; 'drop' needs a dataclass or pydantic model",
            )
        return ModelAdapter(None, None, "dict")
    if isinstance(model, Converter):
        if unknown != "keep":
            raise ConfigurationError(
                "VersionedSerializer.unknown",
                unknown,
                "a Converter receives every field and decides itself; drop fields in from_data",
            )
        return ModelAdapter(model.from_data, model.to_data, "converter")
    if isinstance(model, type) and dataclasses.is_dataclass(model):
        return _dataclass_adapter(model, unknown=unknown, extra_field=extra_field)
    if isinstance(model, type) and _is_pydantic(model):
        return _pydantic_adapter(model, unknown=unknown)
    raise ConfigurationError(
        "VersionedSerializer.model",
        model,
        "expected None (dict records), a dataclass, a pydantic model class or a Converter",
    )


def _dataclass_adapter(cls: type[Any], *, unknown: str, extra_field: str) -> ModelAdapter:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = _extra_field(cls, fields, extra_field) if unknown == "keep" else None
    names = tuple(name for name, f in fields.items() if f.init and name != extra)
    return ModelAdapter(
        _dataclass_reader(cls, frozenset(names), extra),
        _dataclass_writer(cls, names, extra),
        f"dataclass {cls.__qualname__}",
    )


def _extra_field(cls: type[Any], fields: dict[str, dataclasses.Field[Any]], name: str) -> str:
    """The init field that carries unknown fields (``unknown="keep"``).

    Raises:
        ConfigurationError: ``cls`` has no such init field.
    """
    field = fields.get(name)
    if field is None or not field.init:
        raise ConfigurationError(
            "VersionedSerializer.model",
            cls,
            f"unknown='keep' (the default) needs an init field {name!r} on "
            f"{cls.__qualname__} to carry the fields this release does not know, e.g. "
            f"`{name}: dict[str, Any] = field(default_factory=dict)`; or pass "
            "unknown='drop' to accept losing them on read-modify-write",
        )
    return name


def _dataclass_reader(
    cls: type[Any], known: frozenset[str], extra: str | None
) -> Callable[[dict[str, Any]], Any]:
    def from_data(data: dict[str, Any]) -> Any:
        if data.keys() <= known:
            if extra is None:
                return cls(**data)
            return cls(**data, **{extra: {}})
        kwargs: dict[str, Any] = {}
        others: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            else:
                others[key] = value
        if extra is not None:
            kwargs[extra] = others
        return cls(**kwargs)

    return from_data


def _dataclass_writer(
    cls: type[Any], names: tuple[str, ...], extra: str | None
) -> Callable[[Any], dict[str, Any]]:
    getter = _values_getter(names)

    def to_data(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, cls):
            raise EncodeError(f"expected a {cls.__qualname__}, got {type(obj).__qualname__}")
        data = dict(zip(names, getter(obj), strict=True))
        if extra is not None:
            others = getattr(obj, extra)
            if others:
                if not isinstance(others, dict):
                    raise EncodeError(
                        f"{cls.__qualname__}.{extra} must be a dict, got {type(others).__name__}"
                    )
                for key, value in others.items():
                    data.setdefault(key, value)  # a declared field wins over a stale extra
        return data

    return to_data


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) > 1:
        getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
        return getter

    def few(obj: Any) -> tuple[Any, ...]:  # attrgetter returns a bare value for one name
        return tuple(getattr(obj, name) for name in names)

    return few


def _pydantic_adapter(cls: type[Any], *, unknown: str) -> ModelAdapter:
    if unknown == "keep" and cls.model_config.get("extra") != "allow":
        raise ConfigurationError(
            "VersionedSerializer.model",
            cls,
            f"unknown='keep' (the default) needs {cls.__qualname__} to keep unknown fields: "
            "set model_config = ConfigDict(extra='allow'); or pass unknown='drop' to accept "
            "losing them on read-modify-write",
        )
    validate = cls.model_validate

    def to_data(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, cls):
            raise EncodeError(f"expected a {cls.__qualname__}, got {type(obj).__qualname__}")
        data: dict[str, Any] = obj.model_dump(mode="json")
        return data

    return ModelAdapter(validate, to_data, f"pydantic {cls.__qualname__}")
