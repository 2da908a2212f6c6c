"""Static attributes: the values a ModuleDef keeps as they are, and what they may not hide.

`Module.partition` keeps an attribute that is not a Variable, a Module or a
list/tuple/dict/namedtuple of those as a *static field* of the ModuleDef: part
of its hash, never trained, never saved. This module decides, once per type,
how partition treats a value, and checks that a static value hides no Variable
or Module (a Param inside a frozen dataclass, a frozenset, a
``functools.partial`` or a plain object would otherwise leave the State
silently).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing as tp

import jax
import numpy as np

from nnx_bridge.context import Context
from nnx_bridge.variables import Variable

# How partition treats a value, decided once per type (see `kind_of`).
PLAIN, VARIABLE, MODULE, LIST, TUPLE, DICT, NAMEDTUPLE, ATOMIC, SCAN = range(9)

# Hashable values that can hold nothing: taken as they are, without a scan.
_ATOMIC_BASES: tuple[type, ...] = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.ModuleType,
    enum.Enum,
    np.dtype,
    np.generic,
    range,
    type(Ellipsis),
    jax.custom_jvp,
    jax.custom_vjp,
)
_KINDS: dict[type, int] = {t: PLAIN for t in (int, float, bool, str, bytes, complex, type(None))}
_KINDS.update({list: LIST, tuple: TUPLE, dict: DICT})
#: The Variable and Module types met so far (a set lookup is the walk's fastest test).
VARIABLE_TYPES: set[type] = set()
MODULE_TYPES: set[type] = set()


def kind_of(value_type: type, module_base: type) -> int:
    """How partition treats values of `value_type` (cached per type).

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge import statics
        >>> statics.kind_of(int, nnx.Module) == statics.PLAIN
        True
        >>> statics.kind_of(nnx.Param, nnx.Module) == statics.VARIABLE
        True
    """
    kind = _KINDS.get(value_type)
    if kind is None:
        kind = _classify(value_type, module_base)
        _KINDS[value_type] = kind
        if kind == VARIABLE:
            VARIABLE_TYPES.add(value_type)
        elif kind == MODULE:
            MODULE_TYPES.add(value_type)
    return kind


def _classify(value_type: type, module_base: type) -> int:
    if issubclass(value_type, Variable):
        return VARIABLE
    if issubclass(value_type, module_base):
        return MODULE
    if issubclass(value_type, tuple) and hasattr(value_type, "_fields"):
        return NAMEDTUPLE
    if issubclass(value_type, _ATOMIC_BASES) or (
        getattr(value_type, "__module__", "").startswith("jax") and value_type.__name__ == "PjitFunction"
    ):
        return ATOMIC
    return SCAN


def check_static(value: tp.Any, path: str, owner: type, module_base: type) -> None:
    """Raises unless `value` can be a static field: no array, no Context, hashable, hides no state.

    Args:
      value: the attribute's value (of kind `ATOMIC` or `SCAN`).
      path: its State path, for the message.
      owner: the Module class holding it, for the message.
      module_base: the `Module` class.

    Example:
        >>> import dataclasses, nnx_bridge as nnx
        >>> from nnx_bridge import statics
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     w: object
        >>> statics.check_static(Config(1), "cfg", nnx.Module, nnx.Module)
        >>> statics.check_static(Config(nnx.Param(1.0)), "cfg", nnx.Module, nnx.Module)
        Traceback (most recent call last):
        ...
        TypeError: Module has a Param inside the static attribute at path 'cfg' (a Config), at cfg.w. ...
    """
    if isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{owner.__name__} stores an array as a plain attribute at path {path!r} "
            f"(shape {tuple(value.shape)}, dtype {value.dtype}). Arrays must live in Variables: "
            f"wrap it, e.g. nnx.Param(x) or nnx.Variable('constants', x)."
        )
    if isinstance(value, Context):
        raise TypeError(
            f"{owner.__name__} stores a Context at path {path!r}. A Context is for building and "
            f"calling modules only: use it in __init__ (or pass it to __call__) without keeping it."
        )
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"{owner.__name__} has an unhashable static attribute at path {path!r} of type "
            f"{type(value).__name__}. Static attributes become part of the hashable ModuleDef: "
            f"use a hashable value (e.g. a tuple), or wrap the value in a Variable if it is state."
        ) from None
    if _KINDS.get(type(value)) == ATOMIC:
        return
    found = _find_hidden(value, path, module_base)
    if found is not None:
        where, hidden = found
        what = "Module" if isinstance(hidden, module_base) else "Variable"
        raise TypeError(
            f"{owner.__name__} has a {type(hidden).__name__} inside the static attribute at path "
            f"{path!r} (a {type(value).__name__}), at {where}. partition() keeps such values as "
            f"static fields, so this {what} would be neither in the State nor trained nor saved. "
            f"Hold it directly in a Module attribute, or in a list, tuple or dict attribute."
        )


def _children(value: tp.Any) -> tp.Iterator[tuple[str, tp.Any]]:
    """The values a static value holds, each with a readable accessor suffix."""
    if isinstance(value, (frozenset, set)):
        for item in value:
            yield "{...}", item
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield f"[{i}]", item
    elif isinstance(value, tp.Mapping):
        for key, item in value.items():
            yield f"[{key!r}]", item
    elif isinstance(value, functools.partial):
        for i, item in enumerate(value.args):
            yield f".args[{i}]", item
        for key, item in value.keywords.items():
            yield f".keywords[{key!r}]", item
        yield ".func", value.func
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield f".{field.name}", getattr(value, field.name, None)
    else:
        for name, item in getattr(value, "__dict__", {}).items():
            yield f".{name}", item
        for cls in type(value).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and name not in ("__dict__", "__weakref__") and hasattr(value, name):
                    yield f".{name}", getattr(value, name)


def _find_hidden(value: tp.Any, path: str, module_base: type) -> tuple[str, tp.Any] | None:
    """The first Variable or Module reachable inside `value` (iteratively, each object once)."""
    seen = {id(value)}
    keep = [value]  # keeps every visited object alive, so no id is reused during the scan
    stack: list[tuple[str, tp.Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        for suffix, child in _children(node):
            child_type = type(child)
            if _KINDS.get(child_type) == PLAIN or id(child) in seen:
                continue
            if isinstance(child, (Variable, module_base)):
                return where + suffix, child
            kind = kind_of(child_type, module_base)
            if kind != ATOMIC:
                seen.add(id(child))
                keep.append(child)
                stack.append((where + suffix, child))
    return None
