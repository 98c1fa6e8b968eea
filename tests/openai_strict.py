"""Strict validation of response bodies against the official openai SDK's own pydantic types.

`Model.model_validate(payload, strict=True)` rejects wrong types (a string for a float, a float for an
int); `assert_complete` also checks, at every level, that each field the SDK declares as required is in
the payload itself (not filled by a default).
"""

from __future__ import annotations

import json
import typing
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def assert_complete(model: type[BaseModel], payload: Any, where: str = "$") -> None:
    assert isinstance(payload, dict), f"{where}: expected an object, got {payload!r}"
    for name, info in model.model_fields.items():
        key = info.alias or name
        if info.is_required():
            assert key in payload, f"{where}: required field {key!r} of {model.__name__} is missing"
        value = payload.get(key)
        models = _models_in(info.annotation)
        if value is None or not models:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            # Unions (e.g. usage: tokens | duration) are discriminated by "type": check the matching member.
            candidates = [m for m in models if _accepts_type(m, item)] or models
            assert_complete(candidates[0], item, f"{where}.{key}[{i}]")


def _accepts_type(model: type[BaseModel], item: Any) -> bool:
    field = model.model_fields.get("type")
    if field is None or not isinstance(item, dict):
        return True
    return item.get("type") in typing.get_args(field.annotation)


def strict(model: type[M], payload: Any) -> M:
    """The payload as the SDK type, validated strictly, every required field present."""
    assert_complete(model, payload)
    return model.model_validate(payload, strict=True)


def sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]
