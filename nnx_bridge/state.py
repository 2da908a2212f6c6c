"""State: a flat, path-sorted mapping ``"a/b/c" -> Variable``, and Linen's layout."""

from __future__ import annotations

import typing as tp

import jax

from nnx_bridge import filters as filterlib
from nnx_bridge.variables import Variable, make_variable

_DictKey = jax.tree_util.DictKey


def path_sort_key(path: str) -> str:
    """Sort key of a path: compares its parts level by level, as JAX sorts nested dicts.

    ``"a/b" < "a-x"`` because part ``"a"`` sorts before ``"a-x"``; replacing the
    separator by the lowest character gives that order with plain string sorting.
    """
    return path.replace("/", "\0")


def _item_key(item: tuple[str, tp.Any]) -> str:
    return item[0].replace("/", "\0")


class State(dict):  # type: ignore[type-arg]
    """A flat mapping from ``"a/b/c"`` paths to Variables, always sorted by path.

    Sorting is by path parts, level by level, which is the order in which JAX
    flattens the equivalent nested dict. A State is a pytree whose children are
    its Variables, keyed by path, so it goes through `jax.jit`, `jax.grad` and
    `jax.vmap` like a dict.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> s = nnx.State({"w": nnx.Param(jnp.ones(2)), "b": nnx.Param(jnp.zeros(2))})
        >>> list(s)
        ['b', 'w']
        >>> list(s.filter("params"))
        ['b', 'w']
    """

    def __init__(self, *args: tp.Any, **kwargs: tp.Any):
        items = dict(*args, **kwargs)
        for path in items:
            _check_path(path)
        super().__init__(sorted(items.items(), key=_item_key))

    @classmethod
    def _from_sorted(cls, items: tp.Iterable[tuple[str, tp.Any]]) -> "State":
        new = dict.__new__(cls)
        dict.__init__(new, items)
        return new

    # -- keep the order sorted under mutation ------------------------------------
    def __setitem__(self, path: str, variable: tp.Any) -> None:
        if path in self:
            dict.__setitem__(self, path, variable)
            return
        _check_path(path)
        self._resort({**self, path: variable})

    def update(self, *args: tp.Any, **kwargs: tp.Any) -> None:  # type: ignore[override]
        incoming = dict(*args, **kwargs)
        for path in incoming:
            _check_path(path)
        self._resort({**self, **incoming})

    def setdefault(self, path: str, default: tp.Any = None) -> tp.Any:  # type: ignore[override]
        if path not in self:
            self[path] = default
        return self[path]

    def __ior__(self, other: tp.Any) -> "State":  # type: ignore[override]
        self.update(other)
        return self

    def __or__(self, other: tp.Any) -> "State":  # type: ignore[override]
        return State({**self, **other})

    def _resort(self, items: dict[str, tp.Any]) -> None:
        ordered = sorted(items.items(), key=_item_key)
        dict.clear(self)
        dict.update(self, ordered)

    def copy(self) -> "State":
        """A shallow copy (the same Variable objects)."""
        return State._from_sorted(self.items())

    # -- selecting ---------------------------------------------------------------
    def filter(self, *filters: filterlib.Filter) -> "State":
        """The Variables matching any of `filters`, as a new State.

        Example:
            >>> import nnx_bridge as nnx
            >>> s = nnx.State({"w": nnx.Param(1.0), "n": nnx.Variable("counts", 0)})
            >>> list(s.filter("counts")), list(s.filter(nnx.Param, "counts"))
            (['n'], ['n', 'w'])
        """
        if not filters:
            raise TypeError("State.filter needs at least one filter, e.g. state.filter('params').")
        predicates = [filterlib.to_predicate(f) for f in filters]
        return State._from_sorted(
            (path, v) for path, v in self.items() if any(p(path, v) for p in predicates)
        )

    def split(self, *filters: filterlib.Filter) -> tp.Any:
        """Splits into one State per filter; each Variable goes to the first that matches.

        Returns a single State for a single filter, else a tuple. Every Variable
        must be matched: end with ``...`` to collect the rest.

        Example:
            >>> import nnx_bridge as nnx
            >>> s = nnx.State({"w": nnx.Param(1.0), "n": nnx.Variable("counts", 0)})
            >>> params, rest = s.split("params", ...)
            >>> list(params), list(rest)
            (['w'], ['n'])
        """
        if not filters:
            raise TypeError("State.split needs at least one filter, e.g. state.split('params', ...).")
        predicates = [filterlib.to_predicate(f) for f in filters]
        buckets: list[list[tuple[str, tp.Any]]] = [[] for _ in filters]
        leftover: list[str] = []
        for path, variable in self.items():
            for bucket, predicate in zip(buckets, predicates):
                if predicate(path, variable):
                    bucket.append((path, variable))
                    break
            else:
                leftover.append(path)
        if leftover:
            shown = ", ".join(repr(p) for p in leftover[:10])
            more = f" and {len(leftover) - 10} more" if len(leftover) > 10 else ""
            raise ValueError(
                f"split: {len(leftover)} variable(s) matched none of the filters "
                f"{filters!r}: {shown}{more}. Add a filter for them, or end the filters "
                f"with ... to collect the rest."
            )
        states = tuple(State._from_sorted(bucket) for bucket in buckets)
        return states[0] if len(states) == 1 else states

    def merge(*states: "State") -> "State":  # noqa: N805 - works as State.merge(a, b) and a.merge(b)
        """Merges States into one; for a path present in several, the last one wins.

        Example:
            >>> import nnx_bridge as nnx
            >>> a = nnx.State({"w": nnx.Param(1.0)})
            >>> b = nnx.State({"n": nnx.Variable("counts", 0)})
            >>> list(nnx.State.merge(a, b))
            ['n', 'w']
        """
        for state in states:
            if not isinstance(state, dict):
                raise TypeError(
                    f"State.merge takes States; found {type(state).__name__}. "
                    f"Wrap plain Linen variables with nnx.from_variables(...)."
                )
        if len(states) == 1 and isinstance(states[0], State):
            return State._from_sorted(states[0].items())
        merged: dict[str, tp.Any] = {}
        for state in states:
            merged.update(state)
        return State(merged)


def _check_path(path: tp.Any) -> None:
    if not isinstance(path, str) or not path or "//" in path or path.startswith("/") or path.endswith("/"):
        raise ValueError(
            f"State paths are non-empty strings of '/'-separated names such as 'layers/0/kernel'; "
            f"found {path!r}."
        )


def _flatten_with_keys(state: State) -> tuple[tuple[tuple[tp.Any, tp.Any], ...], tuple[str, ...]]:
    return tuple((_DictKey(path), v) for path, v in state.items()), tuple(state.keys())


def _flatten(state: State) -> tuple[tuple[tp.Any, ...], tuple[str, ...]]:
    return tuple(state.values()), tuple(state.keys())


def _unflatten(paths: tuple[str, ...], children: tp.Iterable[tp.Any]) -> State:
    return State._from_sorted(zip(paths, children))


jax.tree_util.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, flatten_func=_flatten)


def to_variables(state: tp.Mapping[str, Variable[tp.Any]]) -> dict[str, dict[str, tp.Any]]:
    """Converts a State to Linen's variables layout ``{collection: {"a": {"b": value}}}``.

    Sharding names are not part of plain Linen dicts; the Linen bridge boxes
    them as ``nn.Partitioned``. The inverse is `from_variables`.

    Example:
        >>> import nnx_bridge as nnx
        >>> s = nnx.State({"l1/kernel": nnx.Param(1.0), "bn/mean": nnx.BatchStat(0.0)})
        >>> nnx.to_variables(s)
        {'batch_stats': {'bn': {'mean': 0.0}}, 'params': {'l1': {'kernel': 1.0}}}
    """
    variables: dict[str, dict[str, tp.Any]] = {}
    for path, variable in state.items():
        if not isinstance(variable, Variable):
            raise TypeError(
                f"to_variables: expected a Variable at path {path!r}, found "
                f"{type(variable).__name__}. Build States with Module.partition() or nnx.from_variables()."
            )
        node = variables.setdefault(variable.collection, {})
        *parents, leaf = path.split("/")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"to_variables: path {path!r} goes through {'/'.join(parents[: i + 1])!r}, "
                    f"which is itself a variable of collection {variable.collection!r}."
                )
        if leaf in node:
            raise ValueError(
                f"to_variables: path {path!r} of collection {variable.collection!r} is both a "
                f"variable and a prefix of other paths."
            )
        node[leaf] = variable.value
    return {collection: variables[collection] for collection in sorted(variables)}


def from_variables(variables: tp.Mapping[str, tp.Mapping[str, tp.Any]]) -> State:
    """Converts Linen's ``{collection: nested dict}`` variables into a State.

    Each leaf becomes a Variable of the canonical type for its collection
    (`Param` for ``'params'``, `BatchStat` for ``'batch_stats'``, else `Variable`).
    The inverse is `to_variables`.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.from_variables({"params": {"l1": {"kernel": 1.0}}})
        {'l1/kernel': Param(value=1.0, collection=params, sharding=None)}
    """
    if not isinstance(variables, tp.Mapping):
        raise TypeError(
            f"from_variables expects Linen variables {{collection: {{name: ...}}}}; found "
            f"{type(variables).__name__}."
        )
    items: dict[str, Variable[tp.Any]] = {}
    for collection, tree in variables.items():
        if not isinstance(tree, tp.Mapping):
            raise TypeError(
                f"from_variables: collection {collection!r} must map names to values, found "
                f"{type(tree).__name__}. Pass the whole variables dict, e.g. "
                f"{{'params': params}}, not a single collection's leaves."
            )
        for path, value in _flatten_nested(tree, ()):
            if path in items:
                raise ValueError(
                    f"from_variables: path {path!r} appears in collections "
                    f"{items[path].collection!r} and {collection!r}; a path can belong to one "
                    f"collection only."
                )
            items[path] = make_variable(collection, value)
    return State(items)


def _flatten_nested(tree: tp.Mapping[str, tp.Any], prefix: tuple[str, ...]) -> tp.Iterator[tuple[str, tp.Any]]:
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key or not key:
            raise ValueError(
                f"from_variables: keys must be non-empty strings without '/'; found {key!r} "
                f"under {repr('/'.join(prefix)) if prefix else 'the top level'}."
            )
        if isinstance(value, tp.Mapping):
            yield from _flatten_nested(value, (*prefix, key))
        else:
            yield "/".join((*prefix, key)), value
