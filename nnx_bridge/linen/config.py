"""A bridged module's configuration: hashable form, and its cached abstract structure."""

from __future__ import annotations

import collections
import inspect
import typing as tp

import flax.linen as nn
import jax
import jax.numpy as jnp

from nnx_bridge import phase as phaselib
from nnx_bridge.context import Context
from nnx_bridge.linen import arguments
from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.partition_under import partition_under
from nnx_bridge.state import State

_CACHE_SIZE = 512


def freeze(value: tp.Any, where: str) -> tp.Hashable:
    """A hashable stand-in for `value` that is equal for equal configurations.

    Lists, tuples, dicts (and Mappings) and sets are converted recursively, tagged
    with their type so that ``[1]`` and ``(1,)`` stay different.
    """
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(freeze(v, f"{where}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, tp.Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return (dict, tuple((k, freeze(v, f"{where}[{k!r}]")) for k, v in items))
    if isinstance(value, nn.Module):  # Linen adopts (binds) modules held in fields: compare unbound
        return (nn.Module, value.clone(parent=None, name=None) if value.scope is not None else value)
    if isinstance(value, (set, frozenset)):
        return (frozenset, frozenset(freeze(v, where) for v in value))
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"to_linen: {where} is an unhashable {type(value).__name__}. The factory's arguments "
            f"are the Linen module's configuration and must be hashable (lists, tuples and dicts "
            f"of hashable values are fine). Pass arrays as call inputs, or build them inside the "
            f"module as Variables."
        ) from None
    return value


class Structure(tp.NamedTuple):
    """What `apply` needs to rebuild the module: its ModuleDef and abstract State."""

    moduledef: ModuleDef[tp.Any]
    abstract: State  # path -> Variable holding a jax.ShapeDtypeStruct


_structures: "collections.OrderedDict[tp.Hashable, Structure]" = collections.OrderedDict()


def build(
    factory: tp.Callable[..., tp.Any],
    args: tp.Sequence[tp.Any],
    kwargs: tp.Mapping[str, tp.Any],
    ctx: Context,
) -> Module:
    """Calls ``factory(*args, ctx=ctx, **kwargs)`` and checks that it made a Module."""
    module = factory(*args, ctx=ctx, **kwargs)
    if not isinstance(module, Module):
        raise TypeError(
            f"to_linen: the factory {_name(factory)} returned a {type(module).__name__}, not an "
            f"nnx_bridge Module. Pass a Module class, or a function returning a Module, that "
            f"accepts a `ctx` keyword."
        )
    return module


def abstract_state(state: State) -> State:
    """The State with every value replaced by its `jax.ShapeDtypeStruct`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), state)


def remember(key: tp.Hashable, structure: Structure) -> None:
    """Caches the structure of a configuration (most recently used kept)."""
    _structures[key] = structure
    _structures.move_to_end(key)
    while len(_structures) > _CACHE_SIZE:
        _structures.popitem(last=False)


def structure_of(
    key: tp.Hashable,
    factory: tp.Callable[..., tp.Any],
    args: tp.Sequence[tp.Any],
    kwargs: tp.Mapping[str, tp.Any],
) -> Structure:
    """The cached structure of a configuration, computed abstractly on a miss.

    On a miss the module is built under `jax.eval_shape`, so no initialiser runs
    for real (this happens when `apply` comes before any `init` in a process,
    e.g. after restoring a checkpoint).
    """
    cached = _structures.get(key)
    if cached is not None:
        return cached

    def construct(rng: jax.Array) -> Module:
        with phaselib.active(_CONSTRUCTING):  # as under init, where the structure is cached first
            return build(factory, args, kwargs, Context(rng))

    abstract, moduledef = partition_under(
        lambda build_state: arguments.abstract_build(build_state, factory), construct
    )
    structure = Structure(moduledef, abstract)
    remember(key, structure)
    return structure


class _Constructing(phaselib.Phase):
    """Building a module for its structure: initialising, as during Linen's init."""

    def is_initializing(self) -> bool:
        return True


_CONSTRUCTING = _Constructing()


def _name(factory: tp.Any) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)


def named_configuration(
    factory: tp.Callable[..., tp.Any], args: tp.Sequence[tp.Any], kwargs: tp.Mapping[str, tp.Any]
) -> dict[str, tp.Any]:
    """The configuration by parameter name: keywords, positionals named by the factory's signature, defaults.

    ``ctx`` is left out. Without a readable signature, or when the arguments do
    not fit it, only the keywords are named.

    Example:
        >>> def make(features, depth=2, *, ctx, dtype=None):
        ...     pass
        >>> named_configuration(make, (8,), {"dtype": "float16"})
        {'features': 8, 'depth': 2, 'dtype': 'float16'}
    """
    try:
        signature = inspect.signature(factory)
        bound = signature.bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    named: dict[str, tp.Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL and name != "ctx":
            named[name] = value
    return named
