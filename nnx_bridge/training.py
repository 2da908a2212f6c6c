"""Optax on filtered parameters: label and mask trees built from the filter language."""

from __future__ import annotations

import typing as tp

from flax.core import meta

from nnx_bridge import filters as filterlib
from nnx_bridge.state import State, escape_name
from nnx_bridge.variables import Variable, make_variable

Tree = tp.Any
_NO_DEFAULT = object()


def labels(tree: Tree, label_filters: tp.Mapping[tp.Hashable, filterlib.Filter], *,
           default: tp.Any = _NO_DEFAULT, collection: str | None = None) -> Tree:
    """A tree like `tree` holding, at each variable, the label of the first filter it matches.

    Feed it to ``optax.multi_transform`` or ``optax.transforms.partition``.
    `tree` is a State, a Linen variables dict ``{collection: {...}}`` (recognised
    by its ``'params'`` key), or a nested dict of one collection (``'params'``
    unless `collection` says otherwise). Paths are the ``/``-joined keys below
    the collection. A variable that matches no filter takes `default`, and is
    an error when no default is given.

    Example:
        >>> import jax.numpy as jnp, optax, nnx_bridge as nnx
        >>> params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
        >>> nnx.labels(params, {"frozen": nnx.PathContains("encoder")}, default="train")
        {'encoder': {'kernel': 'frozen'}, 'head': {'kernel': 'train'}}
        >>> tx = optax.multi_transform(
        ...     {"train": optax.sgd(0.1), "frozen": optax.set_to_zero()},
        ...     nnx.labels(params, {"frozen": nnx.PathContains("encoder")}, default="train"))
    """
    predicates = [(label, filterlib.to_predicate(f)) for label, f in label_filters.items()]
    unmatched: list[str] = []

    def label_of(path: str, variable: Variable[tp.Any]) -> tp.Any:
        for label, predicate in predicates:
            if predicate(path, variable):
                return label
        if default is _NO_DEFAULT:
            unmatched.append(path)
            return None
        return default

    result = map_variables(tree, label_of, collection=collection)
    if unmatched:
        shown = ", ".join(repr(p) for p in unmatched[:10])
        raise ValueError(
            f"labels: {len(unmatched)} variable(s) matched none of the filters for labels "
            f"{list(label_filters)}: {shown}{' ...' if len(unmatched) > 10 else ''}. Add a filter "
            f"for them, or pass default=<label>."
        )
    return result


def mask(tree: Tree, filter: filterlib.Filter, *, collection: str | None = None) -> Tree:
    """A tree like `tree` of booleans: True where a variable matches `filter`.

    Feed it to ``optax.masked`` or to ``optax.add_decayed_weights(mask=...)``.
    `tree` is read as in `labels`.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
        >>> nnx.mask(params, nnx.PathContains("kernel"))
        {'dense': {'kernel': True, 'bias': False}}
    """
    predicate = filterlib.to_predicate(filter)
    return map_variables(tree, lambda path, variable: bool(predicate(path, variable)), collection=collection)


def map_variables(tree: Tree, fn: tp.Callable[[str, Variable[tp.Any]], tp.Any], *,
                  collection: str | None = None) -> Tree:
    """Replaces every variable of `tree` by ``fn(path, variable)``, keeping the structure.

    In a State the result sits inside each Variable (so the tree structure is the
    State's); in dicts it replaces the leaf, box included.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.training.map_variables({"params": {"w": 1.0}}, lambda p, v: p)
        {'params': {'w': 'w'}}
    """
    if isinstance(tree, State):
        return State._from_sorted((p, v.replace(fn(p, v))) for p, v in tree.items())
    if not isinstance(tree, tp.Mapping):
        raise TypeError(
            f"Expected a State or a (nested) dict of variables; found {type(tree).__name__}."
        )
    if collection is None and "params" in tree:
        return _rebuild(tree, {c: _map_nested(sub, c, "", fn) for c, sub in tree.items()})
    return _map_nested(tree, collection or "params", "", fn)


def _map_nested(tree: tp.Any, collection: str, prefix: str,
                fn: tp.Callable[[str, Variable[tp.Any]], tp.Any]) -> tp.Any:
    if not isinstance(tree, tp.Mapping):
        path = prefix.rstrip("/")
        if isinstance(tree, meta.AxisMetadata):
            names = getattr(tree, "names", None)
            plain = isinstance(names, tuple) and all(n is None or isinstance(n, str) for n in names)
            value = tree.value if hasattr(tree, "value") else tree.unbox()
            variable = make_variable(collection, value, sharding=names if plain else None)
        else:
            variable = make_variable(collection, tree)
        return fn(path, variable)
    # Keys with "/" are one escaped segment of the path that filters see, as in a State.
    return _rebuild(tree, {k: _map_nested(v, collection, f"{prefix}{escape_name(k)}/", fn)
                           for k, v in tree.items()})


def _rebuild(original: tp.Mapping[str, tp.Any], items: dict[str, tp.Any]) -> tp.Any:
    return items if type(original) is dict else type(original)(items)
