"""Walks a Module graph to the objects themselves: its Variables, submodules and containers.

`Module.partition` copies Variables into a State; the stateful transforms
(`nnx_bridge.jit`, `nnx_bridge.grad`, `nnx_bridge.Optimizer`) need the caller's own
Variable objects, at the same paths and in the same order, to write results back.
`walk` finds them with partition's rules: attributes in sorted order, list and
tuple items by index, dict items by their key's string form, namedtuple items by
field, and every Module and Variable at the first path where it is met.
"""

from __future__ import annotations

import typing as tp

from nnx_bridge.module import Module
from nnx_bridge.state import path_sort_key
from nnx_bridge.variables import Variable


class Graph(tp.NamedTuple):
    """What `walk` finds.

    Attributes:
      variables: path -> the Variable object itself, sorted as a State is sorted.
      modules: every Module, in the order the walk meets them (the root first).
      containers: every list and dict met, with a snapshot of its items, so an
        in-place change (``layers.append(...)``) can be noticed later.
    """

    variables: dict[str, Variable[tp.Any]]
    modules: list[Module]
    containers: list[tuple[tp.Any, tuple[tp.Any, ...]]]


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
    variables: dict[str, Variable[tp.Any]] = {}
    seen: set[int] = set()
    modules: list[Module] = []
    containers: list[tuple[tp.Any, tuple[tp.Any, ...]]] = []

    def visit(value: tp.Any, path: str) -> None:
        if isinstance(value, Module):
            if id(value) in seen:
                return
            seen.add(id(value))
            modules.append(value)
            attributes = value.__dict__
            for name in sorted(attributes):
                visit(attributes[name], f"{path}{name}" if not path else f"{path}/{name}")
        elif isinstance(value, Variable):
            if id(value) not in seen:
                seen.add(id(value))
                variables[path] = value
        elif type(value) is list:
            containers.append((value, tuple(value)))
            for i, item in enumerate(value):
                visit(item, f"{path}/{i}")
        elif type(value) is dict:
            containers.append((value, tuple(value.items())))
            for key in sorted(value, key=str):
                visit(value[key], f"{path}/{key}")
        elif isinstance(value, tuple):
            names = getattr(type(value), "_fields", None)
            for i, item in enumerate(value):
                visit(item, f"{path}/{names[i] if names else i}")

    visit(root, "")
    ordered = dict(sorted(variables.items(), key=lambda item: path_sort_key(item[0])))
    return Graph(ordered, modules, containers)


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
