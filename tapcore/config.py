"""Typed configuration helpers shared by every workflow.

Each workflow owns a dataclass config next to its code (``tapcore.tap.train.PretrainConfig``,
``tapcore.synthetic.SynthConfig``, ...), with the paper's values as defaults and a comment per
field. This module turns them to and from plain JSON-able dicts, so a job spec, a CLI call and a
saved bundle all carry the same config, validated at the boundary.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
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


# -- CLI options from the dataclasses (one source for defaults and help) --------------------------
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?#\s*(.+?)\s*$")


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """Each field's help by field name: its comment in the dataclass source (``name: type = default  # help``),
    else its entry under ``Attributes:`` in the class docstring (``name: text``, ``pmin, pmax: text``).

    A field without a comment of its own shares the one of the field just above it (``y`` / ``x``, ``pmin`` / ``pmax``).
    """
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, str] = _docstring_help(cls.__doc__ or "", names)
    last: str | None = None  # the help of the field on the line just above
    last_name: str | None = None  # the field whose comment a comment-only line continues
    for line in lines:
        m = _FIELD_LINE.match(line)
        bare = re.match(r"^\s+(\w+)\s*:", line)
        more = re.match(r"^\s+#\s*(.+?)\s*$", line)
        if m and m.group(1) in names:
            found[m.group(1)] = last = m.group(2)
            last_name = m.group(1)
        elif bare and bare.group(1) in names:
            if last is not None:
                found[bare.group(1)] = last
            last_name = None
        elif more and last_name is not None:
            found[last_name] += " " + more.group(1)
        else:
            last = last_name = None
    return found


def _docstring_help(doc: str, names: set[str]) -> dict[str, str]:
    """``Attributes:`` / ``Args:`` entries of a Google-style docstring (continuation lines joined)."""
    found: dict[str, str] = {}
    current: list[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        m = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if m and all(n.strip() in names for n in m.group(1).split(",")):
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                found[n] = m.group(2)
        elif current and line.startswith("        "):
            for n in current:
                found[n] += " " + line.strip()
        else:
            current = []
    return found


def add_config_options(parser: argparse.ArgumentParser, cls: type, names: typing.Iterable[str],
                       **overrides: dict[str, Any]) -> None:
    """Add ``--name`` options for fields of dataclass ``cls``: type, default and help come from the field
    (its default and its comment), with ``(default: ...)`` appended. ``overrides[name]`` updates the
    ``add_argument`` keywords of one option (e.g. ``choices``, ``required``, a ``flag``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for name in names:
        if name not in fields:
            raise ValueError(f"{cls.__name__} has no option {name!r}; valid options: {', '.join(sorted(fields))}")
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        hint = hints.get(name)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
            else [hint]
        kind = args[0] if args and args[0] in (int, float, str) else None
        text = helps.get(name, name.replace("_", " "))
        kw: dict[str, Any] = {"default": default, "help": f"{text} (default: {default})".replace("%", "%%"),
                              "dest": name}
        if kind is not None:
            kw["type"] = kind
        elif args and args[0] is bool:  # --name / --no-name
            kw["action"] = argparse.BooleanOptionalAction
        kw.update(overrides.get(name, {}))
        flag = kw.pop("flag", "--" + name.replace("_", "-"))
        parser.add_argument(flag, **kw)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options of :func:`add_config_options` (fields not on the command line
    keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return config_from_dict(cls, {k: v for k, v in vars(args).items() if k in names})
