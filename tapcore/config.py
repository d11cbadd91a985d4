"""Typed configuration helpers shared by every workflow.

Each workflow owns a dataclass config next to its code (``tapcore.tap.train.PretrainConfig``,
``tapcore.synthetic.SynthConfig``, ...), with the paper's values as defaults and a comment per
field. This module turns them to and from plain JSON-able dicts, so a job spec, a CLI call and a
saved bundle all carry the same config, validated at the boundary.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass config, got {type(cfg).__name__}")
    return _jsonable(dataclasses.asdict(cfg))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def config_from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys with a message listing the valid ones.

    Missing keys take the dataclass defaults. Lists are turned back into tuples where the field's
    default is a tuple. Nested dataclass fields are built recursively.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif isinstance(value, list):
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple) or typing.get_origin(hint) is tuple:
                value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
