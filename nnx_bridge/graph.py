"""Walks a Module graph to the objects themselves: its Variables, submodules and containers.

`Module.partition` copies Variables into a State; the stateful transforms
(`nnx_bridge.jit`, `nnx_bridge.grad`, `nnx_bridge.Optimizer`) need the caller's own
Variable objects, at the same paths and in the same order, to write results back.
`walk` runs partition's own walk (without copying), so it finds every Variable
at the path `partition` gives it (a shared one at its smallest path, names with
"/" escaped, slots included) and the two can never disagree.
"""

from __future__ import annotations

import typing as tp

from nnx_bridge.module import Module, graph_objects
from nnx_bridge.variables import Variable


class Graph(tp.NamedTuple):
    """What `walk` finds.

    Attributes:
      variables: path -> the Variable object itself, sorted as a State is sorted.
      modules: every Module, in the order the walk meets them (the root first).
      containers: every list and dict met, with a snapshot of its items, so an
        in-place change (``layers.append(...)``) can be noticed later.
      module_paths: the path of each of `modules` (``""`` for the root), as partition
        records it.
    """

    variables: dict[str, Variable[tp.Any]]
    modules: list[Module]
    containers: list[tuple[tp.Any, tuple[tp.Any, ...]]]
    module_paths: list[str]


def walk(root: Module) -> Graph:
    """The Variables (at their first paths), Modules and containers of `root`'s graph.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.graph import walk
        >>> class Pair(nnx.Module):
        ...     def __init__(self):
        ...         self.layers = [nnx.Linear(2, 2, ctx=nnx.Context(0))]
        ...         self.alias = self.layers[0]
        >>> g = walk(Pair())
        >>> list(g.variables), len(g.modules)
        (['alias/bias', 'alias/kernel'], 2)
    """
    variables, modules, containers = graph_objects(root)  # partition's own walk: the same paths
    return Graph(
        dict(variables), [m for m, _ in modules], containers, [prefix.rstrip("/") for _, prefix in modules]
    )


def unchanged(containers: tp.Sequence[tuple[tp.Any, tuple[tp.Any, ...]]]) -> bool:
    """Whether every container still holds the items of its snapshot (by identity or ==).

    Example:
        >>> from nnx_bridge.graph import unchanged
        >>> layers = [1, 2]
        >>> snapshot = [(layers, tuple(layers))]
        >>> unchanged(snapshot), (layers.append(3), unchanged(snapshot))[1]
        (True, False)
    """
    for container, items in containers:
        if type(container) is list:
            if len(container) != len(items) or tuple(container) != items:
                return False
        elif len(container) != len(items) or tuple(container.items()) != items:
            return False
    return True
