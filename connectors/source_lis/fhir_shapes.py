"""The JSON shapes of the FHIR elements the mapping reads, to name what is malformed.

The mapping reads plain dicts at full speed and trusts their types; when a report fails
to map, :func:`shape_problem` walks the resources it read and names the first element of
the wrong JSON type ("Observation/o1: code.coding[0] is a string, expected an object"),
so the dead letter says what to fix. Messages name element paths and JSON kinds only,
never values. Elements the mapping does not read are not checked; a JSON null counts as
absent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Union


class Instant:
    """A string that must parse as an ISO instant/dateTime."""


class Scalar:
    """A string or an integer (identifiers and versionIds that some servers send as numbers)."""


class Number:
    """A JSON number (not a boolean)."""


Shape = Union[type, type[Instant], type[Scalar], type[Number], dict[str, "Shape"], list["Shape"]]

_CODING: Shape = {"system": str, "code": str, "display": str}
_CONCEPT: Shape = {"coding": [_CODING], "text": str}
_META: Shape = {"versionId": Scalar, "lastUpdated": Instant}
_REFERENCE: Shape = {"reference": str}
_EXTENSIONS: Shape = [{"url": str, "valueBoolean": bool, "valueCode": str, "valueIdentifier": {"value": Scalar}}]
_QUANTITY: Shape = {"value": Number, "comparator": str, "unit": str, "code": str}

SHAPES: dict[str, Shape] = {
    "DiagnosticReport": {
        "id": str, "meta": _META, "status": str, "identifier": [{"type": _CONCEPT, "value": Scalar}],
        "code": _CONCEPT, "subject": _REFERENCE, "result": [_REFERENCE], "effectiveDateTime": Instant,
        "extension": _EXTENSIONS,
    },
    "Observation": {
        "id": str, "meta": _META, "status": str, "code": _CONCEPT, "effectiveDateTime": Instant,
        "valueQuantity": _QUANTITY, "valueString": str, "valueCodeableConcept": _CONCEPT, "valueInteger": int,
        "valueBoolean": bool, "valueDateTime": str, "valueTime": str,
        "valueRange": {"low": _QUANTITY, "high": _QUANTITY},
        "valueRatio": {"numerator": _QUANTITY, "denominator": _QUANTITY},
        "interpretation": [_CONCEPT], "note": [{"text": str}],
        "referenceRange": [{"text": str, "low": _QUANTITY, "high": _QUANTITY}],
    },
    "Patient": {
        "id": str, "meta": _META, "identifier": [{"type": _CONCEPT, "system": str, "value": Scalar}],
        "telecom": [{"system": str, "value": str, "use": str}],
        "communication": [{"language": _CONCEPT, "preferred": bool}], "extension": _EXTENSIONS,
    },
}


def kind(value: Any) -> str:
    """The JSON kind of a value, with its article ("a string", "an object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shape_problem(resource: Any, resource_type: str) -> str | None:
    """The first element of ``resource`` that does not have the JSON type the mapping reads,
    as ``path is <kind>, expected <kind>``; None when every element read is well-typed."""
    shape = SHAPES.get(resource_type)
    if shape is None:
        return None if isinstance(resource, dict) else f"the resource is {kind(resource)}, expected an object"
    found = _problem(resource, shape)
    if found is None:
        return None
    path, problem = found
    return f"{_path(path) or 'the resource'} {problem}"


def _path(parts: list[str | int]) -> str:
    text = ""
    for part in reversed(parts):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _problem(value: Any, shape: Shape) -> tuple[list[str | int], str] | None:
    """(path parts innermost first, problem); the path is only built on the way out of a failure."""
    if isinstance(shape, dict):
        if type(value) is not dict:
            return [], f"is {kind(value)}, expected an object"
        for key, inner in shape.items():
            item = value.get(key)
            if item is not None:
                found = _problem(item, inner)
                if found is not None:
                    found[0].append(key)
                    return found
        return None
    if isinstance(shape, list):
        if type(value) is not list:
            return [], f"is {kind(value)}, expected an array"
        for index, item in enumerate(value):
            if item is None:
                return [index], "is null, expected a value"
            found = _problem(item, shape[0])
            if found is not None:
                found[0].append(index)
                return found
        return None
    if shape is Instant:
        if type(value) is not str:
            return [], f"is {kind(value)}, expected a date-time string"
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return [], "is not a valid date-time"
        return None
    if shape is Scalar:
        ok = type(value) in (str, int)
        return None if ok else ([], f"is {kind(value)}, expected a string or an integer")
    if shape is Number:
        ok = type(value) in (int, float)
        return None if ok else ([], f"is {kind(value)}, expected a number")
    if type(value) is not shape:
        expected = {str: "a string", bool: "a boolean", int: "an integer"}[shape]  # type: ignore[index]
        return [], f"is {kind(value)}, expected {expected}"
    return None
