"""Variables: values that a Module owns, tagged with a collection and sharding names."""

from __future__ import annotations

import inspect
import typing as tp

import jax

A = tp.TypeVar("A")
Sharding = tuple[str | None, ...]
Rules = tuple[tuple[str, tp.Any], ...]

_FIXED_COLLECTION = "_fixed_collection"
_COLLECTION_TYPES: dict[str, type["Variable"]] = {}


def check_sharding(
    sharding: tp.Any, ndim: int | None = None, *, where: str = "", what: str = "array"
) -> Sharding | None:
    """Validates `sharding` as one axis name (str or None) per dimension; the one check for it.

    `Variable` uses it for ``sharding=``, the layers for their ``sharding=``
    argument (with the rank of the array it names), `nnx_bridge.sharding` for
    a Variable's names against its value's rank.

    Args:
      sharding: the names, or None.
      ndim: the rank they must name, or None for any.
      where: who checks, prefixed to the error message (e.g. ``"Linear"``).
      what: the array the names are for (e.g. ``"kernel (in, out)"``), for the error message.

    Returns:
      The names as a tuple, or None.

    Raises:
      TypeError: `sharding` is not a sequence, or holds something other than str or None.
      ValueError: it has not `ndim` entries.

    Example:
        >>> from nnx_bridge.variables import check_sharding
        >>> check_sharding(["data", None], 2, where="Linear", what="kernel (in, out)")
        ('data', None)
        >>> check_sharding(("data",), 2, where="Linear", what="kernel (in, out)")
        Traceback (most recent call last):
        ...
        ValueError: Linear: sharding names one axis per dimension of the kernel (in, out), so it needs 2 ...
    """
    if sharding is None:
        return None
    prefix = f"{where}: " if where else ""
    if isinstance(sharding, str) or not isinstance(sharding, tp.Sequence):
        expected = "mesh/logical axis names" if ndim is None else f"{ndim} axis names"
        raise TypeError(
            f"{prefix}sharding must be a sequence of {expected} (str or None), one per dimension of "
            f"the {what}, e.g. ('data', 'model'); found {sharding!r}."
        )
    names = tuple(sharding)
    for name in names:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{prefix}sharding entries must be str or None; found {name!r} in {sharding!r}.")
    if ndim is not None and len(names) != ndim:
        raise ValueError(
            f"{prefix}sharding names one axis per dimension of the {what}, so it needs {ndim} "
            f"entries; found {len(names)}: {names!r}."
        )
    return names


def _normalize_sharding(sharding: tp.Any) -> Sharding | None:
    return check_sharding(sharding)


def _normalize_rules(rules: tp.Any) -> Rules | None:
    if rules is None:
        return None
    try:
        normalized = tuple(
            (str(logical), tuple(mesh) if isinstance(mesh, list) else mesh) for logical, mesh in rules
        )
        hash(normalized)
    except (TypeError, ValueError):
        raise TypeError(
            f"sharding_rules must be logical-axis rules in Linen's format, pairs (logical name, mesh "
            f"axis or axes or None), e.g. (('embed', 'model'),); found {rules!r}."
        ) from None
    return normalized


class Variable(tp.Generic[A]):
    """A value owned by a Module, with its collection and optional sharding names.

    Variables are pytree nodes (the value is the only child), so `jax.tree.map`
    maps over values and keeps the exact Variable subclass and its metadata.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> v = nnx.Variable("counts", jnp.array(0), sharding=None)
        >>> v.collection
        'counts'
        >>> nnx.Param(jnp.ones(2)).collection
        'params'

    Subclasses may fix their collection, which also makes them the type that
    `nnx.from_variables` builds for that collection. They are built from the
    value alone, and type checkers accept that: ``Cache(x)`` has type ``Cache``
    and ``Cache(x).value`` the class's value type (here ``jax.Array``). Type
    checkers cannot see the ``collection=`` class keyword, so they also accept
    ``nnx.Variable(x)``, which raises a TypeError at run time:
        >>> class Cache(nnx.Variable[jax.Array], collection="cache"):
        ...     pass
        >>> Cache(jnp.zeros(3)).collection
        'cache'
    """

    collection: str
    value: A
    sharding: Sharding | None
    sharding_rules: Rules | None  # the Variable's own logical-axis rules (nn.LogicallyPartitioned)

    if tp.TYPE_CHECKING:  # the public signatures; the pytree machinery passes one more keyword

        @tp.overload
        def __init__(
            self, collection: str, value: A, *, sharding: tp.Any = None, sharding_rules: tp.Any = None
        ) -> None: ...

        # A subclass that fixes its collection (``class Cache(nnx.Variable[T],
        # collection="cache")``) is built from the value alone. Type checkers cannot
        # see the class keyword, so they accept this form for every Variable class;
        # at run time a class without a fixed collection raises a TypeError.
        @tp.overload
        def __init__(self, value: A, *, sharding: tp.Any = None, sharding_rules: tp.Any = None) -> None: ...

        def __init__(self, *args: tp.Any, **kwargs: tp.Any) -> None: ...

    else:

        def __init__(
            self,
            collection: str,
            value: A,
            *,
            sharding: tp.Any = None,
            sharding_rules: tp.Any = None,
            _pytree_type: type | None = None,
        ) -> None:
            _check_collection(self, collection)
            self.collection = collection
            self.value = value
            self.sharding = _normalize_sharding(sharding)
            self.sharding_rules = _normalize_rules(sharding_rules)

    def __init_subclass__(cls, collection: str | None = None, **kwargs: tp.Any):
        super().__init_subclass__(**kwargs)
        if collection is not None:
            setattr(cls, _FIXED_COLLECTION, collection)
            if "__init__" not in cls.__dict__:
                cls.__init__ = _fixed_collection_init(collection)  # type: ignore[method-assign]
                _KEYWORD_INITS.add(cls.__init__)
            _COLLECTION_TYPES.setdefault(collection, cls)
        _register(cls)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(value={self.value}, collection={self.collection}, "
            f"sharding={self.sharding})"
        )

    def replace(self, value: tp.Any) -> "Variable[tp.Any]":
        """Returns a copy of this Variable (same type and metadata) holding `value`.

        Example:
            >>> import nnx_bridge as nnx
            >>> nnx.Param(1.0).replace(2.0)
            Param(value=2.0, collection=params, sharding=None)
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.value = value
        return new

    def copy(self) -> "Variable[A]":
        """Returns a new Variable object with the same value and metadata."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new


def _check_collection(variable: Variable[tp.Any], collection: tp.Any) -> None:
    fixed = getattr(type(variable), _FIXED_COLLECTION, None)
    if fixed is not None and collection != fixed:
        raise ValueError(
            f"{type(variable).__name__} always belongs to collection {fixed!r}; "
            f"found collection={collection!r}. Use nnx.Variable({collection!r}, value) "
            f"for another collection."
        )
    if not isinstance(collection, str) or not collection:
        raise TypeError(
            f"Variable collection must be a non-empty str such as 'params'; found {collection!r}."
        )


def _public_signature(init: tp.Callable[..., None]) -> None:
    """Hides the keyword that only the pytree machinery passes from ``inspect.signature``."""
    signature = inspect.signature(init)
    init.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "_pytree_type"]
    )


def _fixed_collection_init(fixed: str) -> tp.Callable[..., None]:
    def __init__(
        self: Variable[tp.Any],
        value: tp.Any,
        *,
        sharding: tp.Any = None,
        sharding_rules: tp.Any = None,
        collection: str = fixed,
        _pytree_type: type | None = None,
    ) -> None:
        if collection != fixed:
            Variable.__init__(self, collection, value, sharding=sharding)  # raises the error
        self.collection = fixed
        self.value = value
        self.sharding = None if sharding is None else _normalize_sharding(sharding)
        self.sharding_rules = None if sharding_rules is None else _normalize_rules(sharding_rules)

    __init__.__doc__ = f"Creates a Variable of collection {fixed!r}."
    _public_signature(__init__)
    return __init__


def _register(cls: type[Variable[tp.Any]]) -> None:
    """Registers a Variable class as a pytree node that keeps its exact type.

    Classes built by keyword (`value=`, `sharding=`, and `collection=` unless the
    class fixes it; all built-in ones) use JAX's C++ dataclass path, so
    flattening a State of Variables costs about as much as flattening a dict of
    arrays. Classes with their own ``__init__`` keep every attribute instead.
    """
    if "__init__" in cls.__dict__ and cls.__dict__["__init__"] not in _KEYWORD_INITS:

        def unflatten(meta: tuple[tp.Any, ...], children: tp.Iterable[tp.Any]) -> Variable[tp.Any]:
            (value,) = children
            return _rebuild(cls, meta, value)

        jax.tree_util.register_pytree_with_keys(
            cls,
            lambda v: (((jax.tree_util.GetAttrKey("value"), v.value),), _meta(v)),
            unflatten,
            flatten_func=lambda v: ((v.value,), _meta(v)),
        )
        return
    # JAX compares dataclass treedefs of different classes as equal when their
    # metadata match, so the class itself is part of the metadata.
    cls._pytree_type = cls  # type: ignore[attr-defined]
    fixed = getattr(cls, _FIXED_COLLECTION, None) is not None
    meta = ["_pytree_type", "sharding", "sharding_rules"]
    if not fixed:
        meta.insert(1, "collection")
    jax.tree_util.register_dataclass(cls, data_fields=["value"], meta_fields=meta)


def _meta(v: Variable[tp.Any]) -> tuple[tp.Any, ...]:
    return tuple(sorted((k, x) for k, x in v.__dict__.items() if k != "value"))


def _rebuild(cls: type[Variable[tp.Any]], meta: tuple[tp.Any, ...], value: tp.Any) -> Variable[tp.Any]:
    new = object.__new__(cls)
    new.__dict__.update(meta)
    new.value = value
    return new


_public_signature(Variable.__init__)
_KEYWORD_INITS: set[tp.Callable[..., None]] = {Variable.__init__}
_register(Variable)


class Param(Variable[A], collection="params"):
    """A trainable parameter: a Variable of collection ``'params'``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> nnx.Param(jnp.zeros((2,)), sharding=("model",)).sharding
        ('model',)
    """

    if tp.TYPE_CHECKING:  # the __init__ made at class creation, as type checkers should see it

        def __init__(self, value: A, *, sharding: tp.Any = None, sharding_rules: tp.Any = None) -> None: ...


class BatchStat(Variable[A], collection="batch_stats"):
    """A running statistic (e.g. BatchNorm's mean): collection ``'batch_stats'``.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.BatchStat(0.0).collection
        'batch_stats'
    """

    if tp.TYPE_CHECKING:

        def __init__(self, value: A, *, sharding: tp.Any = None, sharding_rules: tp.Any = None) -> None: ...


def variable_type(collection: str) -> type[Variable[tp.Any]]:
    """The Variable class that stands for `collection` (e.g. Param for 'params').

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.variable_type("params").__name__, nnx.variable_type("intermediates").__name__
        ('Param', 'Variable')
    """
    return _COLLECTION_TYPES.get(collection, Variable)


def make_variable(
    collection: str, value: tp.Any, *, sharding: tp.Any = None, sharding_rules: tp.Any = None
) -> Variable[tp.Any]:
    """Builds a Variable of the canonical type for `collection`."""
    cls = variable_type(collection)
    if cls is Variable:
        return Variable(collection, value, sharding=sharding, sharding_rules=sharding_rules)
    return cls(value, sharding=sharding, sharding_rules=sharding_rules)
