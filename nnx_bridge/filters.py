"""The filter language: one way to select Variables, used by every API that selects.

A filter is one of:
  * a collection name (``"params"``),
  * a Variable subclass (``nnx.Param``), matched with ``isinstance``,
  * ``...`` (everything),
  * a predicate ``(path, variable) -> bool`` where ``path`` is ``"a/b/c"``,
  * a combinator: `Not`, `All`, `Any`, `PathContains`, `Everything`, `Nothing`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing as tp

from nnx_bridge.variables import Variable

Predicate = tp.Callable[[str, Variable[tp.Any]], bool]
Filter = tp.Union[str, type, "ellipsis", Predicate]  # noqa: F821


def to_predicate(filter: Filter) -> Predicate:
    """Turns any filter into a predicate ``(path, variable) -> bool``.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.to_predicate("params")("w", nnx.Param(1.0))
        True
        >>> nnx.to_predicate(nnx.Not(nnx.Param))("w", nnx.Param(1.0))
        False
    """
    if isinstance(filter, str):
        return _Collection(filter)
    if filter is Ellipsis:
        return Everything()
    if isinstance(filter, type):
        if issubclass(filter, Variable):
            return _OfType(filter)
        raise TypeError(
            f"A type used as a filter must be a Variable subclass such as nnx.Param; found {filter.__name__}."
        )
    if callable(filter):
        if not isinstance(filter, _KNOWN_PREDICATES):
            _check_arity(filter)
        return filter
    raise TypeError(
        f"Invalid filter {filter!r} ({type(filter).__name__}). A filter is a collection "
        f"name (str), a Variable subclass, ..., a predicate (path, variable) -> bool, "
        f"or one of nnx.Not/All/Any/PathContains/Everything/Nothing."
    )


_ARITY_CHECKED: dict[tp.Any, None] = {}


def _check_arity(predicate: tp.Callable[..., tp.Any]) -> None:
    """Raises unless `predicate` can be called as ``predicate(path, variable)`` (checked once)."""
    try:
        if predicate in _ARITY_CHECKED:
            return
    except TypeError:  # unhashable: check every time
        pass
    try:
        signature = inspect.signature(predicate)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust it
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(predicate, "__qualname__", None) or type(predicate).__name__
        raise TypeError(
            f"The predicate filter {name}{signature} cannot be called as predicate(path, variable): "
            f"filters are called with the Variable's path ('a/b/c') and the Variable, and return "
            f"a bool. Write e.g. lambda path, variable: ... (or use nnx.PathContains / a "
            f"collection name / a Variable type)."
        ) from None
    try:
        if len(_ARITY_CHECKED) < 4096:
            _ARITY_CHECKED[predicate] = None
    except TypeError:
        pass


@dataclasses.dataclass(frozen=True)
class _Collection:
    collection: str

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return variable.collection == self.collection


@dataclasses.dataclass(frozen=True)
class _OfType:
    type: type

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return isinstance(variable, self.type)


class Not:
    """Matches what `filter` does not match.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.Not("params")("count", nnx.Variable("counts", 0))
        True
    """

    def __init__(self, filter: Filter):
        self.filter = filter
        self._predicate = to_predicate(filter)

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return not self._predicate(path, variable)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Not) and self.filter == other.filter

    def __hash__(self) -> int:
        return hash((Not, self.filter))

    def __repr__(self) -> str:
        return f"Not({self.filter!r})"


class _Combinator:
    _reduce: tp.Callable[[tp.Iterable[bool]], bool]

    def __init__(self, *filters: Filter):
        self.filters = filters
        self._predicates = tuple(to_predicate(f) for f in filters)

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return type(self)._reduce(p(path, variable) for p in self._predicates)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Combinator) and type(other) is type(self) and self.filters == other.filters

    def __hash__(self) -> int:
        return hash((type(self), self.filters))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.filters))})"


class All(_Combinator):
    """Matches when every filter matches (``All()`` matches everything).

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.All("params", nnx.PathContains("kernel"))("l1/kernel", nnx.Param(1.0))
        True
    """

    _reduce = staticmethod(all)


class Any(_Combinator):
    """Matches when at least one filter matches (``Any()`` matches nothing).

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.Any("params", "batch_stats")("mean", nnx.BatchStat(0.0))
        True
    """

    _reduce = staticmethod(any)


@dataclasses.dataclass(frozen=True)
class PathContains:
    """Matches Variables whose path contains `name` as whole ``/``-separated parts.

    A `name` without ``/`` matches one part of the path. A `name` with ``/``
    (``"l1/kernel"``) matches those parts appearing consecutively, anywhere in
    the path; it never matches inside a part (``"enc"`` does not match
    ``"encoder"``).

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.PathContains("encoder")("encoder/0/kernel", nnx.Param(1.0))
        True
        >>> nnx.PathContains("enc")("encoder/0/kernel", nnx.Param(1.0))
        False
        >>> nnx.PathContains("0/kernel")("encoder/0/kernel", nnx.Param(1.0))
        True
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "" in self.name.split("/"):
            raise ValueError(
                f"PathContains: name must be a non-empty path part such as 'kernel', or several "
                f"consecutive parts such as 'l1/kernel' (no empty parts, no leading or trailing "
                f"'/'); found {self.name!r}."
            )

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        name = self.name
        if "/" not in name:
            return name in path.split("/")
        # consecutive parts: compare with '/' on both sides so that no part matches partly
        return f"/{name}/" in f"/{path}/"


@dataclasses.dataclass(frozen=True)
class Everything:
    """Matches every Variable; the same as ``...``.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.Everything()("w", nnx.Param(1.0))
        True
    """

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class Nothing:
    """Matches no Variable.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.Nothing()("w", nnx.Param(1.0))
        False
    """

    def __call__(self, path: str, variable: Variable[tp.Any]) -> bool:
        return False


_KNOWN_PREDICATES = (_Collection, _OfType, Not, _Combinator, PathContains, Everything, Nothing)


def is_everything(filter: Filter) -> bool:
    """Whether `filter` is ``...`` or `Everything()`."""
    return filter is Ellipsis or isinstance(filter, Everything)
