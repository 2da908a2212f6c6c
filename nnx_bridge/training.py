"""Optax on filtered parameters: label and mask trees built from the filter language."""

from __future__ import annotations

import typing as tp

from flax.core import meta

from nnx_bridge import filters as filterlib
from nnx_bridge.errors import listing
from nnx_bridge.state import State, escape_name
from nnx_bridge.variables import Variable, make_variable

Tree = tp.Any
_NO_DEFAULT = object()


def labels(
    tree: Tree,
    label_filters: tp.Mapping[tp.Hashable, filterlib.Filter],
    *,
    default: tp.Any = _NO_DEFAULT,
    collection: str = "params",
    variables: bool = False,
    allow_empty: bool = False,
) -> Tree:
    """A tree like `tree` holding, at each variable, the label of the first filter it matches.

    Feed it to ``optax.multi_transform`` or ``optax.transforms.partition``.
    `tree` is a State, or a nested dict of one collection's values (``'params'``
    unless `collection` says otherwise), or, with ``variables=True``, a whole
    Linen variables dict ``{collection: {...}}``. Nothing is guessed from the
    keys: a model with a submodule named ``params`` is read as such. Paths are
    the ``/``-joined keys below the collection.

    A variable that matches no filter takes `default`, and is an error when no
    default is given. A label whose filter selects no variable (e.g. a typo,
    ``PathContains("encoder")`` on a model without one) is an error listing the
    paths that exist; pass ``allow_empty=True`` when that is intended.

    Example:
        >>> import jax.numpy as jnp, optax, nnx_bridge as nnx
        >>> params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
        >>> nnx.labels(params, {"frozen": nnx.PathContains("encoder")}, default="train")
        {'encoder': {'kernel': 'frozen'}, 'head': {'kernel': 'train'}}
        >>> tx = optax.multi_transform(
        ...     {"train": optax.sgd(0.1), "frozen": optax.set_to_zero()},
        ...     nnx.labels(params, {"frozen": nnx.PathContains("encoder")}, default="train"))
    """
    if not isinstance(label_filters, tp.Mapping):
        raise TypeError(
            f"labels: label_filters must be a mapping {{label: filter}}, e.g. "
            f"{{'frozen': nnx.PathContains('encoder')}}; found {type(label_filters).__name__} "
            f"{label_filters!r}. Give each filter the label optax should see."
        )
    predicates = [(label, filterlib.to_predicate(f)) for label, f in label_filters.items()]
    unmatched: list[str] = []
    seen: list[str] = []
    used: set[tp.Any] = set()

    def label_of(path: str, variable: Variable[tp.Any]) -> tp.Any:
        seen.append(path)
        for label, predicate in predicates:
            if predicate(path, variable):
                used.add(label)
                return label
        if default is _NO_DEFAULT:
            unmatched.append(path)
            return None
        return default

    result = map_variables(tree, label_of, collection=collection, variables=variables)
    if unmatched:
        raise ValueError(
            f"labels: {len(unmatched)} variable(s) matched none of the filters for labels "
            f"{list(label_filters)}: {listing(unmatched)}. Add a filter "
            f"for them, or pass default=<label>."
        )
    if not allow_empty:
        for label, f in label_filters.items():
            if label not in used:
                _raise_selects_nothing("labels", f"the filter for label {label!r}", f, seen, variables)
    return result


def mask(
    tree: Tree,
    filter: filterlib.Filter,
    *,
    collection: str = "params",
    variables: bool = False,
    allow_empty: bool = False,
) -> Tree:
    """A tree like `tree` of booleans: True where a variable matches `filter`.

    Feed it to ``optax.masked`` or to ``optax.add_decayed_weights(mask=...)``.
    `tree` is read as in `labels`. A filter that selects no variable is an error
    listing the paths that exist; pass ``allow_empty=True`` when that is intended.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
        >>> nnx.mask(params, nnx.PathContains("kernel"))
        {'dense': {'kernel': True, 'bias': False}}
    """
    predicate = filterlib.to_predicate(filter)
    seen: list[str] = []
    hits: list[str] = []

    def matches(path: str, variable: Variable[tp.Any]) -> bool:
        seen.append(path)
        hit = bool(predicate(path, variable))
        if hit:
            hits.append(path)
        return hit

    result = map_variables(tree, matches, collection=collection, variables=variables)
    if not hits and not allow_empty:
        _raise_selects_nothing("mask", "the filter", filter, seen, variables)
    return result


def _raise_selects_nothing(
    what: str, which: str, filter: tp.Any, paths: list[str], variables: bool
) -> tp.NoReturn:
    shown = listing(paths)
    hint = (
        ""
        if variables
        else (" If the tree is a whole Linen variables dict {collection: {...}}, pass variables=True.")
    )
    raise ValueError(
        f"{what}: {which} ({filter!r}) selects no variable, so it would freeze or decay nothing. "
        f"The paths are: {shown or 'none'}. Fix the filter (a typo?), or pass allow_empty=True "
        f"if selecting nothing is intended.{hint}"
    )


def map_variables(
    tree: Tree,
    fn: tp.Callable[[str, Variable[tp.Any]], tp.Any],
    *,
    collection: str = "params",
    variables: bool = False,
) -> Tree:
    """Replaces every variable of `tree` by ``fn(path, variable)``, keeping the structure.

    `tree` is a State, a nested dict of `collection`'s values, or (with
    ``variables=True``) a whole Linen variables dict ``{collection: {...}}``. In
    a State the result sits inside each Variable (so the tree structure is the
    State's); in dicts it replaces the leaf, box included.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.training.map_variables({"params": {"w": 1.0}}, lambda p, v: p, variables=True)
        {'params': {'w': 'w'}}
    """
    if isinstance(tree, State):
        return State.from_sorted((p, v.replace(fn(p, v))) for p, v in tree.items())
    if not isinstance(tree, tp.Mapping):
        raise TypeError(f"Expected a State or a (nested) dict of variables; found {type(tree).__name__}.")
    if not isinstance(collection, str) or not collection:
        raise TypeError(f"collection must be a collection name such as 'params'; found {collection!r}.")
    if variables:
        for name, sub in tree.items():
            if not isinstance(sub, tp.Mapping):
                raise TypeError(
                    f"variables=True reads the tree as {{collection: {{name: ...}}}}, but "
                    f"{name!r} holds a {type(sub).__name__}. Pass variables=False for one "
                    f"collection's nested dict."
                )
        return _rebuild(tree, {c: _map_nested(sub, c, "", fn) for c, sub in tree.items()})
    return _map_nested(tree, collection, "", fn)


def _map_nested(
    tree: tp.Any, collection: str, prefix: str, fn: tp.Callable[[str, Variable[tp.Any]], tp.Any]
) -> tp.Any:
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
    return _rebuild(
        tree, {k: _map_nested(v, collection, f"{prefix}{escape_name(k)}/", fn) for k, v in tree.items()}
    )


def _rebuild(original: tp.Mapping[str, tp.Any], items: dict[str, tp.Any]) -> tp.Any:
    if type(original) is dict:
        return items
    rebuild: tp.Callable[[dict[str, tp.Any]], tp.Any] = tp.cast(tp.Any, type(original))  # e.g. FrozenDict
    return rebuild(items)
