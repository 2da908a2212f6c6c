"""Sharding: `Variable.sharding` names as PartitionSpecs and NamedShardings on a mesh.

A Variable's ``sharding`` holds one name (or None) per array dimension. Without
rules the names are mesh axis names; with rules in Linen's format
(``(("batch", "data"), ("hidden", "model"))``, given as ``rules=`` or set by
``nn.logical_axis_rules``) they are logical names, mapped to mesh axes exactly
as Linen's ``nn.logical_to_mesh_axes`` maps them. The same functions read the
Linen variables of a bridged model, where the names sit in ``nn.Partitioned``
(mesh axes) or ``nn.LogicallyPartitioned`` (logical names) boxes.

Nothing here moves data: pass the shardings to `jax.jit` (``out_shardings=``)
or `jax.device_put`, as for any JAX program.
"""

from __future__ import annotations

import typing as tp

import flax.linen as nn
import jax
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nnx_bridge.context import Context
from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.partition_under import partition_under
from nnx_bridge.state import State
from nnx_bridge.variables import Variable, check_sharding

Rules = tp.Sequence[tuple[str, tp.Any]]


def logical_to_mesh(names: tp.Sequence[str | None] | None, rules: Rules | None = None) -> PartitionSpec:
    """The PartitionSpec of one array's axis names, mapped through `rules` when rules are in use.

    Rules come from `rules`, else from an enclosing ``nn.logical_axis_rules``
    context; with neither, the names are mesh axis names already. A logical
    name without a rule is replicated (None), as in Linen.

    Example:
        >>> from nnx_bridge.sharding import logical_to_mesh
        >>> logical_to_mesh(("batch", "hidden"), rules=(("batch", "data"), ("hidden", "model")))
        P('data', 'model')
        >>> logical_to_mesh(("data", None)), logical_to_mesh(None)
        (P('data', None), P())
    """
    if names is None:
        return PartitionSpec()
    rules = _rules_in_use(_checked_rules(rules))
    if rules is None:
        return PartitionSpec(*names)
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    assert spec is not None  # Flax returns None only for names=None
    return spec


def get_partition_spec(tree: tp.Any, rules: Rules | None = None) -> tp.Any:
    """PartitionSpecs for a State, or for Linen variables of a bridged model.

    For a State: a State of the same Variables (same paths, types, metadata)
    whose values are PartitionSpecs, so it matches the State's pytree structure
    (usable as ``out_shardings`` under a mesh). A Variable without sharding gets
    ``PartitionSpec()`` (replicated).

    For Linen variables: the tree with each box replaced by its PartitionSpec
    (``nn.Partitioned`` names as they are, ``nn.LogicallyPartitioned`` names
    mapped with `rules`, its own ``rules``, or the enclosing
    ``nn.logical_axis_rules``) and every other leaf by ``PartitionSpec()``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.sharding import get_partition_spec
        >>> s = nnx.State({"w": nnx.Param(jnp.ones((4, 2)), sharding=("embed", "mlp")),
        ...                "b": nnx.Param(jnp.zeros(2))})
        >>> specs = get_partition_spec(s, rules=(("embed", None), ("mlp", "model")))
        >>> specs["w"].value, specs["b"].value
        (P(None, 'model'), P())
    """
    rules = _checked_rules(rules)
    if isinstance(tree, State):
        return State.from_sorted(
            (path, v.replace(_variable_spec(path, v, rules))) for path, v in tree.items()
        )
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _leaf_spec(jax.tree_util.keystr(path), leaf, rules),
        tree,
        is_leaf=lambda x: isinstance(x, meta.AxisMetadata),
    )


def get_named_sharding(tree: tp.Any, mesh: Mesh, rules: Rules | None = None) -> tp.Any:
    """`get_partition_spec` with each spec made a `NamedSharding` on `mesh`.

    Every mesh axis a spec names must be an axis of `mesh`; the error names
    the variable otherwise.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.sharding import get_named_sharding
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> s = nnx.State({"w": nnx.Param(jnp.ones((4, 2)), sharding=("data", "model"))})
        >>> shardings = get_named_sharding(s, mesh)
        >>> shardings["w"].value.spec
        P('data', 'model')
        >>> jax.device_put(s, shardings)["w"].value.sharding.spec
        P('data', 'model')
    """
    _check_mesh(mesh, "get_named_sharding")
    specs = get_partition_spec(tree, rules)
    if isinstance(specs, State):
        return State.from_sorted(
            (path, v.replace(_named(mesh, v.value, f"path {path!r}"))) for path, v in specs.items()
        )
    leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    named = [_named(mesh, spec, jax.tree_util.keystr(path)) for path, spec in leaves[0]]
    return jax.tree.unflatten(leaves[1], named)


def sharded_init(
    factory: tp.Callable[..., Module],
    *args: tp.Any,
    mesh: Mesh,
    key: tp.Any = 0,
    rules: Rules | None = None,
    **kwargs: tp.Any,
) -> tuple[State, ModuleDef[tp.Any]]:
    """Builds ``factory(*args, ctx=Context(key), **kwargs)`` directly into sharded arrays.

    The module is first built under `jax.eval_shape` (no memory) to read its
    sharding names; then `jax.jit` with ``out_shardings`` runs the initialisers
    so that each device computes and holds only its own shards. The values are
    those of building the module eagerly with the same key.

    Returns:
      ``(state, moduledef)``, as ``factory(...).partition()`` would.

    Example:
        >>> import jax, nnx_bridge as nnx
        >>> from nnx_bridge.sharding import sharded_init
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> state, moduledef = sharded_init(nnx.Linear, 4, 8, sharding=("embed", "mlp"),
        ...                                 mesh=mesh, rules=(("mlp", "model"),))
        >>> state["kernel"].value.sharding.spec
        P(None, 'model')
    """
    _check_mesh(mesh, "sharded_init")
    rules = _checked_rules(rules)

    def make(key: jax.Array) -> Module:
        return factory(*args, ctx=Context(key), **kwargs)

    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    abstract, moduledef = partition_under(lambda build: jax.eval_shape(build, key), make)
    shardings = get_named_sharding(abstract, mesh, rules)
    state, _ = partition_under(lambda build: jax.jit(build, out_shardings=shardings)(key), make)
    return state, moduledef


# ----------------------------------------------------------------------------------
def _rules_in_use(rules: Rules | None) -> Rules | None:
    if rules is not None:
        return tuple(rules)
    active = nn.get_logical_axis_rules()
    return tuple(active) if active else None


def _variable_spec(path: str, variable: tp.Any, rules: Rules | None) -> PartitionSpec:
    if not isinstance(variable, Variable):
        raise TypeError(
            f"get_partition_spec: expected a Variable at path {path!r}, found "
            f"{type(variable).__name__}. Build States with Module.partition()."
        )
    names = variable.sharding
    ndim = getattr(variable.value, "ndim", None)
    if names is not None and ndim is not None:
        check_sharding(
            names,
            ndim,
            where=f"get_partition_spec: the {type(variable).__name__} at path {path!r}",
            what=f"value (shape {tuple(variable.value.shape)})",
        )
    if rules is None:  # a Variable's own rules (from nn.LogicallyPartitioned) come next, as in Linen
        rules = getattr(variable, "sharding_rules", None)
    try:
        return logical_to_mesh(names, rules)
    except ValueError as error:
        raise ValueError(f"get_partition_spec: at path {path!r}: {error}") from None


def _leaf_spec(where: str, leaf: tp.Any, rules: Rules | None) -> PartitionSpec:
    if isinstance(leaf, nn.LogicallyPartitioned):
        own = leaf.rules if rules is None else rules
        own = own if own is not None else _rules_in_use(None)
        if not own and any(name is not None for name in leaf.names):
            raise ValueError(
                f"get_partition_spec: the variable at {where} names logical axes {leaf.names!r} "
                f"(an nn.LogicallyPartitioned box) but no logical axis rules are given, so every "
                f"axis would silently be replicated. Pass rules=(('logical', 'mesh_axis'), ...) or "
                f"call inside nn.logical_axis_rules(...)."
            )
        return logical_to_mesh(leaf.names, own)
    if isinstance(leaf, meta.Partitioned):
        return PartitionSpec(*leaf.names)
    return PartitionSpec()


def _checked_rules(rules: tp.Any) -> Rules | None:
    """Rules as Linen's pairs ``((logical name, mesh axis or axes or None), ...)``, or an error."""
    if rules is None:
        return None
    example = "e.g. rules=(('batch', 'data'), ('hidden', 'model'))"
    if isinstance(rules, (str, bytes)) or not isinstance(rules, tp.Sequence):
        raise TypeError(
            f"rules must be a sequence of (logical name, mesh axis) pairs, {example}; found {rules!r}."
        )
    for rule in rules:
        ok = (
            isinstance(rule, (tuple, list))
            and len(rule) == 2
            and isinstance(rule[0], str)
            and (
                rule[1] is None
                or isinstance(rule[1], str)
                or (isinstance(rule[1], (tuple, list)) and all(isinstance(a, str) for a in rule[1]))
            )
        )
        if not ok:
            raise TypeError(
                f"rules must be a sequence of (logical name, mesh axis) pairs, {example} (a mesh "
                f"axis may be None or a tuple of axes); found the entry {rule!r} in {rules!r}. "
                f"Pair the names up instead of listing them flat."
            )
    return tuple(tuple(rule) for rule in rules)


def _check_mesh(mesh: tp.Any, what: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{what}: mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((n,), ('data',)) or "
            f"jax.sharding.Mesh(devices, axis_names); found {type(mesh).__name__}."
        )


def _named(mesh: Mesh, spec: PartitionSpec, where: str) -> NamedSharding:
    for entry in spec:
        for axis in entry if isinstance(entry, tuple) else (entry,):
            if axis is not None and axis not in mesh.axis_names:
                raise ValueError(
                    f"get_named_sharding: {where} is sharded over {axis!r}, which is not an axis "
                    f"of the mesh {tuple(mesh.axis_names)!r}. Name mesh axes in the Variable's "
                    f"sharding, or map logical names to mesh axes with rules=(({axis!r}, ...),)."
                )
    return NamedSharding(mesh, spec)
