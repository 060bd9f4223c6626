"""The wire format of commands, results, events and views: JSON-compatible dicts.

A record becomes a dict of its fields by name; enums become their string values, tuples
become lists, nested records become dicts. A command dict adds ``"type"`` (its key in
``COMMAND_TYPES``) and may omit ``at_ms`` (the leader stamps it); a result dict adds
``"type"`` (its key in ``RESULT_TYPES``) and ``"ok"`` (false only for ``rejected``).

Decoding is strict, because a command decoded here goes straight into the Raft log:
integers must be integers (not booleans or floats), enums must be one of their values,
and an unknown or missing field, or an unknown ``type``, is a ``DecodeError`` naming the
field. The decoders are compiled once per record type from its type hints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from ledger.commands import COMMAND_TYPES, Command
from ledger.events import Event, JSONValue
from ledger.frozen import fast_builder
from ledger.results import RESULT_TYPES, Rejected, Result
from ledger.views import CartView, HoldView, OrderLine, OrderView, ProductView

View = ProductView | HoldView | CartView | OrderView | OrderLine
V = TypeVar("V", ProductView, HoldView, CartView, OrderView, OrderLine)

_Decoder = Callable[[object, str], Any]  # (value, path of the value) -> decoded value
_Encoder = Callable[[Any], JSONValue]

# Fields whose type is "any JSON value" rather than a record (their hints are recursive).
_JSON_FIELDS = {(Event, "data")}
MAX_JSON_DEPTH = 32  # nesting of free-form JSON (event data) accepted by the decoder


class DecodeError(ValueError):
    """A dict that is not a valid wire form; ``field`` is the path of the bad field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _exact_decoder(kind: type[Any], what: str) -> _Decoder:
    """Values of exactly ``kind``: no bool for int (bool is an int subclass), no float."""

    def decode(value: object, path: str) -> object:
        if type(value) is kind:
            return value
        raise DecodeError(path, f"expected {what}, got {type(value).__name__}")

    return decode


_EXACT_DECODERS: dict[Any, _Decoder] = {
    str: _exact_decoder(str, "a string"),
    int: _exact_decoder(int, "an integer"),
    bool: _exact_decoder(bool, "a boolean"),
}


def _check_json(value: object, path: str, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise DecodeError(path, f"nested deeper than {MAX_JSON_DEPTH}")
    if value is None or type(value) in (bool, int, str):
        return
    if type(value) is list:
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if type(value) is dict:
        for name, item in value.items():
            if type(name) is not str:
                raise DecodeError(path, "object keys must be strings")
            _check_json(item, _join(path, name), depth + 1)
        return
    raise DecodeError(path, f"not a JSON value: {type(value).__name__}")


def _decode_json_object(value: object, path: str) -> dict[str, JSONValue] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise DecodeError(path, "expected an object or null")
    _check_json(value, path)
    return typing.cast(dict[str, JSONValue], value)


def _enum_decoder(cls: type[StrEnum]) -> _Decoder:
    members = {member.value: member for member in cls}
    allowed = ", ".join(members)

    def decode(value: object, path: str) -> StrEnum:
        if type(value) is str:
            member = members.get(value)
            if member is not None:
                return member
        raise DecodeError(path, f"expected one of {allowed}, got {value!r}")

    return decode


def _optional_decoder(inner: _Decoder) -> _Decoder:
    def decode(value: object, path: str) -> object:
        return None if value is None else inner(value, path)

    return decode


def _tuple_decoder(inner: _Decoder) -> _Decoder:
    def decode(value: object, path: str) -> tuple[object, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise DecodeError(path, f"expected a list, got {type(value).__name__}")
        return tuple(inner(item, f"{path}[{i}]") for i, item in enumerate(value))

    return decode


_compiled: dict[type[Any], _Decoder] = {}


def _decoder_for(hint: Any) -> _Decoder:
    if hint in _EXACT_DECODERS:
        return _EXACT_DECODERS[hint]
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return _enum_decoder(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record_decoder(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return _optional_decoder(_decoder_for(others[0]))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_decoder(_decoder_for(args[0]))
    raise TypeError(f"no decoder for type {hint!r}")


class _NoPlainType:
    """Matches no value: fields of this "plain type" always go through their decoder."""


_ABSENT = object()
_PLAIN = (str, int, bool)


def _plain_type(hint: Any) -> type[Any]:
    """The exact type a field's value can have to be taken as it is (str, int, bool)."""
    if hint in _PLAIN:
        return typing.cast(type[Any], hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 2:
        for arg in args:
            if arg in _PLAIN:
                return typing.cast(type[Any], arg)
    return _NoPlainType


def _record_decoder(cls: type[Any], tag: str | None = None) -> _Decoder:
    """Decoder of the dataclass ``cls`` from a dict; ``tag`` names extra keys to ignore
    (the ``type``/``ok`` of tagged unions, checked by the caller)."""
    cached = _compiled.get(cls) if tag is None else None
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    specs: list[tuple[str, type[Any], _Decoder, bool]] = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        hint = hints[f.name]
        decoder = _decode_json_object if (cls, f.name) in _JSON_FIELDS else _decoder_for(hint)
        specs.append((f.name, _plain_type(hint), decoder, required))
    ignored = frozenset(() if tag is None else tag.split(","))
    allowed = {spec[0] for spec in specs} | ignored
    build = fast_builder(cls)

    def decode(value: object, path: str) -> object:
        if type(value) is not dict:
            raise DecodeError(
                path or cls.__name__, f"expected an object, got {type(value).__name__}"
            )
        kwargs: dict[str, object] = {}
        for name, plain, decoder, required in specs:
            item = value.get(name, _ABSENT)
            if item is _ABSENT:
                if required:
                    raise DecodeError(_join(path, name), "missing")
            elif type(item) is plain:  # the common case, without a call
                kwargs[name] = item
            else:
                kwargs[name] = decoder(item, f"{path}.{name}" if path else name)
        if not value.keys() <= allowed:
            unknown = sorted(str(name) for name in value.keys() - allowed)
            raise DecodeError(_join(path, unknown[0]), "unknown field")
        return build(**kwargs)

    if tag is None:
        _compiled[cls] = decode
    return decode


_COMMAND_DECODERS: dict[str, _Decoder] = {
    name: _record_decoder(cls, tag="type") for name, cls in COMMAND_TYPES.items()
}
_RESULT_DECODERS: dict[str, _Decoder] = {
    name: _record_decoder(cls, tag="type,ok") for name, cls in RESULT_TYPES.items()
}
_COMMAND_NAMES: dict[type[Any], str] = {cls: name for name, cls in COMMAND_TYPES.items()}
_RESULT_NAMES: dict[type[Any], str] = {cls: name for name, cls in RESULT_TYPES.items()}
_decode_event = _record_decoder(Event)


def _tag(value: Mapping[str, object], kinds: Mapping[str, _Decoder], what: str) -> _Decoder:
    name = value.get("type")
    if "type" not in value:
        raise DecodeError("type", "missing")
    decoder = kinds.get(name) if type(name) is str else None
    if decoder is None:
        raise DecodeError("type", f"unknown {what} type {name!r}")
    return decoder


def decode_command(value: object) -> Command:
    """The command a wire dict stands for; ``DecodeError`` names the first bad field."""
    if type(value) is not dict:
        raise DecodeError("command", f"expected an object, got {type(value).__name__}")
    command: Command = _tag(value, _COMMAND_DECODERS, "command")(value, "")
    return command


def decode_result(value: object) -> Result:
    """The result a wire dict stands for (the inverse of ``encode_result``)."""
    if type(value) is not dict:
        raise DecodeError("result", f"expected an object, got {type(value).__name__}")
    decoder = _tag(value, _RESULT_DECODERS, "result")
    ok = value.get("ok")
    if type(ok) is not bool:
        raise DecodeError("ok", "expected a boolean")
    result: Result = decoder(value, "")
    if ok is isinstance(result, Rejected):
        raise DecodeError("ok", f"must be {not ok} for {value['type']}")
    return result


def decode_event(value: object) -> Event:
    """The event a wire dict stands for (the inverse of ``encode_event``)."""
    event: Event = _decode_event(value, "")
    return event


def decode_view(cls: type[V], value: object) -> V:
    """The view of type ``cls`` a wire dict stands for (the inverse of ``encode_view``)."""
    view: V = _record_decoder(cls)(value, "")
    return view


def _encode_value(value: Any) -> JSONValue:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return typing.cast(JSONValue, value)
    if isinstance(value, StrEnum):
        return value.value
    if kind is tuple or kind is list:
        return [_encode_value(item) for item in value]
    if kind is dict:
        return {str(name): _encode_value(item) for name, item in value.items()}
    return _encode_record(value)


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _encode_record(record: Any) -> dict[str, JSONValue]:
    cls = type(record)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"cannot encode {cls.__name__}")
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return {name: _encode_value(getattr(record, name)) for name in names}


def encode_command(command: Command) -> dict[str, JSONValue]:
    """The wire dict of a command (``decode_command`` gives it back)."""
    encoded: dict[str, JSONValue] = {"type": _COMMAND_NAMES[type(command)]}
    encoded.update(_encode_record(command))
    return encoded


def encode_result(result: Result) -> dict[str, JSONValue]:
    """The wire dict of a result, with ``type`` and ``ok``."""
    encoded: dict[str, JSONValue] = {
        "type": _RESULT_NAMES[type(result)],
        "ok": not isinstance(result, Rejected),
    }
    encoded.update(_encode_record(result))
    return encoded


def encode_event(event: Event) -> dict[str, JSONValue]:
    """The wire dict of an event (moves and stock levels as lists of dicts)."""
    return _encode_record(event)


def encode_view(view: View) -> dict[str, JSONValue]:
    """The wire dict of a view (``ledger.views``)."""
    return _encode_record(view)
