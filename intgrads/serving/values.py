"""The small pieces a request's checks share: :class:`RequestError` (a 4xx with its message) and how a value is
shown in one (``show``), what JSON type it is, and fields given once."""

from __future__ import annotations

import json
import math


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a ``message`` naming the problem."""

    def __init__(self, message: str, status: int = 400, **extra):
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status, **self.extra}


def fields_once(pairs, where: str) -> dict:
    """(name, value) pairs as a dict; a name given twice is a 400 naming ``where`` ("the form"), not "the last
    one wins"."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(f"{where} gives {show(key)} twice: give each field once")
        out[key] = value
    return out


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def show(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    text = json.dumps(value) if jsonable(value) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
