"""Between a State and the variables of a Linen scope: flat paths and sharding boxes."""

from __future__ import annotations

import typing as tp

import flax.linen as nn
from flax.core import meta

from nnx_bridge.state import State, flatten_nested, join_path, to_variables


def boxed_variables(
    state: State, box: type[meta.Partitioned] = meta.Partitioned
) -> dict[str, dict[str, tp.Any]]:
    """Linen's ``{collection: nested dict}``, sharded Variables boxed as `box` (`nn.Partitioned`).

    A Variable with its own ``sharding_rules`` is boxed as ``nn.LogicallyPartitioned``
    carrying them, whatever `box` is.
    """
    boxed = State.from_sorted(
        (path, v.replace(_box(v, box)) if v.sharding is not None else v) for path, v in state.items()
    )
    return to_variables(boxed)


def _box(variable: tp.Any, box: type[meta.Partitioned]) -> meta.Partitioned:
    rules = getattr(variable, "sharding_rules", None)
    if rules is not None:
        return nn.LogicallyPartitioned(variable.value, names=variable.sharding, rules=rules)
    return box(variable.value, names=variable.sharding)


def flat_leaves(variables: tp.Mapping[str, tp.Any]) -> dict[tuple[str, str], tp.Any]:
    """``{(collection, "a/b"): leaf}`` of a Linen variables mapping; boxes stay boxed."""
    # A Linen key with "/" is one (escaped) State path segment.
    return {
        (collection, join_path(keys)): leaf
        for collection, tree in variables.items()
        for keys, leaf in flatten_nested(tree)
    }


def unbox(leaf: tp.Any) -> tp.Any:
    """The raw value of a leaf (applying a box's sharding constraint under a mesh, as Linen does)."""
    return leaf.unbox() if isinstance(leaf, meta.AxisMetadata) else leaf


def rebox(old_leaf: tp.Any, value: tp.Any) -> tp.Any:
    """`value` in the same kind of box as `old_leaf` (unboxed if it was not boxed)."""
    return old_leaf.replace_boxed(value) if isinstance(old_leaf, meta.AxisMetadata) else value
