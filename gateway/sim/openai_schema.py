"""Check client events against the official GA schema (openai-python ``types.realtime``).

The SDK models accept unknown keys (``extra="allow"``), which would let typos such as
``turn_detecton`` through; the real server rejects them, so after pydantic validation we walk the
validated models and report every extra key. Validation is strict (no ``"12"`` → 12 coercion), like
the server. Error texts follow the OpenAI API style (``Unknown parameter: 'x'.`` …).
"""
from __future__ import annotations

import functools
import json
import operator
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse

__all__ = ["SchemaError", "client_event_types", "validate_client_event", "validate_server_event"]


@dataclass(frozen=True)
class SchemaError:
    """One reason an event is invalid, in the shape of an OpenAI ``error`` payload."""

    code: str
    message: str
    param: str | None


@functools.cache
def _adapter(schema: Any = RealtimeClientEvent) -> pydantic.TypeAdapter[Any]:
    """Adapter for a model, or for an SDK event union discriminated on ``type`` (built once: ~0.5 s)."""
    if isinstance(schema, type):
        return pydantic.TypeAdapter(schema)
    members = typing.get_args(typing.get_args(schema)[0])
    union: Any = functools.reduce(operator.or_, members)  # the same union again, from its runtime members
    return pydantic.TypeAdapter(Annotated[union, pydantic.Field(discriminator="type")])


@functools.cache
def client_event_types() -> frozenset[str]:
    """Every client event ``type`` of the GA API (11 names)."""
    members = typing.get_args(typing.get_args(RealtimeClientEvent)[0])
    return frozenset(typing.get_args(m.model_fields["type"].annotation)[0] for m in members)


def validate_client_event(event: dict[str, Any]) -> tuple[Any, list[SchemaError]]:
    """Validate one decoded client event: ``(model, [])`` if valid, else ``(None, errors)``, most specific first."""
    try:
        model = _adapter().validate_python(event, strict=True)
    except pydantic.ValidationError as exc:
        errors = [_convert(err, event) for err in exc.errors()]
        # Smart unions report one error per member; the deepest one is about what the client meant.
        errors.sort(key=lambda e: (-_depth(e.param), e.param is not None and e.param.endswith("type")))
        return None, errors
    unknown = [SchemaError("unknown_parameter", f"Unknown parameter: '{path}'.", path)
               for path in _extra_keys(model, "")]
    return (None, unknown) if unknown else (model, [])


def validate_server_event(event: dict[str, Any]) -> list[str]:
    """Problems of one server event against the SDK's ``RealtimeServerEvent`` (for tests of the simulator).

    The SDK types ``session.created/updated`` with the request shape, but the server sends the session
    resource (with ``id``, ``object``, ``expires_at``: ``RealtimeSessionCreateResponse``), so that is
    what the ``session`` of those two events is checked against.
    """
    if event.get("type") in ("session.created", "session.updated") and isinstance(event.get("session"), dict):
        session = event["session"]
        return (_problems(_adapter(RealtimeSessionCreateResponse), session, "session.")
                + _problems(_adapter(RealtimeServerEvent), {**event, "session": {"type": session.get("type")}}))
    return _problems(_adapter(RealtimeServerEvent), event)


def _problems(adapter: pydantic.TypeAdapter[Any], value: Any, prefix: str = "") -> list[str]:
    try:
        model = adapter.validate_python(value, strict=True)
    except pydantic.ValidationError as exc:
        return [f"{prefix}{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()]
    return [f"unknown key {prefix}{path}" for path in _extra_keys(model, "")]


def _extra_keys(value: Any, path: str) -> list[str]:
    """Paths of keys that no declared field took, anywhere below a validated model."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [_join(path, key) for key in (value.__pydantic_extra__ or {})]
        for name in type(value).model_fields:
            found += _extra_keys(getattr(value, name), _join(path, name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _extra_keys(item, f"{path}[{i}]")
    elif isinstance(value, dict):  # free-form JSON (tool parameters, metadata): only models inside matter
        for key, item in value.items():
            found += _extra_keys(item, _join(path, str(key)))
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _depth(param: str | None) -> int:
    return 0 if not param else param.count(".") + param.count("[") + 1


def _wire_path(loc: tuple[Any, ...], data: Any, missing: bool) -> str | None:
    """Turn a pydantic ``loc`` into the client's own key path, dropping union-member tags."""
    path = ""
    for i, part in enumerate(loc):
        if isinstance(data, dict) and isinstance(part, str) and part in data:
            path, data = _join(path, part), data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            path, data = f"{path}[{part}]", data[part]
        elif missing and i == len(loc) - 1:
            path = _join(path, str(part))
    return path or None


_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "float_type": "a number", "bool_type": "a boolean",
    "list_type": "an array", "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for typ, name in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal number"), (str, "a string"),
                      (list, "an array"), (dict, "an object")):
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _convert(err: Any, event: dict[str, Any]) -> SchemaError:
    kind = err["type"]
    param = _wire_path(err["loc"], event, missing=kind == "missing")
    if kind == "union_tag_not_found":
        return SchemaError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
    if kind == "union_tag_invalid":
        return SchemaError("invalid_value", f"Invalid value: {json.dumps(err['input'].get('type'))}. Supported values "
                           f"are: {', '.join(repr(t) for t in sorted(client_event_types()))}.", "type")
    if kind == "missing":
        return SchemaError("missing_required_parameter", f"Missing required parameter: '{param}'.", param)
    if kind == "literal_error":
        return SchemaError("invalid_value", f"Invalid value: {json.dumps(err['input'])}. Supported values are: "
                           f"{err['ctx']['expected']}.", param)
    if kind in _EXPECTED:
        return SchemaError("invalid_type", f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got "
                           f"{_kind(err['input'])} instead.", param)
    return SchemaError("invalid_value", f"Invalid value for '{param}': {err['msg']}.", param)
