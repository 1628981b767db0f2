"""The engine behind the params schema: YAML mapping -> tree of frozen dataclasses.

Generic and schema-free: it reads a dataclass's fields and type hints, refuses unknown keys
(suggesting the nearest one), coerces and type-checks values, and calls each section's
``check(where)`` (and ``check_paths(where)`` when the machine's folders are to be checked).
The schema a user reads lives in :mod:`pipeline.config.schema`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from pipeline.config.trace import untraced


class ParamsError(ValueError):
    """A value in params.yaml is wrong; the message names the key and what to do."""


def build(cls: type, raw: Any, where: str = "", check_paths: bool = True) -> Any:
    """``cls`` (a dataclass) from the mapping ``raw``; ``where`` is its dotted key."""
    with untraced():  # validation reads every key: that is not a stage's use of them
        return _build(cls, raw, where, check_paths)


def _build(cls: type, raw: Any, where: str, check_paths: bool) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParamsError(
                f"{join(where, key)}: unknown key{hint}. Allowed keys: {', '.join(fields)}"
            )
    kwargs = {name: _coerce(raw[name], hints[name], join(where, name), check_paths)
              for name in fields if name in raw}
    obj = cls(**kwargs)
    section = where or cls.__name__
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    if check_paths and hasattr(obj, "check_paths"):  # needs this machine (dataset folders)
        obj.check_paths(section)
    return obj


def _coerce(value: Any, typ: Any, key: str, check_paths: bool) -> Any:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, key, check_paths)
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not allowed. Allowed: "
                              f"{', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, check_paths)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", check_paths) for i, v in enumerate(value)]
    return _scalar(value, typ, key)


def _scalar(value: Any, typ: Any, key: str) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        # YAML 1.1 reads 4e-4 (no dot) as a string: accept it as the number it means.
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"params schema: unsupported type {typ} at {key}")


def positive(obj: Any, where: str, *names: str) -> None:
    """Refuse any of ``names`` that is not > 0 (NaN included)."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ParamsError(f"{where}.{name}: {value} must be greater than 0")


def join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain mappings, without counting as reads of its keys."""
    with untraced():
        return dataclasses.asdict(obj)


def replace_keys(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with dotted keys replaced (``{"train.lr_base": 1e-3}``); unknown keys refused."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ParamsError(f"{dotted}: unknown section {key!r}")
            node = node[key]
        if leaf not in node:
            raise ParamsError(f"{dotted}: unknown key. Allowed keys: {', '.join(node)}")
        node[leaf] = value
    return raw
