"""State: a flat, path-sorted mapping ``"a/b/c" -> Variable``, and Linen's layout."""

from __future__ import annotations

import typing as tp

import jax

from nnx_bridge import filters as filterlib
from nnx_bridge.errors import listing
from nnx_bridge.variables import Variable, make_variable

_DictKey = jax.tree_util.DictKey

# ----------------------------------------------------------------------------------
# Names that contain "/": one path segment, escaped
# ----------------------------------------------------------------------------------
# A State path joins names with "/". Linen also has names that contain "/" themselves:
# WeightNorm keeps the scale of its wrapped layer's kernel under the ONE key
# "layer_instance/kernel/scale", beside the key "layer_instance". Such a name is one
# segment of the path, written with JSON Pointer's escapes (RFC 6901): "~" as "~0",
# then "/" as "~1". So "layer_instance/kernel/scale" is the segment
# "layer_instance~1kernel~1scale", every "/" in a path separates segments, and code
# that splits paths on "/" stays correct. Names without "/" or "~" are unchanged.
_ESCAPE = "~"


def escape_name(name: str) -> str:
    """The path segment of one name: ``"~"`` written ``"~0"``, then ``"/"`` written ``"~1"``.

    Example:
        >>> from nnx_bridge.state import escape_name
        >>> escape_name("layer_instance/kernel/scale"), escape_name("a~b"), escape_name("w")
        ('layer_instance~1kernel~1scale', 'a~0b', 'w')
    """
    if _ESCAPE in name:
        name = name.replace("~", "~0")
    if "/" in name:
        name = name.replace("/", "~1")
    return name


def unescape_name(segment: str) -> str:
    """The name a path segment stands for; the inverse of `escape_name`.

    Example:
        >>> from nnx_bridge.state import unescape_name
        >>> unescape_name("layer_instance~1kernel~1scale"), unescape_name("a~0b")
        ('layer_instance/kernel/scale', 'a~b')
    """
    if _ESCAPE not in segment:
        return segment
    _check_escapes(segment, segment)
    return segment.replace("~1", "/").replace("~0", "~")


def split_path(path: str) -> tuple[str, ...]:
    """The names along a State path (segments unescaped); the inverse of `join_path`.

    Example:
        >>> from nnx_bridge.state import split_path
        >>> split_path("layer_instance~1kernel~1scale"), split_path("encoder/0/kernel")
        (('layer_instance/kernel/scale',), ('encoder', '0', 'kernel'))
    """
    if _ESCAPE not in path:
        return tuple(path.split("/"))
    return tuple(unescape_name(part) for part in path.split("/"))


def join_path(names: tp.Iterable[str]) -> str:
    """The State path of a sequence of names (each escaped with `escape_name`).

    Example:
        >>> from nnx_bridge.state import join_path
        >>> join_path(["wn", "layer_instance/kernel/scale"])
        'wn/layer_instance~1kernel~1scale'
    """
    return "/".join(escape_name(name) for name in names)


def _check_escapes(segment: str, path: str) -> None:
    i = segment.find(_ESCAPE)
    while i != -1:
        if segment[i + 1 : i + 2] not in ("0", "1"):
            raise ValueError(
                f"State path {path!r} has '~' not followed by '0' or '1'. In State paths '~' "
                f"starts an escape: '~0' stands for '~' and '~1' for a '/' inside one name "
                f"(as Linen's key 'layer_instance/kernel/scale' is the one segment "
                f"'layer_instance~1kernel~1scale'). Write names with nnx.state.escape_name(name) "
                f"or build paths with nnx.state.join_path(names)."
            )
        i = segment.find(_ESCAPE, i + 2)


def path_sort_key(path: str) -> str:
    """Sort key of a path: compares its names level by level, as JAX sorts nested dicts.

    ``"a/b" < "a-x"`` because part ``"a"`` sorts before ``"a-x"``; replacing the
    separator by the lowest character gives that order with plain string sorting.
    Escaped segments compare by the names they stand for (``"a/b"`` before ``"a0"``,
    as in Linen's dicts).
    """
    if _ESCAPE in path:
        return "\0".join(unescape_name(part) for part in path.split("/"))
    return path.replace("/", "\0")


def _item_key(item: tuple[str, tp.Any]) -> str:
    path = item[0]
    if _ESCAPE in path:
        return path_sort_key(path)
    return path.replace("/", "\0")


class State(dict[tp.Any, tp.Any]):  # keys are paths (str); Any keeps dict's | and |= overridable
    """A flat mapping from ``"a/b/c"`` paths to Variables, always sorted by path.

    A name that itself contains ``"/"`` is one segment written with escapes
    (``"~"`` as ``"~0"``, ``"/"`` as ``"~1"``; see `escape_name` and `join_path`).

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
    def from_sorted(cls, items: tp.Iterable[tuple[str, tp.Any]]) -> "State":
        """A State from ``(path, variable)`` pairs already in State order, without re-checking.

        The fast constructor for code that derives items from another State (a
        filter, a map over its Variables, a pytree unflatten): the paths must be
        valid and in `path_sort_key` order, as they are when taken from a State
        in order. Use ``State(mapping)`` for anything else; it checks and sorts.

        Example:
            >>> import nnx_bridge as nnx
            >>> s = nnx.State({"b": nnx.Param(1.0), "a": nnx.Param(2.0)})
            >>> doubled = nnx.State.from_sorted((p, v.replace(v.value * 2)) for p, v in s.items())
            >>> list(doubled), doubled["a"].value
            (['a', 'b'], 4.0)
        """
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

    def update(self, *args: tp.Any, **kwargs: tp.Any) -> None:
        incoming = dict(*args, **kwargs)
        for path in incoming:
            _check_path(path)
        self._resort({**self, **incoming})

    def setdefault(self, path: str, default: tp.Any = None) -> tp.Any:
        if path not in self:
            self[path] = default
        return self[path]

    def __ior__(self, other: tp.Any) -> "State":
        self.update(other)
        return self

    def __or__(self, other: tp.Any) -> "State":
        return State({**self, **other})

    def _resort(self, items: dict[str, tp.Any]) -> None:
        ordered = sorted(items.items(), key=_item_key)
        dict.clear(self)
        dict.update(self, ordered)

    def copy(self) -> "State":
        """A shallow copy (the same Variable objects)."""
        return State.from_sorted(self.items())

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
        return State.from_sorted((path, v) for path, v in self.items() if any(p(path, v) for p in predicates))

    @tp.overload
    def split(self, first: filterlib.Filter, /) -> State: ...
    @tp.overload
    def split(self, first: filterlib.Filter, second: filterlib.Filter, /) -> tuple[State, State]: ...
    @tp.overload
    def split(
        self,
        first: filterlib.Filter,
        second: filterlib.Filter,
        third: filterlib.Filter,
        /,
        *filters: filterlib.Filter,
    ) -> tuple[State, ...]: ...
    def split(self, *filters: filterlib.Filter) -> State | tuple[State, ...]:
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
            for bucket, predicate in zip(buckets, predicates, strict=True):
                if predicate(path, variable):
                    bucket.append((path, variable))
                    break
            else:
                leftover.append(path)
        if leftover:
            raise ValueError(
                f"split: {len(leftover)} variable(s) matched none of the filters "
                f"{filters!r}: {listing(leftover)}. Add a filter for them, or end the filters "
                f"with ... to collect the rest."
            )
        states = tuple(State.from_sorted(bucket) for bucket in buckets)
        return states[0] if len(states) == 1 else states

    def merge(*states: "State") -> "State":
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
            return State.from_sorted(states[0].items())
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
    if _ESCAPE in path:
        _check_escapes(path, path)


def _flatten_with_keys(state: State) -> tuple[tuple[tuple[tp.Any, tp.Any], ...], tuple[str, ...]]:
    return tuple((_DictKey(path), v) for path, v in state.items()), tuple(state.keys())


def _flatten(state: State) -> tuple[tuple[tp.Any, ...], tuple[str, ...]]:
    return tuple(state.values()), tuple(state.keys())


def _unflatten(paths: tuple[str, ...], children: tp.Iterable[tp.Any]) -> State:
    return State.from_sorted(zip(paths, children, strict=True))


jax.tree_util.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, flatten_func=_flatten)


def to_variables(state: tp.Mapping[str, Variable[tp.Any]]) -> dict[str, dict[str, tp.Any]]:
    """Converts a State to Linen's variables layout ``{collection: {"a": {"b": value}}}``.

    Sharding names are not part of plain Linen dicts; the Linen bridge boxes
    them as ``nn.Partitioned``. A path segment with escapes (see `escape_name`)
    becomes one key containing ``"/"``. The inverse is `from_variables`.

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
        names = split_path(path)  # Linen's keys: escaped segments unescaped
        clash = nest_into(variables.setdefault(variable.collection, {}), names, variable.value)
        if clash is not None and len(clash) < len(names):
            raise ValueError(
                f"to_variables: path {path!r} goes through {join_path(clash)!r}, "
                f"which is itself a variable of collection {variable.collection!r}."
            )
        if clash is not None:
            raise ValueError(
                f"to_variables: path {path!r} of collection {variable.collection!r} is both a "
                f"variable and a prefix of other paths."
            )
    return {collection: variables[collection] for collection in sorted(variables)}


def from_variables(variables: tp.Mapping[str, tp.Mapping[str, tp.Any]]) -> State:
    """Converts Linen's ``{collection: nested dict}`` variables into a State.

    Each leaf becomes a Variable of the canonical type for its collection
    (`Param` for ``'params'``, `BatchStat` for ``'batch_stats'``, else `Variable`).
    A key that contains ``"/"`` (Linen's ``"layer_instance/kernel/scale"``) is
    one path segment, escaped by `escape_name`. The inverse is `to_variables`.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.from_variables({"params": {"l1": {"kernel": 1.0}}})
        {'l1/kernel': Param(value=1.0, collection=params, sharding=None)}
        >>> list(nnx.from_variables({"params": {"wn": {"layer_instance/kernel/scale": 1.0}}}))
        ['wn/layer_instance~1kernel~1scale']
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
        for names, value in flatten_nested(tree):
            path = _checked_path(names)
            if path in items:
                raise ValueError(
                    f"from_variables: path {path!r} appears in collections "
                    f"{items[path].collection!r} and {collection!r}; a path can belong to one "
                    f"collection only."
                )
            items[path] = make_variable(collection, value)
    return State(items)


def _checked_path(names: tuple[tp.Any, ...]) -> str:
    for i, key in enumerate(names):
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"from_variables: keys must be non-empty strings; found {key!r} "
                f"under {repr(join_path(names[:i])) if i else 'the top level'}."
            )
    return join_path(names)  # a key containing "/" stays one (escaped) segment


# ----------------------------------------------------------------------------------
# Nested dicts: the one flatten/nest pair of the package
# ----------------------------------------------------------------------------------
def flatten_nested(tree: tp.Any) -> tp.Iterator[tuple[tuple[tp.Any, ...], tp.Any]]:
    """The ``(keys, leaf)`` pairs of nested mappings, depth first in each mapping's order.

    Keys are returned as they are (not escaped, not checked); a `tree` that is
    not a mapping is one leaf with no keys. `nest` is the inverse.

    Example:
        >>> from nnx_bridge.state import flatten_nested
        >>> list(flatten_nested({"a": {"b": 1, "c/d": 2}, "e": 3}))
        [(('a', 'b'), 1), (('a', 'c/d'), 2), (('e',), 3)]
    """
    if not isinstance(tree, tp.Mapping):
        yield (), tree
        return
    stack: list[tuple[tuple[tp.Any, ...], tp.Iterator[tuple[tp.Any, tp.Any]]]] = [((), iter(tree.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            if isinstance(value, tp.Mapping):
                stack.append(((*prefix, key), iter(value.items())))
                break
            yield (*prefix, key), value
        else:
            stack.pop()


def nest_into(
    tree: dict[tp.Any, tp.Any], keys: tp.Sequence[tp.Any], value: tp.Any
) -> tuple[tp.Any, ...] | None:
    """Puts `value` at `keys` in nested dicts `tree`, creating the dicts on the way.

    Returns None when placed. When the place is taken it places nothing and
    returns the keys of what is in the way: a shorter prefix of `keys` that
    holds a leaf, or `keys` itself when something is already there.

    Example:
        >>> from nnx_bridge.state import nest_into
        >>> tree = {}
        >>> nest_into(tree, ("a", "b"), 1), nest_into(tree, ("a", "b", "c"), 2), tree
        (None, ('a', 'b'), {'a': {'b': 1}})
    """
    node = tree
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            return tuple(keys[: depth + 1])
    if keys[-1] in node:
        return tuple(keys)
    node[keys[-1]] = value
    return None


def nest(items: tp.Iterable[tuple[tp.Sequence[tp.Any], tp.Any]]) -> dict[tp.Any, tp.Any]:
    """Nested dicts from ``(keys, leaf)`` pairs; the inverse of `flatten_nested`.

    Raises:
        ValueError: if one pair's keys are a prefix of another's, or repeat.

    Example:
        >>> from nnx_bridge.state import nest
        >>> nest([(("a", "b"), 1), (("a", "c/d"), 2), (("e",), 3)])
        {'a': {'b': 1, 'c/d': 2}, 'e': 3}
    """
    tree: dict[tp.Any, tp.Any] = {}
    for keys, value in items:
        clash = nest_into(tree, keys, value)
        if clash is not None:
            raise ValueError(
                f"nest: cannot place a leaf at {list(keys)!r}: {list(clash)!r} already holds "
                f"{'a leaf' if len(clash) < len(keys) else 'a value'}. Each key path must lead "
                f"to one leaf and be no prefix of another."
            )
    return tree
